"""The orchestrator follows the LVLM pods of a Kubernetes Service through its EndpointSlices
while a detection runs: a Kubernetes API emulator (kmock) serves the slices the test writes,
the pods are real lvlm_service processes on 127.0.0.1 (each in front of its own scripted
OpenAI-compatible server, so every answer is known and traceable to its pod)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kmock import KubernetesError, action

from anyanomaly.v1 import orchestrator_pb2
from services.common.discovery import EndpointSliceWatcher, KubernetesTarget
from services.orchestrator.pipeline import Detector
from tests.helpers.detect import detect, frame_folder, split
from tests.helpers.kubernetes_api import READY, TERMINATING, Cluster, kubernetes_api
from tests.helpers.lvlm_pod import Pod, held
from tests.helpers.stack import start_clip, start_context, start_orchestrator, start_orchestrator_with

TEXTS = ["bicycle"]
SEGMENTS = 8
FOLLOW_SECONDS = 5.0  # the bound on how long the endpoint set may lag the slices


async def put(cluster: Cluster, pod: Pod, state: str) -> None:
    """The pod's EndpointSlice, as the control plane writes it (one per pod: their ports differ)."""
    await cluster.put_slice(f"lvlm-{pod.name}", "lvlm", pod.service.port, {"127.0.0.1": state})


async def test_lvlm_pods_come_go_and_die_during_a_detection_without_losing_or_repeating_a_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24 * SEGMENTS)))
    pods = {name: Pod(name, tmp_path) for name in "abc"}
    clip, _ = await start_clip()
    context = await start_context(clip.address)
    servers = [context, clip]
    try:
        await asyncio.gather(*(p.service.serving() for p in pods.values()))
        a, b, c = pods.values()

        # The uninterrupted run, on a fixed address, for what every answer and result must be.
        reference_pod = Pod("reference", tmp_path)
        try:
            await reference_pod.service.serving()
            plain = await start_orchestrator(clip.address, context.address, reference_pod.service.address,
                                             max_segments_in_flight=1)
            _, reference, reference_summary = split(await detect(plain.address, source, TEXTS))
            await plain.shutdown(1.0)
            expected_answers = Counter(reference_pod.lvlm.answers)
            calls_per_segment = reference_pod.lvlm.calls // SEGMENTS
            first_two_segments = reference_pod.images(0, 2 * calls_per_segment)
        finally:
            reference_pod.close()
        assert len(reference) == SEGMENTS and calls_per_segment >= 3

        async with kubernetes_api(tmp_path) as cluster:
            monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
            monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # this API, even when run in a pod
            await put(cluster, a, READY)
            detector = Detector()
            orchestrator = await start_orchestrator_with(detector, clip.address, context.address,
                                                         "kubernetes:///lvlm:grpc", max_segments_in_flight=1)
            try:
                pool = detector.clients.lvlm
                assert await pool.wait_until(lambda p: p.addresses == {a.service.address}, FOLLOW_SECONDS)

                a.lvlm.hold_after = calls_per_segment  # segment 0 is scored on a; segment 1 waits there
                run = asyncio.create_task(detect(orchestrator.address, source, TEXTS))
                await held(a)

                await put(cluster, b, READY)  # scale-up: a second pod becomes ready
                assert await pool.wait_until(lambda p: b.service.address in p.addresses, FOLLOW_SECONDS)

                await put(cluster, a, TERMINATING)  # scale-down: a's pod is told to stop
                assert await pool.wait_until(lambda p: p.addresses == {b.service.address}
                                             and p.leaving == {a.service.address}, FOLLOW_SECONDS)
                b.lvlm.hold_after = 2 * calls_per_segment  # segments 2 and 3 on b; segment 4 waits there
                a.lvlm.release()  # the call in flight on the terminating pod finishes there
                assert await pool.wait_until(lambda p: not p.leaving, FOLLOW_SECONDS)  # then a's channel closes
                await held(b)

                await put(cluster, c, READY)
                assert await pool.wait_until(lambda p: c.service.address in p.addresses, FOLLOW_SECONDS)
                b.service.kill()  # b's pod dies with segment 4 in flight: it is scored again, on c
                b.killed = True
                await cluster.delete_slice("lvlm-a")
                updates = await asyncio.wait_for(run, 120)

                await cluster.delete_slice("lvlm-b")
                assert await pool.wait_until(lambda p: p.addresses == {c.service.address} and not p.leaving,
                                             FOLLOW_SECONDS)
            finally:  # before the API server goes: the orchestrator's watch ends first
                await orchestrator.shutdown(1.0)
    finally:
        for server in servers:
            await server.shutdown(1.0)
        for pod in pods.values():
            pod.close()

    _, segments, summary = split(updates)
    assert [s.index for s in segments] == list(range(SEGMENTS))  # none lost, none twice
    assert [s.score for s in segments] == [s.score for s in reference]
    assert [list(s.scores) for s in segments] == [list(s.scores) for s in reference]  # streams, reasons
    assert list(summary.frame_scores) == list(reference_summary.frame_scores)
    # Nothing was sent to a once it was terminating: it saw segments 0 and 1 only.
    assert len(a.engine.requests) == 2 * calls_per_segment and a.images() == first_two_segments
    assert len(b.delivered()) == 2 * calls_per_segment
    assert b.lvlm.calls > b.lvlm.hold_after  # segment 4 was on b when it died...
    assert b.images(2 * calls_per_segment) <= c.images()  # ... and was scored on c
    # Every (text, prompt, image) answered and delivered exactly as often as in the plain run.
    assert Counter(a.delivered() + b.delivered() + c.delivered()) == expected_answers


def first_request(kind: action) -> Callable[[Any], bool]:
    """A kmock filter that matches only the first request of `kind` (LIST, WATCH)."""
    chosen: list[Any] = []

    def matches(request: Any) -> bool:
        if request.action != kind:
            return False
        if not chosen:
            chosen.append(request)  # kept, so that its identity is never reused
        return request is chosen[0]

    return matches


async def test_the_watcher_lists_again_after_api_errors_and_an_expired_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with kubernetes_api(tmp_path) as cluster:
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        cluster.emulator[first_request(action.LIST)] << KubernetesError(status=500, message="etcd is away")
        cluster.emulator[first_request(action.WATCH)] << {  # the API's answer to a too old resourceVersion
            "type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "code": 410, "reason": "Expired",
                                        "message": "too old resource version"}}
        await cluster.put_slice("lvlm-a", "lvlm", 50053, {"10.0.0.1": READY})
        published: asyncio.Queue[set[str]] = asyncio.Queue()
        watcher = EndpointSliceWatcher(KubernetesTarget("lvlm", "default", "grpc"), published.put_nowait)
        with caplog.at_level(logging.INFO, logger="services.common.discovery"):
            await watcher.start()
            try:
                assert await asyncio.wait_for(published.get(), 10) == {"10.0.0.1:50053"}  # after the 500
                await cluster.put_slice("lvlm-b", "lvlm", 50053, {"10.0.0.2": READY})
                while (latest := await asyncio.wait_for(published.get(), 10)) != {"10.0.0.1:50053",
                                                                                  "10.0.0.2:50053"}:
                    assert latest == {"10.0.0.1:50053"}  # the lists after the 500 and the 410
            finally:
                await watcher.close()
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.WARNING, "endpoint discovery of kubernetes:///lvlm.default:grpc failed; retrying") in messages
    assert (logging.INFO, "endpoint watch of kubernetes:///lvlm.default:grpc expired; listing again") in messages
