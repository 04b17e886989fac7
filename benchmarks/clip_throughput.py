"""clip_service throughput in images per second: the model alone at several batch sizes, then the
real service over gRPC (JPEG decoding, preprocessing, micro-batching and the forward) with several
callers at once, for whole frames and for window crops.

The model is the paper's ViT-B-32 with random weights (nothing downloaded; the speed is the
architecture's). On a GPU it runs in fp16, as clip_service runs there; on the CPU in fp32.

    python -m benchmarks.clip_throughput [--device auto|cpu|cuda] [--seconds 5] [--video FILE] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import torch

from anyanomaly.v1 import clip_pb2, clip_pb2_grpc, common_pb2
from benchmarks.bench_segment import DEFAULT_VIDEO, first_frames
from services.clip_service.config import ClipSettings
from services.clip_service.model import ClipModel
from services.clip_service.server import build_service
from services.common.clients import open_channel
from services.common.logs import configure_logging
from services.common.presets import get_preset
from services.common.server import start_server

WINDOWS = get_preset("shtech").window_sizes


def _synchronize(model: ClipModel) -> None:
    if model.info.device == "cuda":
        torch.cuda.synchronize()


def model_rate(model: ClipModel, batch: int, seconds: float) -> float:
    """Images per second of encode_images on preprocessed tensors already in memory."""
    images = torch.rand(batch, 3, model.image_size, model.image_size)
    model.encode_images(images)  # warm-up (kernels chosen, memory taken)
    _synchronize(model)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.encode_images(images)  # returns numpy: the result is on the host, so the GPU is done
        done += batch
    return done / (time.perf_counter() - started)


async def service_rate(stub: Any, request: Any, callers: int, seconds: float) -> float:
    """Images (or windows) per second through EmbedImages with `callers` requests always in flight."""
    warm_up = await stub.EmbedImages(request)
    per_request = len(request.images) * max(1, sum(layout.rows * layout.cols for layout in warm_up.layouts))
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await stub.EmbedImages(request)
            done += per_request

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - started)


async def measure(device: str, seconds: float, quick: bool, video: Path = DEFAULT_VIDEO
                  ) -> list[tuple[str, float]]:
    settings = ClipSettings(host="127.0.0.1", port=0, models="tiny" if quick else "random", device=device,
                            log_level="WARNING")
    spec, engine = build_service(settings)
    server = await start_server(spec, settings)
    rows: list[tuple[str, float]] = []
    try:
        await server.until_ready()
        model = engine.model
        print(f"model: {model.info.name} ({model.info.weights}) on {model.info.device} in {model.info.dtype}; "
              f"{seconds:g} s per figure")
        print(f"{'what':<70} {'images/s':>10}")
        for batch in (1, 16, 64) if quick else (1, 16, 64, 256):
            rows.append((f"model alone, batch {batch}", model_rate(model, batch, seconds)))
            print(f"{rows[-1][0]:<70} {rows[-1][1]:>10.1f}", flush=True)
        jpegs = first_frames(video, 16)
        frames = clip_pb2.EmbedImagesRequest(images=[common_pb2.Image(data=j) for j in jpegs])
        windows = clip_pb2.EmbedImagesRequest(
            images=[common_pb2.Image(data=j) for j in jpegs[:4]], preprocess=clip_pb2.PREPROCESS_SQUASH,
            windows=[clip_pb2.WindowGrid(size=size) for size in WINDOWS])
        async with open_channel(server.address) as channel:
            stub = clip_pb2_grpc.ClipServiceStub(channel)
            for callers in (1, 8):
                for name, request in (("16 JPEG frames (centre crop)", frames),
                                      ("the windows of 4 JPEG frames (squash)", windows)):
                    rate = await service_rate(stub, request, callers, seconds)
                    rows.append((f"gRPC EmbedImages, {callers} caller(s), {name}", rate))
                    print(f"{rows[-1][0]:<70} {rate:>10.1f}", flush=True)
    finally:
        await server.shutdown(1.0)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="frames to send (16 are read)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each figure is measured")
    parser.add_argument("--quick", action="store_true", help="the tiny CLIP and fewer rows: a check that it runs")
    args = parser.parse_args()
    configure_logging("bench", "WARNING", "text")
    asyncio.run(measure(args.device, args.seconds, args.quick, args.video))


if __name__ == "__main__":
    main()
