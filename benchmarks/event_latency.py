"""Latency from frame to event for a live monitor, through the served stack as users run it.

Starts `anyanomaly serve`'s stack (the tiny CLIP model; lvlm_service's openai backend in front of
TimedLLM, a benchmark device that answers score 0.7 after a fixed latency), with a data dir.
Then, several times: creates a monitor on a frame folder played as a 25 fps camera, waits for
its OPEN event on WatchEvents, deletes it. Per event it prints, in milliseconds:

- scoring: from the last frame of the segment that opened the event to the stored event (key
  frames, contexts, LVLM calls, rules, evidence);
- watch: from the stored event to a WatchEvents subscriber receiving it;
- total: from that last frame to the subscriber.
A segment is 24 frames: at 25 fps its first frame waited 960 ms more for the segment to fill.

    python -m benchmarks.event_latency [--events 5] [--latency-ms 0 200] [--frames FOLDER]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from anyanomaly.launcher import EmbeddedStack, StackOptions
from anyanomaly.v1 import events_pb2, events_pb2_grpc, monitors_pb2, monitors_pb2_grpc, orchestrator_pb2
from benchmarks.timed_llm import TimedLLM
from services.common.clients import open_channel

DEFAULT_FRAMES = Path(__file__).resolve().parents[2] / "shared/fixtures/real/ucsd_ped2/testing/frames/04"


async def measure(address: str, frames: Path, count: int) -> list[tuple[float, float, float]]:
    figures = []
    async with open_channel(address, default_timeout=None) as channel:
        monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)  # the stubs' types describe the sync API
        events: Any = events_pb2_grpc.EventsStub(channel)
        for _ in range(count):
            watch = events.WatchEvents(events_pb2.WatchEventsRequest(after_cursor=-1))
            spec = monitors_pb2.MonitorSpec(source=orchestrator_pb2.VideoSource(frame_folder=str(frames)),
                                            texts=["bicycle"], rules=[events_pb2.EventRule(threshold=0.5)])
            monitor = await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=spec))
            event = await watch.read()
            received_ms = time.time() * 1000
            watch.cancel()
            assert event.phase == events_pb2.EVENT_PHASE_OPEN and event.monitor_id == monitor.monitor_id
            figures.append((event.created_ms - event.end_wall_ms, received_ms - event.created_ms,
                            received_ms - event.end_wall_ms))
            await monitors.DeleteMonitor(monitors_pb2.GetMonitorRequest(monitor_id=monitor.monitor_id))
    return figures


async def run(latency_ms: float, frames: Path, count: int) -> list[tuple[float, float, float]]:
    with TimedLLM(latency=latency_ms / 1000) as engine, tempfile.TemporaryDirectory() as data_dir:
        stack = EmbeddedStack(StackOptions(models="tiny", lvlm_url=engine.url, lvlm_model=engine.model,
                                           data_dir=Path(data_dir)))
        await stack.start()
        try:
            return await measure(stack.orchestrator_address, frames, count)
        finally:
            await stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 200.0])
    parser.add_argument("--frames", type=Path, default=DEFAULT_FRAMES)
    args = parser.parse_args()
    print(f"{'LVLM latency':>12}  {'scoring ms (median, max)':>25}  {'watch ms':>16}  {'total ms':>16}")
    for latency in args.latency_ms:
        figures = asyncio.run(run(latency, args.frames, args.events))
        columns = list(zip(*figures, strict=True))
        cells = [f"{statistics.median(c):7.0f} {max(c):7.0f}" for c in columns]
        print(f"{latency:10.0f} ms  {cells[0]:>25}  {cells[1]:>16}  {cells[2]:>16}")


if __name__ == "__main__":
    main()
