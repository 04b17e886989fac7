"""Faults with real processes on 127.0.0.1: an LVLM replica killed mid-detection."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from anyanomaly.v1 import orchestrator_pb2

from tests.helpers.detect import detect, frame_folder, split
from tests.helpers.lvlm_pod import Pod, held
from tests.helpers.stack import start_clip, start_context, start_orchestrator

TEXTS = ["bicycle", "person running"]
SEGMENTS = 5


async def test_an_lvlm_replica_killed_mid_detection_loses_no_segment_and_repeats_none(tmp_path: Path) -> None:
    """Two lvlm_service replicas behind one orchestrator (a fixed list of addresses); one is
    SIGKILLed with a segment's calls in flight: they are scored on the other, and the detection
    equals an uninterrupted one."""
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24 * SEGMENTS)))
    pods = [Pod(name, tmp_path) for name in ("reference", "x", "y")]
    clip, _ = await start_clip()
    context = await start_context(clip.address)
    servers = [context, clip]
    try:
        reference_pod, x, y = pods
        await asyncio.gather(*(p.service.serving() for p in pods))
        plain = await start_orchestrator(clip.address, context.address, reference_pod.service.address)
        servers.insert(0, plain)
        _, reference, reference_summary = split(await detect(plain.address, source, TEXTS))
        calls_per_segment = reference_pod.lvlm.calls // SEGMENTS

        both = f"{x.service.address},{y.service.address}"
        # One segment at a time, so that the calls x holds are all one segment's.
        orchestrator = await start_orchestrator(clip.address, context.address, both, max_segments_in_flight=1)
        servers.insert(0, orchestrator)
        x.lvlm.hold_after = calls_per_segment  # x scores a segment, then holds the next one's calls
        run = asyncio.create_task(detect(orchestrator.address, source, TEXTS))
        await held(x)
        x.service.kill()
        x.killed = True
        updates = await asyncio.wait_for(run, 120)
    finally:
        for server in servers:
            await server.shutdown(1.0)
        for pod in pods:
            pod.close()

    _, segments, summary = split(updates)
    assert [s.index for s in segments] == list(range(SEGMENTS))
    assert [list(s.scores) for s in segments] == [list(s.scores) for s in reference]
    assert list(summary.frame_scores) == list(reference_summary.frame_scores)
    assert x.images(calls_per_segment) <= y.images()  # what x held was scored on y
    assert Counter(x.delivered() + y.delivered()) == Counter(reference_pod.lvlm.answers)
