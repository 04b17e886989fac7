"""Live capacity: how many 25 fps cameras one orchestrator + clip_service sustain in real time, and
whether `anyanomaly plan`'s model of the LVLM side predicts where it stops.

Starts `anyanomaly serve`'s stack (real processes, tiny CLIP; lvlm_service's openai backend in
front of TimedLLM, a benchmark device with a fixed latency per call). For N = 1, 2, ... it runs N
monitors, each on the Ped2 frames played in a loop as a 25 fps camera with one text, lets them
warm up, then watches them for --seconds. The real-time criterion (NVIDIA VSS's): every segment is
scored, none dropped, and scoring keeps up (lag under two segments, 1.92 s). Two settings:

- CLIP-bound: the LVLM answers in 200 ms with 16 calls in flight, far more than the cameras
  need; the CPU side (decoding, key frames, contexts) is the limit on this machine;
- LVLM-bound: 1 s a call and 4 in flight (one small "pod"); `anyanomaly plan`'s model says how
  many cameras that pod carries at full use, and the measurement says whether it holds.

    python -m benchmarks.live_capacity [--seconds 45] [--max-cameras 8]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyanomaly.launcher import EmbeddedStack, StackOptions
from anyanomaly.planning import Site, plan
from anyanomaly.v1 import monitors_pb2, monitors_pb2_grpc, orchestrator_pb2
from benchmarks.timed_llm import TimedLLM
from services.common.clients import open_channel
from services.common.config import set_environment

FRAMES = Path(__file__).resolve().parents[2] / "shared/fixtures/real/ucsd_ped2/testing/frames/04"
SEGMENT_SECONDS = 24 / 25
MAX_LAG_SECONDS = 2 * SEGMENT_SECONDS
WARM_UP_SECONDS = 10.0


@dataclass
class Level:
    cameras: int
    scored: int  # segments scored during the watch, all cameras
    dropped: int  # segments dropped during the watch, all cameras
    worst_lag: float

    @property
    def real_time(self) -> bool:
        return self.dropped == 0 and self.worst_lag < MAX_LAG_SECONDS and self.scored > 0


async def watch(address: str, cameras: int, seconds: float) -> Level:
    async with open_channel(address, default_timeout=60) as channel:
        monitors: Any = monitors_pb2_grpc.MonitorsStub(channel)
        spec = monitors_pb2.MonitorSpec(source=orchestrator_pb2.VideoSource(frame_folder=str(FRAMES)),
                                        texts=["bicycle"])
        ids = [(await monitors.CreateMonitor(monitors_pb2.CreateMonitorRequest(spec=spec))).monitor_id
               for _ in range(cameras)]

        async def snapshot() -> list[Any]:
            return [await monitors.GetMonitor(monitors_pb2.GetMonitorRequest(monitor_id=i)) for i in ids]

        await asyncio.sleep(WARM_UP_SECONDS)
        before = await snapshot()
        after, worst_lag, deadline = before, 0.0, asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:  # the lag sampled every second, worst kept
            await asyncio.sleep(1.0)
            after = await snapshot()
            worst_lag = max(worst_lag, *(monitor.lag_seconds for monitor in after))
        for monitor_id in ids:
            await monitors.DeleteMonitor(monitors_pb2.GetMonitorRequest(monitor_id=monitor_id))
    return Level(cameras, sum(a.segments_scored - b.segments_scored for a, b in zip(after, before, strict=True)),
                 sum(a.segments_dropped - b.segments_dropped for a, b in zip(after, before, strict=True)),
                 worst_lag)


async def levels(latency: float, concurrency: int, max_cameras: int, seconds: float) -> list[Level]:
    set_environment("ANYANOMALY_LVLM_MAX_CONCURRENCY", str(concurrency))  # the launcher's services inherit it
    with TimedLLM(latency=latency) as engine, tempfile.TemporaryDirectory() as data_dir:
        stack = EmbeddedStack(StackOptions(models="tiny", lvlm_url=engine.url, lvlm_model=engine.model,
                                           data_dir=Path(data_dir)))
        await stack.start()
        try:
            found = []
            for cameras in range(1, max_cameras + 1):
                level = await watch(stack.orchestrator_address, cameras, seconds)
                found.append(level)
                print(f"{cameras:>8} {level.scored / cameras / seconds * 60:>22.1f} {level.dropped:>8} "
                      f"{level.worst_lag:>8.2f} {'yes' if level.real_time else 'no':>10}", flush=True)
                if not level.real_time:
                    break
            return found
        finally:
            await stack.stop()


def header(title: str) -> None:
    print(f"\n{title}\n{'cameras':>8} {'segments/min per camera':>22} {'dropped':>8} {'lag s':>8} {'real time':>10}")


async def run(seconds: float, max_cameras: int) -> None:
    print(f"real time: no segment dropped and lag under {MAX_LAG_SECONDS:.2f} s; each level watched {seconds:g} s "
          f"after {WARM_UP_SECONDS:g} s of warm-up (a 180-frame loop is 7 whole segments in 7.2 s: 58.3 a minute)")
    header("CLIP-bound: LVLM 200 ms a call, 16 in flight")
    clip_bound = await levels(0.2, 16, max_cameras, seconds)
    header("LVLM-bound: LVLM 1 s a call, 4 in flight (one small pod)")
    pod = plan(Site(cameras=1, texts=1, seconds_per_call=1.0, concurrency=4, utilization=1.0))
    predicted = math.floor(pod.calls_per_second_per_pod / (pod.calls_per_second))
    lvlm_bound = await levels(1.0, 4, min(max_cameras, predicted + 1), seconds)
    sustained = [level.cameras for level in clip_bound if level.real_time]
    measured = [level.cameras for level in lvlm_bound if level.real_time]
    print(f"\nCLIP-bound: {max(sustained, default=0)} cameras sustained in real time")
    print(f"LVLM-bound: anyanomaly plan's model: {pod.calls_per_second_per_pod:.1f} calls/s per pod at full use, "
          f"{pod.calls_per_second:.2f} calls/s per camera -> {predicted} cameras; measured: "
          f"{max(measured, default=0)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=45.0, help="how long each level is watched")
    parser.add_argument("--max-cameras", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.max_cameras))


if __name__ == "__main__":
    main()
