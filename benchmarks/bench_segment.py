"""Per-segment cost of key-frame selection + context building over real gRPC.

Starts clip_service (random-weight ViT-B-32 by default: the paper's architecture,
no download) and context_service on 127.0.0.1, takes 24 frames of a real Avenue
clip, and times SelectKeyFrames + BuildContexts for k texts. Prints wall time per
segment and the number of CLIP image forwards per segment, next to the reference
implementation's count (METHOD.md section 12: 214 per text for ShT windows).

    python -m benchmarks.bench_segment [--video V] [--models random|tiny] [--repeats 3] [--texts 1 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import cv2

from anyanomaly.v1 import clip_pb2, clip_pb2_grpc, common_pb2, context_pb2, context_pb2_grpc
from services.clip_service.config import ClipSettings
from services.clip_service.server import build_service as build_clip
from services.common.clients import open_channel
from services.common.images import encode_jpeg
from services.common.logs import configure_logging
from services.common.presets import SHTECH_CLASSES
from services.common.server import start_server
from services.context_service.config import ContextSettings
from services.context_service.server import build_service as build_context

REFERENCE_FORWARDS_PER_TEXT = 24 + 38 + 152  # KSM + WA + GIG, ShT windows
DEFAULT_VIDEO = Path(__file__).resolve().parents[1].parent / "shared/fixtures/real/avenue/testing_videos/21.avi"


def first_frames(video: Path, count: int) -> list[bytes]:
    """The first `count` frames of `video`, JPEG-encoded as the orchestrator sends them."""
    capture = cv2.VideoCapture(str(video))
    frames: list[bytes] = []
    while len(frames) < count:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(encode_jpeg(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    capture.release()
    if len(frames) < count:
        raise SystemExit(f"{video}: need {count} frames, read {len(frames)} (see --video)")
    return frames


async def run(video: Path, models: str, repeats: int, text_counts: list[int]) -> None:
    clip_settings = ClipSettings(host="127.0.0.1", port=0, models=models, device="cpu", log_level="WARNING")
    clip_spec, engine = build_clip(clip_settings)
    clip = await start_server(clip_spec, clip_settings)
    await clip.until_ready()
    context_settings = ContextSettings(host="127.0.0.1", port=0, clip_address=clip.address, log_level="WARNING")
    context_spec, _ = build_context(context_settings)
    context = await start_server(context_spec, context_settings)
    await context.until_ready()

    frames = [common_pb2.Image(data=data) for data in first_frames(video, 24)]
    print(f"model: {engine.info.name} ({engine.info.weights}), device {engine.info.device}, "
          f"24 frames of {video.name}, shtech windows 48/80/120")
    print(f"{'k':>3} {'select s':>9} {'contexts s':>11} {'segment s':>10} {'forwards':>9} {'reference':>10}")
    async with open_channel(clip.address) as clip_channel, open_channel(context.address) as context_channel:
        clip_stub = clip_pb2_grpc.ClipServiceStub(clip_channel)
        context_stub = context_pb2_grpc.ContextServiceStub(context_channel)
        for k in text_counts:
            texts = list(SHTECH_CLASSES[:k])
            timings: list[tuple[float, float]] = []
            forwards = 0
            for attempt in range(repeats + 1):  # the first run warms the text-embedding cache
                before = engine.model.images_encoded
                started = time.perf_counter()
                selection = await clip_stub.SelectKeyFrames(clip_pb2.SelectKeyFramesRequest(frames=frames, texts=texts))
                selected = time.perf_counter()
                await context_stub.BuildContexts(context_pb2.BuildContextsRequest(
                    frames=frames,
                    queries=[context_pb2.ContextQuery(text=s.text, key_frames=list(s.key_frames),
                                                      representative=s.representative)
                             for s in selection.selections],
                ))
                done = time.perf_counter()
                if attempt:
                    timings.append((selected - started, done - selected))
                    forwards = engine.model.images_encoded - before
            select_s = statistics.median(t[0] for t in timings)
            context_s = statistics.median(t[1] for t in timings)
            print(f"{k:>3} {select_s:>9.2f} {context_s:>11.2f} {select_s + context_s:>10.2f} "
                  f"{forwards:>9} {REFERENCE_FORWARDS_PER_TEXT * k:>10}")
    await context.shutdown(1.0)
    await clip.shutdown(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="a video of at least 24 frames")
    parser.add_argument("--models", default="random", choices=("random", "tiny"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--texts", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    configure_logging("bench", "WARNING", "text")
    asyncio.run(run(args.video, args.models, args.repeats, args.texts))


if __name__ == "__main__":
    main()
