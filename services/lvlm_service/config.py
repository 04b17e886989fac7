"""lvlm_service settings (flags and ANYANOMALY_LVLM_* environment variables)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.config import ServerSettings, load_settings, secret, setting

ENV_PREFIX = "ANYANOMALY_LVLM"
DEFAULT_PORT = 50053
# The smallest instruction-tuned model of the Qwen2-VL family (the architecture the tests run
# through this backend); usable on a CPU box. GPU sites run Qwen2.5-VL-7B behind vLLM (--backend openai).
DEFAULT_LOCAL_MODEL = "Qwen/Qwen2-VL-2B-Instruct"


@dataclass
class LvlmSettings(ServerSettings):
    port: int = setting(DEFAULT_PORT, "port to bind; 0 picks a free port (the bound port is logged)")
    backend: str = setting(
        "transformers",
        "'openai': an OpenAI-compatible chat-completions server such as `vllm serve`; "
        "'transformers': a local Hugging Face vision-language model; "
        "'vllm': vLLM's engine in this process (GPU; pip install .[vllm])",
        choices=("openai", "transformers", "vllm"),
    )
    models: str = setting(
        "default",
        "transformers backend: 'default' loads --model; 'tiny' builds a tiny random VLM in code "
        "(tests, smoke runs; meaningless answers)",
        choices=("default", "tiny"),
    )
    model: str = setting(DEFAULT_LOCAL_MODEL, "transformers backend: Hugging Face model id or local folder")
    vllm_model: str = setting("Qwen/Qwen2.5-VL-7B-Instruct", "vllm backend: the model (a preset, see "
                              "`python -m services.lvlm_service.presets`, or any model vLLM serves)")
    gpu_memory_utilization: float = setting(0.9, "vllm backend: share of the GPU memory vLLM may take")
    cache_dir: str = setting("", "transformers backend: Hugging Face cache folder (default: the library's own)")
    offline: bool = setting(False, "transformers backend: never download; fail fast when the model is not cached")
    device: str = setting("auto", "transformers backend: auto (CUDA when present), cpu, cuda",
                          choices=("auto", "cpu", "cuda"))
    batch_size: int = setting(8, "transformers backend: prompts per generate() call")
    openai_url: str = setting("", "openai backend: base URL, e.g. http://gpu-node:8000/v1")
    openai_model: str = setting("", "openai backend: the model name the server serves")
    openai_ca_file: str = setting("", "openai backend: check an https server's certificate against this PEM CA "
                                  "(default: certifi's CA bundle)")
    openai_api_key: str = secret("the bearer token the openai backend's server wants, if any")
    request_timeout_seconds: float = setting(120.0, "openai backend: limit for one chat-completions request")
    max_concurrency: int = setting(16, "openai backend: requests in flight to the server at once")
    max_queued: int = setting(512, "openai backend: requests that may wait for a slot; beyond that callers get "
                              "RESOURCE_EXHAUSTED")
    http_retries: int = setting(3, "openai backend: retries of a request after HTTP 429 / 5xx or a timeout")
    retry_backoff_seconds: float = setting(0.5, "openai backend: first retry delay, doubled each time (Retry-After "
                                           "wins)")
    structured_output_field: str = setting(
        "vllm", "openai backend: how JSON answers are requested: 'vllm' (structured_outputs, vLLM >= 0.12), "
        "'openai' (response_format json_schema) or 'none'", choices=("vllm", "openai", "none"))
    top_logprobs: int = setting(20, "fast mode: candidates per answer token (vLLM allows up to --max-logprobs, 20)")
    max_tokens: int = setting(0, "most tokens an answer may have; 0: the model preset's (128 as the reference; 8 "
                              "for the tiny model)")
    system_prompt: str = setting("", "optional system message sent before each prompt")
    max_image_pixels: int = setting(3840 * 2160, "largest image accepted, in pixels")
    downscale_to_pixels: int = setting(0, "every image sent to the model (key frame, position and temporal context) is "
                                       "first downscaled, aspect kept, to at most this many pixels; 0: the model "
                                       "preset's (Qwen2.5-VL 1,003,520; Qwen2-VL-2B on a CPU 200,704; tiny 50,176)")
    max_request_pixels: int = setting(96 * 1920 * 1080, "most pixels the images of one request may decode to")
    max_pairs_per_request: int = setting(1024, "most (image, text) pairs in one Score request")


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> LvlmSettings:
    return load_settings(
        LvlmSettings, argv, ENV_PREFIX,
        "lvlm_service: context-aware VQA scores from a vision-language model over gRPC.",
        env, prog="python -m services.lvlm_service",
    )
