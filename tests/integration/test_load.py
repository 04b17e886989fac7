"""Load through a real stack: as many detections at once as --max-detections allows, each on its
own clip, all complete and each equals the same detection run alone (no answer crosses to another
detection under load); the ones beyond the limit are refused at once. Throughput and latency per
concurrency level, and memory, are measured by `python -m benchmarks.load` (README)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from anyanomaly.v1 import orchestrator_pb2
from tests.conftest import scripted_stack
from tests.helpers.detect import detect, frame_folder, split

AT_ONCE = 8
BEYOND = 4
TEXTS = ["bicycle", "person running"]


def running_detections() -> float:
    return REGISTRY.get_sample_value("anyanomaly_detections_running") or 0.0


async def test_detections_at_capacity_all_complete_unmixed_and_more_are_refused_at_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sources = [orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 48, f"clip{i}", start=8 * i)))
               for i in range(AT_ONCE)]
    async with scripted_stack(max_detections=AT_ONCE) as stack:
        alone = [split(await detect(stack.address, source, TEXTS)) for source in sources]
        stack.lvlm.hold_after = stack.lvlm.calls  # from now on every engine call waits: all stay admitted
        idle = running_detections()  # the gauge is the process's: other tests' orchestrators count in it
        running = [asyncio.create_task(detect(stack.address, source, TEXTS)) for source in sources]
        deadline = time.monotonic() + 120
        while running_detections() - idle < AT_ONCE:  # the gauge the orchestrator exports
            assert time.monotonic() < deadline and not any(task.done() for task in running)
            await asyncio.sleep(0.02)
        started = time.monotonic()
        refusals = await asyncio.gather(*(detect(stack.address, sources[0], TEXTS) for _ in range(BEYOND)),
                                        return_exceptions=True)
        refused_within = time.monotonic() - started
        stack.lvlm.release()
        started = time.monotonic()
        together = [split(updates) for updates in await asyncio.wait_for(asyncio.gather(*running), 300)]
        finished_within = time.monotonic() - started
    for refusal in refusals:
        assert isinstance(refusal, grpc.aio.AioRpcError) and refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused_within < 5  # at once, not queued behind the running ones
    for (_, segments, summary), (_, reference, reference_summary) in zip(together, alone, strict=True):
        assert [list(s.scores) for s in segments] == [list(s.scores) for s in reference]
        assert list(summary.frame_scores) == list(reference_summary.frame_scores)
    assert len({tuple(summary.frame_scores) for _, _, summary in together}) == AT_ONCE  # the clips do differ
    with capsys.disabled():
        print(f"\nload: {AT_ONCE} detections at once all complete ({finished_within:.1f} s once released), each "
              f"equal to its run alone; {BEYOND} more refused RESOURCE_EXHAUSTED within {refused_within * 1000:.0f} ms")
