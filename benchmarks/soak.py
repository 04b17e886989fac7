"""Soak: live monitors on looped sources for a long time; is every process's memory flat?

Starts `anyanomaly serve`'s stack (tiny models; lvlm_service's openai backend in front of
TimedLLM, a benchmark device whose scores alternate high and low so that events open and close
and evidence is written and pruned), with a data dir and a small evidence budget. It creates two
monitors, one on a video file (decoded by FFmpeg) and one on a frame folder, both played in a
loop in real time as cameras, and keeps a WatchEvents subscriber reading. Every --every seconds
it samples each process's resident memory (VmRSS) and open file descriptors. At the end it
prints, per process, the median of the samples of the first --window minutes after the warm-up
and of the last --window minutes (single samples swing with the allocator), the change, and the
peak; the soak passes when every change is within --tolerance (10 %).

    python -m benchmarks.soak [--minutes 60] [--warmup-minutes 5] [--window 5] [--every 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyanomaly.launcher import EmbeddedStack, StackOptions
from anyanomaly.v1 import events_pb2, events_pb2_grpc, monitors_pb2, monitors_pb2_grpc, orchestrator_pb2
from benchmarks.timed_llm import TimedLLM
from services.common.clients import open_channel

FIXTURES = Path(__file__).resolve().parents[2] / "shared/fixtures/real"
VIDEO = FIXTURES / "avenue/testing_videos/08.avi"
FRAMES = FIXTURES / "ucsd_ped2/testing/frames/04"
# High for 40 calls, low for 40: at 6 calls per segment (2 texts), events open and close every ~7
# segments.
SCORES = (0.9,) * 40 + (0.1,) * 40


@dataclass
class Sample:
    rss_mb: float
    fds: int


def sample(pid: int) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return Sample(rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")))


async def watch_events(events: Any, counts: dict[str, int]) -> None:
    async for event in events.WatchEvents(events_pb2.WatchEventsRequest(after_cursor=-1)):
        counts[events_pb2.EventPhase.Name(event.phase)] = counts.get(events_pb2.EventPhase.Name(event.phase), 0) + 1


def median(samples: list[dict[str, Sample]]) -> dict[str, Sample]:
    return {name: Sample(statistics.median(s[name].rss_mb for s in samples),
                         round(statistics.median(s[name].fds for s in samples))) for name in samples[0]}


async def soak(stack: EmbeddedStack, args: argparse.Namespace) -> tuple[
        dict[str, Sample], dict[str, Sample], dict[str, float], dict[str, int], list[Any]]:
    pids = {name: service.process.pid for name, service in stack.services.items()} | {"benchmark": os.getpid()}
    counts: dict[str, int] = {}
    async with open_channel(stack.orchestrator_address, default_timeout=None) as channel:
        monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)
        events: Any = events_pb2_grpc.EventsStub(channel)
        watcher = asyncio.create_task(watch_events(events, counts))
        rule = [events_pb2.EventRule(threshold=0.5)]
        created = [await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=monitors_pb2.MonitorSpec(
            name=name, source=source, texts=["bicycle", "running"], rules=rule, evidence_budget_bytes=20 << 20)))
            for name, source in (("video", orchestrator_pb2.VideoSource(path=str(VIDEO))),
                                 ("frames", orchestrator_pb2.VideoSource(frame_folder=str(FRAMES))))]
        start = time.monotonic()
        samples: list[tuple[float, dict[str, Sample]]] = []
        while time.monotonic() - start < args.minutes * 60:
            await asyncio.sleep(args.every)
            now = {name: sample(pid) for name, pid in pids.items()}
            elapsed = time.monotonic() - start
            samples.append((elapsed, now))
            print(f"{elapsed / 60:6.1f} min  " + "  ".join(f"{n} {s.rss_mb:.0f} MB/{s.fds} fd" for n, s in now.items()),
                  flush=True)
        final = [await monitors.GetMonitor(monitors_pb2.GetMonitorRequest(monitor_id=m.monitor_id)) for m in created]
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    warm, window, end = args.warmup_minutes * 60, args.window * 60, samples[-1][0]
    first = [s for t, s in samples if warm <= t <= warm + window] or [samples[0][1]]
    last = [s for t, s in samples if t >= end - window]
    peak = {name: max(s[name].rss_mb for _, s in samples) for name in pids}
    return median(first), median(last), peak, counts, final


async def run(args: argparse.Namespace) -> int:
    with TimedLLM(latency=args.latency_ms / 1000, scores=SCORES) as engine, \
            tempfile.TemporaryDirectory() as data_dir:
        stack = EmbeddedStack(StackOptions(models="tiny", lvlm_url=engine.url, lvlm_model=engine.model,
                                           data_dir=Path(data_dir)))
        await stack.start()
        try:
            baseline, end, peak, counts, final = await soak(stack, args)
        finally:
            await stack.stop()
    print(f"\nsoak: {args.minutes:g} min; medians of minutes {args.warmup_minutes:g}-"
          f"{args.warmup_minutes + args.window:g} vs the last {args.window:g}")
    print(f"{'process':<16}{'RSS MB':>10}{'end':>8}{'change':>9}{'peak':>8}{'fds':>6}{'end':>6}{'change':>9}")
    flat = True
    for name in end:
        rss_change = end[name].rss_mb / baseline[name].rss_mb - 1
        fd_change = end[name].fds / baseline[name].fds - 1
        flat &= abs(rss_change) <= args.tolerance and abs(fd_change) <= args.tolerance
        print(f"{name:<16}{baseline[name].rss_mb:10.0f}{end[name].rss_mb:8.0f}{rss_change:+9.1%}{peak[name]:8.0f}"
              f"{baseline[name].fds:6d}{end[name].fds:6d}{fd_change:+9.1%}")
    for monitor in final:
        print(f"monitor {monitor.spec.name}: {monitor.segments_scored} segments scored, {monitor.frames_read} frames "
              f"read, {monitor.segments_dropped} segments dropped, state "
              f"{monitors_pb2.MonitorState.Name(monitor.state)}")
    print("events seen: " + (", ".join(f"{n} {c}" for n, c in sorted(counts.items())) or "none"))
    print(f"flat within {args.tolerance:.0%}: {'yes' if flat else 'NO'}")
    return 0 if flat else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=5.0, help="minutes of samples each median takes")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the benchmark device's time per call")
    parser.add_argument("--tolerance", type=float, default=0.10)
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
