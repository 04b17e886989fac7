"""Faults with real processes on 127.0.0.1: an LVLM replica killed mid-detection, an orchestrator
told to stop mid-stream, clip_service restarted mid-detection, and an LVLM engine that answers
429 and 503 with Retry-After, times out or hangs up, for a while or for good."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from anyanomaly.v1 import orchestrator_pb2
from services.common.clients import failed_service, open_channel
from tests.conftest import scripted_stack
from tests.helpers.detect import detect, frame_folder, split
from tests.helpers.fake_openai_server import FakeOpenAIServer, Reply
from tests.helpers.lvlm_pod import Pod, held
from tests.helpers.service_process import ServiceProcess
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


async def test_an_orchestrator_told_to_stop_finishes_its_detections_and_refuses_new_ones(tmp_path: Path) -> None:
    """SIGTERM mid-stream: the detection in flight finishes within the grace period, a new one is
    refused with UNAVAILABLE, and the process exits 0."""
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24 * 3)))
    async with scripted_stack() as stack:
        services = stack.stack
        calls_per_segment = 3 * len(TEXTS)
        stack.lvlm.hold_after = calls_per_segment  # the second segment waits for release()
        orchestrator = ServiceProcess("services.orchestrator", [
            "--clip-address", services.clip.address, "--context-address", services.context.address,
            "--lvlm-address", services.lvlm.address, "--grace-seconds", "60"], tmp_path / "orchestrator")
        try:
            await orchestrator.serving()
            run = asyncio.create_task(detect(orchestrator.address, source, TEXTS))
            assert await asyncio.to_thread(stack.lvlm.holding.wait, 120)
            orchestrator.process.send_signal(signal.SIGTERM)
            assert await not_serving(orchestrator.address)  # draining: probes fail first
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await detect(orchestrator.address, source, TEXTS)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            stack.lvlm.release()
            _, segments, _ = split(await asyncio.wait_for(run, 60))
            assert [s.index for s in segments] == [0, 1, 2]
            assert await asyncio.to_thread(orchestrator.process.wait, 30) == 0
        finally:
            stack.lvlm.release()
            orchestrator.stop()


async def not_serving(address: str, timeout: float = 30) -> bool:
    """Whether the health service says NOT_SERVING (or stops answering) within `timeout` s."""
    async with open_channel(address) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.aio.AioRpcError:
                return True
            if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                return True
            await asyncio.sleep(0.05)  # polling the health service, as a probe does
    return False


async def test_clip_service_restarted_mid_detection_never_hangs_a_detection(tmp_path: Path) -> None:
    """clip_service is SIGKILLed mid-detection and started again on its port: the detection
    completes (retried) or fails UNAVAILABLE naming clip_service, within a bound, and the next
    detection goes through without restarting anything else."""
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24 * 3)))
    clip = ServiceProcess("services.clip_service", ["--models", "tiny"], tmp_path / "clip")
    pod = Pod("lvlm", tmp_path)
    servers = []
    try:
        await asyncio.gather(clip.serving(), pod.service.serving())
        context = await start_context(clip.address)
        servers.append(context)
        orchestrator = await start_orchestrator(clip.address, context.address, pod.service.address,
                                                max_segments_in_flight=1)
        servers.insert(0, orchestrator)
        pod.lvlm.hold_after = 3 * len(TEXTS)  # the second segment's scoring waits
        run = asyncio.create_task(detect(orchestrator.address, source, TEXTS))
        await held(pod)
        port = clip.port
        clip.kill()
        pod.lvlm.release()  # the third segment now needs clip_service, which is gone
        restarted = ServiceProcess("services.clip_service", ["--models", "tiny"], tmp_path / "clip-again",
                                   port=port)
        try:
            outcome = await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 90)
            await restarted.serving()
            result = outcome[0]
            if isinstance(result, BaseException):
                assert isinstance(result, grpc.aio.AioRpcError), result
                assert result.code() == grpc.StatusCode.UNAVAILABLE, result
                assert failed_service(result) == "clip_service"
            else:
                assert [s.index for s in split(result)[1]] == [0, 1, 2]
            assert len(split(await detect(orchestrator.address, source, TEXTS))[1]) == 3  # recovered
        finally:
            restarted.stop()
    finally:
        for server in servers:
            await server.shutdown(1.0)
        clip.stop()
        pod.close()


class FaultyEngine:
    """An LVLM engine whose every distinct call fails at its first attempt, with each fault in
    turn, then is answered by `answer` (the scripted LVLM); `always` fails every attempt."""

    FAULTS: tuple[str, ...] = ("429", "503", "timeout", "hang-up")

    def __init__(self, answer: Callable[[dict[str, Any]], Reply], always: bool = False) -> None:
        self.answer, self.always = answer, always
        self.release = threading.Event()  # frees the calls held past the request timeout
        self.attempts: dict[str, list[float]] = {}
        self.faults: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> Reply:
        key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        with self._lock:
            tries = self.attempts.setdefault(key, [])
            tries.append(time.monotonic())
            fault = self.FAULTS[len(self.attempts) % len(self.FAULTS)] if self.always or len(tries) == 1 else ""
            self.faults[fault or "answered"] += 1
        if fault == "429":
            return Reply(status=429, retry_after="1")
        if fault == "503":
            return Reply(status=503, retry_after="0")
        if fault == "timeout":
            return Reply(hold=self.release)
        if fault == "hang-up":
            return Reply(close=True)
        return self.answer(request)


async def faulty_detection(tmp_path: Path, source: orchestrator_pb2.VideoSource, engine: FaultyEngine,
                           retries: int) -> tuple[list[orchestrator_pb2.DetectUpdate], float]:
    """A detection through a real lvlm_service process in front of `engine`; (updates, seconds)."""
    with FakeOpenAIServer(answer=engine) as server:
        lvlm = ServiceProcess("services.lvlm_service", [
            "--backend", "openai", "--openai-url", server.url, "--openai-model", server.model,
            "--request-timeout-seconds", "1", "--http-retries", str(retries), "--retry-backoff-seconds", "0.01"],
            tmp_path / "lvlm")
        clip, _ = await start_clip()
        context = await start_context(clip.address)
        orchestrator = None
        try:
            await lvlm.serving()
            orchestrator = await start_orchestrator(clip.address, context.address, lvlm.address)
            started = time.monotonic()
            updates = await asyncio.wait_for(detect(orchestrator.address, source, TEXTS), 120)
            return updates, time.monotonic() - started
        finally:
            engine.release.set()
            for server_ in (orchestrator, context, clip):
                if server_ is not None:
                    await server_.shutdown(1.0)
            lvlm.stop()


async def test_lvlm_engine_faults_are_retried_and_the_detection_equals_a_clean_one(tmp_path: Path) -> None:
    """Every call's first attempt meets a fault (429 with Retry-After: 1, 503 with Retry-After: 0,
    no answer within the request timeout, a closed connection): each is retried, Retry-After is
    waited for, and segments, reasons and frame scores equal a run against a faultless engine."""
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24 * 2)))
    async with scripted_stack() as clean:
        _, reference, reference_summary = split(await detect(clean.address, source, TEXTS))
        engine = FaultyEngine(clean.lvlm)
        updates, _ = await faulty_detection(tmp_path, source, engine, retries=3)
    _, segments, summary = split(updates)
    assert [list(s.scores) for s in segments] == [list(s.scores) for s in reference]
    assert list(summary.frame_scores) == list(reference_summary.frame_scores)
    calls = len(engine.attempts)
    assert all(engine.faults[fault] >= calls // 4 for fault in FaultyEngine.FAULTS), engine.faults
    assert engine.faults["answered"] == calls and summary.lvlm_usage.retries == calls
    assert summary.lvlm_usage.failures == 0 and summary.parse_failures == 0
    waited = [tries[1] - tries[0] for i, tries in enumerate(engine.attempts.values(), 1)
              if FaultyEngine.FAULTS[i % 4] == "429"]
    assert waited and min(waited) >= 0.95  # Retry-After: 1 was honoured


async def test_an_lvlm_engine_that_keeps_failing_ends_the_detection_in_bounded_time(tmp_path: Path) -> None:
    """Every attempt meets a fault: after its retries each pair is reported unscored (score 0,
    counted), the detection still completes, and it takes about retries x (timeout or
    Retry-After), not forever."""
    engine = FaultyEngine(lambda request: Reply(), always=True)
    source = orchestrator_pb2.VideoSource(frame_folder=str(frame_folder(tmp_path, 24 * 2)))
    updates, seconds = await faulty_detection(tmp_path, source, engine, retries=1)
    _, segments, summary = split(updates)
    assert [s.index for s in segments] == [0, 1]
    pairs = 2 * 3 * len(TEXTS)
    assert summary.lvlm_usage.failures == pairs and summary.lvlm_usage.calls == 2 * pairs
    streams = [stream for s in segments for score in s.scores
               for stream in (score.frame, score.position, score.temporal)]
    assert all(score.fused == 0 for s in segments for score in s.scores)
    assert all(not stream.parsed and "after 1 retries" in stream.error for stream in streams)
    assert seconds < 60
