"""The CLIP image encoder's speed levers on this machine, each against the plain fp32 forward:
milliseconds per image at one batch size and how far the embeddings move (the smallest cosine
between a lever's embedding and fp32's over the batch). Whether a lever keeps the parity
contexts is a separate question: `python -m benchmarks.clip_side --precision bf16` answers it.

Levers: torch.no_grad against inference_mode (what clip_service uses), channels-last memory
format, bf16 weights (clip_service --precision bf16), fp16 weights (CUDA only), and ONNX
Runtime on an exported encoder when onnxruntime is installed.

    python -m benchmarks.clip_levers [--batch 64] [--repeats 3] [--device cpu|cuda] [--models random|tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.clip_service.config import ClipSettings
from services.clip_service.model import load_clip
from services.common.logs import configure_logging

Encoder = Callable[[torch.Tensor], np.ndarray]


def timed(encode: Encoder, images: torch.Tensor, repeats: int) -> tuple[float, np.ndarray]:
    """(median ms per image, embeddings) after one warm-up call."""
    encode(images)
    times, features = [], np.empty(0)
    for _ in range(repeats):
        started = time.perf_counter()
        features = encode(images)
        times.append((time.perf_counter() - started) * 1000 / images.shape[0])
    return statistics.median(times), features


def torch_encoder(model: Any, device: str, dtype: torch.dtype, grad_off: Callable[[], Any],
                  channels_last: bool = False) -> Encoder:
    def encode(images: torch.Tensor) -> np.ndarray:
        batch = images.to(device, dtype)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with grad_off():
            features = model.encode_image(batch).float()
        return (features / features.norm(dim=-1, keepdim=True)).cpu().numpy()
    return encode


def onnx_encoder(model: Any, images: torch.Tensor) -> Encoder:
    """The fp32 image encoder exported to ONNX, run by ONNX Runtime on the CPU."""
    onnxruntime: Any = importlib.import_module("onnxruntime")  # optional: not a project dependency
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        path = Path(folder) / "visual.onnx"
        torch.onnx.export(model.visual, (images[:1],), str(path), input_names=["image"], output_names=["features"],
                          dynamic_axes={"image": {0: "batch"}}, dynamo=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def encode(batch: torch.Tensor) -> np.ndarray:
        features = session.run(None, {"image": batch.numpy()})[0]
        return np.asarray(features / np.linalg.norm(features, axis=-1, keepdims=True))
    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default="random", choices=("random", "tiny"))
    args = parser.parse_args()
    configure_logging("bench", "WARNING", "text")
    images = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    fp32 = load_clip(ClipSettings(models=args.models, device=args.device, precision="fp32"))
    model: Any = fp32._model
    levers: dict[str, Callable[[], Encoder]] = {
        "fp32, no_grad": lambda: torch_encoder(model, args.device, torch.float32, torch.no_grad),
        "fp32, inference_mode (clip_service)": lambda: torch_encoder(model, args.device, torch.float32,
                                                                     torch.inference_mode),
        "fp32, channels-last input": lambda: torch_encoder(model, args.device, torch.float32, torch.inference_mode,
                                                           channels_last=True),
    }
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if precision == "fp16" and args.device == "cpu":
            continue
        low = load_clip(ClipSettings(models=args.models, device=args.device, precision=precision))
        levers[f"{precision} weights (--precision {precision})"] = functools.partial(
            torch_encoder, low._model, args.device, dtype, torch.inference_mode)
    if args.device == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        levers["ONNX Runtime, fp32 export"] = lambda: onnx_encoder(model, images)
    print(f"{fp32.info.name} ({fp32.info.weights}) on {args.device}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'lever':<40} {'ms/image':>9} {'speed-up':>9} {'min cosine vs fp32':>19}")
    baseline: tuple[float, np.ndarray] | None = None
    for name, build in levers.items():
        with contextlib.suppress(RuntimeError, ImportError) if name.startswith("ONNX") else contextlib.nullcontext():
            milliseconds, features = timed(build(), images, args.repeats)
            baseline = baseline or (milliseconds, features)
            cosine = float((features * baseline[1]).sum(axis=-1).min())
            print(f"{name:<40} {milliseconds:>9.1f} {baseline[0] / milliseconds:>8.2f}x {cosine:>19.6f}", flush=True)
    if importlib.util.find_spec("onnxruntime") is None and args.device == "cpu":
        print("ONNX Runtime: not installed (pip install onnxruntime onnx to measure it)")


if __name__ == "__main__":
    main()
