"""Loading CLIP with open_clip and running its two encoders.

Profiles: `default` loads real weights (the paper's ViT-B-32 QuickGELU with the
OpenAI weights, from the open_clip / Hugging Face cache or a local file); `tiny`
builds a tiny random-weight CLIP in code for tests and smoke runs; `random` is the
full architecture with random weights, for benchmarks. Nothing is downloaded
unless the default profile finds the weights missing and the site is online.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import VisionTransformer

from services.clip_service.config import ClipSettings, forbid_downloads, huggingface_cache
from services.common.errors import ModelLoadError

log = logging.getLogger("anyanomaly.clip.model")

TINY_MODEL_NAME = "anyanomaly-tiny-clip"
TINY_CONFIG_FILE = Path(__file__).with_name(f"{TINY_MODEL_NAME}.json")
TINY_SEED = 0

_register_lock = threading.Lock()


def register_tiny_config() -> None:
    """Make the tiny architecture known to open_clip under TINY_MODEL_NAME."""
    with _register_lock:
        if TINY_MODEL_NAME not in open_clip.list_models():
            open_clip.add_model_config(TINY_CONFIG_FILE)  # the file's stem is the model name


@dataclass(frozen=True)
class ClipInfo:
    name: str
    weights: str
    device: str
    dtype: str
    random_weights: bool
    embed_dim: int
    image_size: int


class ClipModel:
    """A loaded CLIP model. Methods are blocking; call them from one worker thread."""

    def __init__(self, model: torch.nn.Module, tokenizer: object, info: ClipInfo) -> None:
        self._model: Any = model.eval()  # open_clip's CLIP (encode_image / encode_text)
        self._tokenizer = tokenizer
        self.info = info
        self._device = torch.device(info.device)
        self._dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(info.dtype, torch.float32)
        self.mean = tuple(float(v) for v in OPENAI_DATASET_MEAN)
        self.std = tuple(float(v) for v in OPENAI_DATASET_STD)
        self.images_encoded = 0
        self.texts_encoded = 0

    @property
    def image_size(self) -> int:
        return self.info.image_size

    def encode_images(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed float images -> (B, D) L2-normalised float32."""
        with torch.inference_mode():
            features = self._model.encode_image(batch.to(self._device, self._dtype)).float()
            features = features / features.norm(dim=-1, keepdim=True)
        self.images_encoded += int(batch.shape[0])
        return np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)

    @property
    def patch_grid(self) -> int | None:
        """Patches per side of a ViT's input (7 for ViT-B-32 at 224); None for other encoders."""
        visual = self._model.visual
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            return None
        last = visual.transformer.resblocks[-1]
        if not isinstance(last.attn, torch.nn.MultiheadAttention) or not isinstance(last.ls_1, torch.nn.Identity) \
                or visual.final_ln_after_pool:
            return None  # the value path below is written for OpenAI-style ViTs
        grid = visual.grid_size
        return int(grid[0]) if isinstance(grid, tuple) else int(grid)

    def encode_dense(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed images -> (B, g, g, D) float32 patch features in the joint
        embedding space, NOT normalised. The last block contributes only its value path (no
        attention mixing, residual or MLP), as MaskCLIP / ClearCLIP do: the full block's patch
        outputs are about as image-global as the class token and do not localise."""
        visual = self._model.visual
        grid = self.patch_grid
        assert grid is not None, "encode_dense needs a ViT"
        with torch.inference_mode():
            x = visual._embeds(batch.to(self._device, self._dtype))
            transformer = visual.transformer
            if not transformer.batch_first:
                x = x.transpose(0, 1)
            for block in transformer.resblocks[:-1]:
                x = block(x)
            if not transformer.batch_first:
                x = x.transpose(0, 1)
            last = transformer.resblocks[-1]
            width = x.shape[-1]
            values = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width :],
                              last.attn.in_proj_bias[2 * width :])
            tokens = visual.ln_post(last.attn.out_proj(values))[:, 1:]  # drop the class token
            features = (tokens @ visual.proj).float()
        self.images_encoded += int(batch.shape[0])
        return np.ascontiguousarray(features.reshape(batch.shape[0], grid, grid, -1).cpu().numpy())

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts tokenised as-is -> (B, D) float32 features, NOT normalised."""
        tokens = self._tokenizer(texts)  # type: ignore[operator]
        with torch.inference_mode():
            features = self._model.encode_text(tokens.to(self._device)).float()
        self.texts_encoded += len(texts)
        return np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _pick_device(choice: str, precision: str = "auto") -> tuple[str, str]:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("clip_service: --device cuda was requested but no CUDA device is visible; "
                             "set ANYANOMALY_CLIP_DEVICE=cpu or auto")
    device = "cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu"
    if precision == "fp16" and device == "cpu":
        raise ModelLoadError("clip_service: --precision fp16 needs CUDA (the CPU has no fast fp16 path); "
                             "use bf16 or fp32 on the CPU")
    if precision == "auto":
        return device, "float16" if device == "cuda" else "float32"
    return device, DTYPES[precision]


@contextlib.contextmanager
def _library_errors_silenced() -> Iterator[None]:
    """Hide what open_clip and huggingface_hub log while they try to fetch weights."""
    loggers = [logging.getLogger(), logging.getLogger("huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _missing_weights_message(settings: ClipSettings, error: Exception) -> str:
    cache = huggingface_cache(settings)
    fetch = "downloads are off (offline)" if settings.offline else f"could not be downloaded ({type(error).__name__})"
    return (
        f"clip_service: cannot load CLIP weights {settings.model_name}/{settings.pretrained}: they are not in the "
        f"cache ({cache}) and {fetch}. "
        "Fix: set ANYANOMALY_CLIP_WEIGHTS (--weights) to a local weights file such as OpenAI's ViT-B-32.pt, "
        "or ANYANOMALY_CLIP_CACHE_DIR to a cache that holds them; for a smoke run without weights use --models tiny."
    )


def load_clip(settings: ClipSettings) -> ClipModel:
    """Build the configured model; ModelLoadError with one actionable message on failure."""
    device, dtype = _pick_device(settings.device, settings.precision)
    precision = {name: short for short, name in DTYPES.items()}[dtype]
    cache_dir = settings.cache_dir or None
    if settings.models == "tiny":
        register_tiny_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = open_clip.create_model(TINY_MODEL_NAME, pretrained=None, precision=precision, device=device)
        name, weights, random_weights = TINY_MODEL_NAME, f"random (seed {TINY_SEED})", True
    elif settings.models == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = open_clip.create_model(settings.model_name, pretrained=None, precision=precision, device=device)
        name, weights, random_weights = settings.model_name, f"random (seed {TINY_SEED})", True
    else:
        register_tiny_config()  # allows a local tiny checkpoint via --model-name (used in tests)
        source = settings.weights or settings.pretrained
        if settings.weights and not Path(settings.weights).is_file():
            raise ModelLoadError(
                f"clip_service: the weights file {settings.weights!r} does not exist; "
                "fix ANYANOMALY_CLIP_WEIGHTS (--weights) or unset it to use the cache"
            )
        if settings.offline:
            forbid_downloads()
        try:
            with _library_errors_silenced():  # our own message below says what to fix
                model = open_clip.create_model(
                    settings.model_name, pretrained=source, precision=precision, device=device,
                    cache_dir=cache_dir, weights_only=not source.endswith(".pt"),
                )
        except (RuntimeError, OSError, ValueError) as exc:
            if settings.weights:
                raise ModelLoadError(
                    f"clip_service: the weights file {settings.weights!r} does not fit {settings.model_name} "
                    f"({exc}); fix ANYANOMALY_CLIP_WEIGHTS or ANYANOMALY_CLIP_MODEL_NAME"
                ) from exc
            raise ModelLoadError(_missing_weights_message(settings, exc)) from exc
        name, weights, random_weights = settings.model_name, source, False
    tokenizer = open_clip.get_tokenizer(name)
    vision: Any = model.visual
    image_size = vision.image_size[0] if isinstance(vision.image_size, tuple) else int(vision.image_size)
    embed_dim = int(model.text_projection.shape[1])
    info = ClipInfo(name, weights, device, dtype, random_weights, embed_dim, int(image_size))
    log.info("model loaded", extra={"model": name, "weights": weights, "device": device, "dtype": dtype})
    return ClipModel(model, tokenizer, info)
