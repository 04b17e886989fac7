"""Admission control through a real stack: beyond --max-detections a detection is refused at
once with RESOURCE_EXHAUSTED, not queued into a timeout, and a client that goes away frees its
place and cancels its calls downstream (lvlm_service's engine requests end)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from anyanomaly.v1 import orchestrator_pb2
from tests.conftest import scripted_stack
from tests.helpers.detect import detect, frame_folder, split

CALLS_PER_SEGMENT = 3  # one text: key frame, position and temporal context


def pending_lvlm_requests() -> float:
    return REGISTRY.get_sample_value("anyanomaly_lvlm_requests_pending", {"backend": "openai"}) or 0.0


async def until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll a condition another thread or process makes true (a counter, a gauge)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        await asyncio.sleep(0.02)


async def test_detections_beyond_the_limit_are_refused_at_once_and_a_gone_client_frees_its_place(
        tmp_path: Path) -> None:
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24)))
    async with scripted_stack(max_detections=2) as stack:
        stack.lvlm.hold_after = 0  # every engine call waits: detections stay running
        running = [asyncio.create_task(detect(stack.address, source, ["bicycle"])) for _ in range(2)]
        await until(lambda: stack.lvlm.calls >= 2 * CALLS_PER_SEGMENT)  # both admitted, both scoring
        assert pending_lvlm_requests() == 2 * CALLS_PER_SEGMENT

        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await detect(stack.address, source, ["bicycle"])
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-detections" in (refused.value.details() or "")
        assert time.monotonic() - started < 5  # refused, not queued

        running[0].cancel()  # the client goes away mid-detection
        await asyncio.gather(running[0], return_exceptions=True)
        await until(lambda: pending_lvlm_requests() == CALLS_PER_SEGMENT)  # its engine requests ended too
        admitted = asyncio.create_task(detect(stack.address, source, ["bicycle"]))  # its place is free
        await until(lambda: stack.lvlm.calls >= 3 * CALLS_PER_SEGMENT)
        stack.lvlm.release()
        for finished in await asyncio.gather(running[1], admitted):
            assert len(split(finished)[1]) == 1
