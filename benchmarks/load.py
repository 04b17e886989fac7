"""Load: N detections at once against the served stack, for several N.

Starts `anyanomaly serve`'s stack (real processes; tiny CLIP, and the tiny LVLM or, with
--lvlm-latency-ms, lvlm_service's openai backend in front of TimedLLM, a benchmark device) with
the orchestrator's admission limit --max-detections. For each concurrency level it starts N
Detect calls on the same clip at the same moment and reports, per level:

- completed, refused (RESOURCE_EXHAUSTED, and how fast the refusal came), failed otherwise;
- throughput: frames of completed detections per second of wall time;
- latency of completed detections (p50, p95) and time to their first segment (p50);
- resident memory of the services: the sum of each one's own peak during the level (an upper
  bound on the peak of them all at one moment), and the sum after it.

    python -m benchmarks.load [--levels 1 4 8 16 32] [--max-detections 16] [--frames 96]
                              [--lvlm-latency-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from anyanomaly.launcher import EmbeddedStack, StackOptions
from anyanomaly.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from benchmarks.timed_llm import TimedLLM
from services.common.clients import open_channel

FRAMES = Path(__file__).resolve().parents[2] / "shared/fixtures/real/ucsd_ped2/testing/frames/04"


@dataclass
class Outcome:
    code: grpc.StatusCode
    seconds: float
    first_segment: float = 0.0


@dataclass
class Level:
    concurrency: int
    outcomes: list[Outcome] = field(default_factory=list)
    wall: float = 0.0
    peak_mb: float = 0.0
    after_mb: float = 0.0


def memory_mb(pids: list[int], field_name: str) -> float:
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith(field_name))
    return total / 1024


def reset_peaks(pids: list[int]) -> None:
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to VmRSS (needs the same user or root)


async def one(stub: Any, request: orchestrator_pb2.DetectRequest) -> Outcome:
    started = time.monotonic()
    first = 0.0
    try:
        async for update in stub.Detect(request, timeout=1800):
            if update.HasField("segment") and not first:
                first = time.monotonic() - started
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), time.monotonic() - started)
    return Outcome(grpc.StatusCode.OK, time.monotonic() - started, first)


async def run_level(address: str, request: orchestrator_pb2.DetectRequest, concurrency: int, pids: list[int]
                    ) -> Level:
    level = Level(concurrency)
    reset_peaks(pids)
    async with open_channel(address, default_timeout=None) as channel:
        stub: Any = orchestrator_pb2_grpc.OrchestratorStub(channel)
        started = time.monotonic()
        level.outcomes = list(await asyncio.gather(*(one(stub, request) for _ in range(concurrency))))
        level.wall = time.monotonic() - started
    level.peak_mb = memory_mb(pids, "VmHWM:")
    await asyncio.sleep(2)  # let the services drop what the level held
    level.after_mb = memory_mb(pids, "VmRSS:")
    return level


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def report(level: Level, frames: int) -> str:
    done = [o for o in level.outcomes if o.code == grpc.StatusCode.OK]
    refused = [o for o in level.outcomes if o.code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    failed = len(level.outcomes) - len(done) - len(refused)
    firsts = [o.first_segment for o in done if o.first_segment]
    latency = (f"{statistics.median(o.seconds for o in done):8.1f} {percentile([o.seconds for o in done], 0.95):8.1f}"
               f" {statistics.median(firsts) if firsts else 0:8.1f}") if done else f"{'-':>8} {'-':>8} {'-':>8}"
    refusal = f"{max(o.seconds for o in refused) * 1000:6.0f} ms" if refused else f"{'-':>9}"
    return (f"{level.concurrency:5d} {len(done):6d} {len(refused):8d} {refusal} {failed:6d} "
            f"{len(done) * frames / level.wall:9.1f} {latency} {level.peak_mb:8.0f} {level.after_mb:8.0f}")


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder, TimedLLM(latency=(args.lvlm_latency_ms or 0) / 1000) as engine:
        clip = Path(folder) / "clip"
        clip.mkdir()
        for path in sorted(args.source.iterdir())[: args.frames]:
            shutil.copy(path, clip / path.name)
        timed = args.lvlm_latency_ms is not None
        stack = EmbeddedStack(StackOptions(
            models="tiny", lvlm_url=engine.url if timed else "", lvlm_model=engine.model if timed else "",
            orchestrator_args=("--max-detections", str(args.max_detections))))
        await stack.start()
        try:
            pids = [service.process.pid for service in stack.services.values()]
            request = orchestrator_pb2.DetectRequest(source=orchestrator_pb2.VideoSource(frame_folder=str(clip)),
                                                     texts=["bicycle"])
            print(f"LVLM: {'TimedLLM ' + str(args.lvlm_latency_ms) + ' ms' if timed else 'tiny model'}; "
                  f"--max-detections {args.max_detections}; {args.frames} frames, one text; "
                  f"services at rest {memory_mb(pids, 'VmRSS:'):.0f} MB")
            print(f"{'N':>5} {'done':>6} {'refused':>8} {'(within)':>9} {'failed':>6} {'frames/s':>9} "
                  f"{'p50 s':>8} {'p95 s':>8} {'first s':>8} {'peak MB':>8} {'after MB':>8}")
            await run_level(stack.orchestrator_address, request, 1, pids)  # warm-up, not shown
            peaks: dict[str, float] = {}
            for concurrency in args.levels:
                print(report(await run_level(stack.orchestrator_address, request, concurrency, pids), args.frames),
                      flush=True)
                for name, service in stack.services.items():
                    peaks[name] = max(peaks.get(name, 0.0), memory_mb([service.process.pid], "VmHWM:"))
            print("per service, MB: " + ", ".join(
                f"{name} peak {peaks[name]:.0f}, after {memory_mb([service.process.pid], 'VmRSS:'):.0f}"
                for name, service in stack.services.items()))
        finally:
            await stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--max-detections", type=int, default=16)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--source", type=Path, default=FRAMES, help="a frame folder")
    parser.add_argument("--lvlm-latency-ms", type=float, default=None,
                        help="TimedLLM with this latency per call instead of the tiny LVLM")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
