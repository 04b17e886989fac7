"""clip_service settings (flags and ANYANOMALY_CLIP_* environment variables)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.config import ServerSettings, environment, load_settings, set_environment, setting

ENV_PREFIX = "ANYANOMALY_CLIP"
DEFAULT_PORT = 50051


@dataclass
class ClipSettings(ServerSettings):
    port: int = setting(DEFAULT_PORT, "port to bind; 0 picks a free port (the bound port is logged)")
    models: str = setting(
        "default",
        "model profile: 'default' loads real weights (model-name/pretrained or weights); "
        "'tiny' builds a tiny random-weight CLIP in code (tests, smoke runs; meaningless scores); "
        "'random' is the full architecture with random weights (benchmarks)",
        choices=("default", "tiny", "random"),
    )
    model_name: str = setting("ViT-B-32-quickgelu", "open_clip architecture")
    pretrained: str = setting("openai", "open_clip pretrained tag, looked up in the open_clip / Hugging Face cache")
    weights: str = setting("", "local weights file (open_clip checkpoint or OpenAI .pt); overrides --pretrained")
    cache_dir: str = setting("", "open_clip / Hugging Face cache folder (default: the library's own)")
    offline: bool = setting(False, "never try to download weights (air-gapped sites); fail fast if not cached")
    device: str = setting("auto", "where to run: auto (CUDA with fp16 when present), cpu, cuda", choices=(
        "auto", "cpu", "cuda"))
    precision: str = setting(
        "auto", "weights and activations: auto (fp16 on CUDA, fp32 on the CPU: the parity-checked choices), fp32, "
        "fp16 (CUDA only) or bf16 (CPUs with AVX-512 BF16 or AMX, and GPUs; faster, not parity-checked)",
        choices=("auto", "fp32", "fp16", "bf16"))
    max_batch_size: int = setting(64, "most images in one CLIP forward pass")
    preprocess_threads: int = setting(0, "threads that decode and preprocess the images of a request in parallel "
                                      "(0: one per CPU core this process may use, at most 8)", minimum=0)
    max_wait_ms: float = setting(5.0, "how long a batch waits for more concurrent requests")
    max_queued_images: int = setting(8192, "images waiting for the model before requests get RESOURCE_EXHAUSTED")
    text_cache_size: int = setting(4096, "text embeddings kept in the LRU cache")
    max_image_pixels: int = setting(3840 * 2160, "largest image accepted, in pixels")
    max_request_pixels: int = setting(24 * 3840 * 2160, "most pixels all images of one request may decode to "
                                      "(checked from their headers before decoding)")
    max_images_per_request: int = setting(1024, "most images in one request")
    max_windows_per_request: int = setting(16384, "most window crops in one EmbedImages request")


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ClipSettings:
    return load_settings(
        ClipSettings, argv, ENV_PREFIX,
        "clip_service: CLIP text/image embeddings and key-frame selection over gRPC.", env,
        prog="python -m services.clip_service",
    )


def huggingface_cache(settings: ClipSettings) -> str:
    """Where the weights are looked for, for error messages."""
    return (settings.cache_dir or environment("HF_HUB_CACHE") or environment("HF_HOME")
            or "~/.cache/huggingface")


def forbid_downloads() -> None:
    """No Hugging Face Hub requests at all: a missing file fails at once instead of after retries."""
    set_environment("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True  # read at import time; set it for this process too
