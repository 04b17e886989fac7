"""Detect end to end through the served stack (real processes, tiny CLIP): frames per second, and
the peak resident memory of every process for long sources.

Throughput: one Detect of a Ped2 clip (180 frames, one text) with the tiny LVLM, and with
lvlm_service's openai backend in front of TimedLLM (a benchmark device answering after a fixed
latency). With a fixed latency L the LVLM side cannot go faster than its concurrency bound:
calls x L / (calls in flight), the calls in flight being the orchestrator's segments in flight
times the calls per segment, at most lvlm_service's --max-concurrency. Efficiency is that bound
over the measured time: how close the rest of the pipeline lets the LVLM side run to it.

Memory: one Detect of a 1-minute and of a 10-minute 25 fps video (Ped2 frames looped, encoded
here) with TimedLLM at 0 ms; each process's peak resident memory (VmHWM, reset before each).

    python -m benchmarks.end_to_end [--latencies-ms 200 1000] [--minutes 1 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from anyanomaly.launcher import EmbeddedStack, StackOptions
from anyanomaly.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from benchmarks.timed_llm import TimedLLM
from services.common.clients import open_channel
from services.common.images import decode_image

FRAMES = Path(__file__).resolve().parents[2] / "shared/fixtures/real/ucsd_ped2/testing/frames/04"
SEGMENTS_IN_FLIGHT = 2  # the orchestrator's --max-segments-in-flight default
LVLM_CONCURRENCY = 16  # lvlm_service's --max-concurrency default
CALLS_PER_TEXT = 3  # key frame, position context, temporal context


@dataclass
class Throughput:
    lvlm: str
    frames: int
    seconds: float
    calls: int
    bound_seconds: float | None  # None: no fixed latency to bound by

    def line(self) -> str:
        measured = f"{self.lvlm:<22} {self.frames:>7} {self.seconds:>8.2f} {self.frames / self.seconds:>8.1f} " \
                   f"{self.calls:>6}"
        if self.bound_seconds is None:
            return f"{measured} {'-':>9} {'-':>11}"
        return f"{measured} {self.frames / self.bound_seconds:>9.1f} {self.bound_seconds / self.seconds:>10.0%}"


async def detect(address: str, source: orchestrator_pb2.VideoSource, texts: Sequence[str]) -> tuple[int, int, float]:
    """(frames, LVLM calls, seconds) of one Detect."""
    async with open_channel(address, default_timeout=None) as channel:
        stub: Any = orchestrator_pb2_grpc.OrchestratorStub(channel)
        started = time.perf_counter()
        summary = None
        async for update in stub.Detect(orchestrator_pb2.DetectRequest(source=source, texts=list(texts)),
                                        timeout=3600):
            if update.HasField("summary"):
                summary = update.summary
        seconds = time.perf_counter() - started
    assert summary is not None
    return summary.num_frames, summary.lvlm_usage.calls, seconds


async def with_stack(latency_ms: float | None, work: Any) -> Any:
    """Run `work(stack)` against a stack with TimedLLM at `latency_ms`, or the tiny LVLM (None)."""
    with TimedLLM(latency=(latency_ms or 0) / 1000) as engine:
        timed = latency_ms is not None
        stack = EmbeddedStack(StackOptions(models="tiny", lvlm_url=engine.url if timed else "",
                                           lvlm_model=engine.model if timed else ""))
        await stack.start()
        try:
            return await work(stack)
        finally:
            await stack.stop()


async def throughput(latency_ms: float | None, texts: Sequence[str]) -> Throughput:
    source = orchestrator_pb2.VideoSource(frame_folder=str(FRAMES))

    async def work(stack: EmbeddedStack) -> Throughput:
        await detect(stack.orchestrator_address, source, texts)  # warm-up: models, text cache
        frames, calls, seconds = await detect(stack.orchestrator_address, source, texts)
        bound = None
        if latency_ms is not None:
            in_flight = min(LVLM_CONCURRENCY, SEGMENTS_IN_FLIGHT * CALLS_PER_TEXT * len(texts))
            bound = calls * latency_ms / 1000 / in_flight
        name = "tiny LVLM" if latency_ms is None else f"TimedLLM {latency_ms:g} ms"
        return Throughput(name, frames, seconds, calls, bound)

    return await with_stack(latency_ms, work)


def looped_video(path: Path, minutes: float, fps: int = 25) -> Path:
    """Ped2 frames played in a loop for `minutes`, as an MPEG-4 file."""
    pictures = [decode_image(p.read_bytes(), p.name) for p in sorted(FRAMES.glob("*.jpg"))]
    height, width = pictures[0].shape[:2]
    with av.open(str(path), "w") as muxer:
        stream = muxer.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(round(minutes * 60 * fps)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pictures[index % len(pictures)], format="rgb24")):
                muxer.mux(packet)
        for packet in stream.encode():
            muxer.mux(packet)
    return path


def peak_mb(pid: int) -> float:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


async def peak_memory(minutes: Sequence[float]) -> list[tuple[float, int, float, dict[str, float]]]:
    """Per source length: (minutes, frames, seconds, {process: peak MB})."""
    with tempfile.TemporaryDirectory() as folder:
        videos = [(m, looped_video(Path(folder) / f"{m:g}min.mp4", m)) for m in minutes]

        async def work(stack: EmbeddedStack) -> list[tuple[float, int, float, dict[str, float]]]:
            pids = {name: service.process.pid for name, service in stack.services.items()}
            rows = []
            for length, video in videos:
                for pid in pids.values():
                    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to VmRSS
                frames, _, seconds = await detect(stack.orchestrator_address,
                                                  orchestrator_pb2.VideoSource(path=str(video)), ["bicycle"])
                rows.append((length, frames, seconds, {name: peak_mb(pid) for name, pid in pids.items()}))
            return rows

        return await with_stack(0.0, work)


async def print_throughput(latencies_ms: Sequence[float]) -> None:
    print(f"{'LVLM':<22} {'frames':>7} {'wall s':>8} {'frames/s':>8} {'calls':>6} {'bound fps':>9} "
          f"{'efficiency':>11}")
    for latency in (None, *latencies_ms):
        print((await throughput(latency, ["bicycle"])).line(), flush=True)


async def print_peak_memory(minutes: Sequence[float]) -> None:
    rows = await peak_memory(minutes)
    names = list(rows[0][3])
    print(f"peak resident memory, MB (one Detect, one text, TimedLLM 0 ms)\n{'source':<12} {'frames':>7} "
          f"{'wall s':>8} " + " ".join(f"{n:>16}" for n in names))
    for length, frames, seconds, peaks in rows:
        print(f"{f'{length:g} min':<12} {frames:>7} {seconds:>8.1f} " + " ".join(f"{peaks[n]:>16.0f}" for n in names))


async def run(latencies_ms: Sequence[float], minutes: Sequence[float]) -> None:
    await print_throughput(latencies_ms)
    print()
    await print_peak_memory(minutes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latencies-ms", type=float, nargs="+", default=[200.0, 1000.0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    args = parser.parse_args()
    asyncio.run(run(args.latencies_ms, args.minutes))


if __name__ == "__main__":
    main()
