"""The client package against the four real services (ScriptedLVLM behind lvlm_service): typed
results equal to what the raw contract returns, the blocking Client from plain threads, jobs and
events, and errors as exceptions that carry the status and the service's message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from anyanomaly import AnyAnomalyError, AsyncClient, Client, Detection, Segment, Summary
from anyanomaly.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from anyanomaly.v1 import events_pb2, orchestrator_pb2
from services.common.auth import new_token, token_hash
from services.common.errors import StartupError
from services.common.images import decode_image
from tests.conftest import Scripted, scripted_stack
from tests.helpers.cli import ANYANOMALY
from tests.helpers.detect import detect, frame_folder, split
from tests.helpers.processes import die_with_this_process

TEXTS = ["person running", "bicycle"]


def _same(segment: Segment, message: orchestrator_pb2.SegmentResult) -> None:
    assert (segment.index, segment.start_frame, segment.end_frame, segment.score, segment.gated) == (
        message.index, message.start_frame, message.end_frame, message.score, message.gated)
    assert list(segment.scores) == [s.text for s in message.scores]
    for score in message.scores:
        typed = segment.scores[score.text]
        assert (typed.fused, typed.frame, typed.position, typed.temporal) == (
            score.fused, score.frame.score, score.position.score, score.temporal.score)
        assert typed.key_frames == tuple(score.key_frames) and typed.representative == score.representative
        best = max((score.frame, score.position, score.temporal), key=lambda s: s.score)
        assert typed.reason == best.reason


async def test_detect_yields_typed_segments_then_the_summary(scripted: Scripted, tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 72)  # 3 segments
    reference = split(await detect(scripted.address, orchestrator_pb2.VideoSource(frame_folder=str(folder)), TEXTS))
    async with AsyncClient(scripted.address) as client:
        items = [item async for item in client.detect(folder, TEXTS)]
    assert [type(item) for item in items] == [Segment, Segment, Segment, Summary]
    for segment, message in zip(items[:3], reference[1], strict=True):
        assert isinstance(segment, Segment)
        _same(segment, message)
    summary = items[-1]
    assert isinstance(summary, Summary)
    assert summary.frame_scores == tuple(reference[2].frame_scores) and summary.num_frames == 72
    assert summary.random_weights  # tiny CLIP: said, so nobody mistakes these scores for real ones
    # The scores differ per text and segment (ScriptedLVLM), so the comparison above means something.
    assert len({s.scores[t].fused for s in items[:3] if isinstance(s, Segment) for t in TEXTS}) > 1


async def test_the_blocking_client_works_from_a_plain_thread(scripted: Scripted, tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 48)

    def use() -> tuple[list[Segment | Summary], Detection]:
        with Client(scripted.address) as client:
            streamed = list(client.detect(str(folder), TEXTS, segment_length=24))
            whole = client.detect_all(str(folder), TEXTS, orchestrator_pb2.DetectOptions(segment_length=24))
            return streamed, whole

    streamed, whole = await asyncio.to_thread(use)
    assert [type(item) for item in streamed] == [Segment, Segment, Summary]
    assert whole.texts == tuple(TEXTS)
    assert list(whole.segments) == streamed[:2]
    assert whole.summary == streamed[-1]


def _gauge(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll a gauge the servers in this process move."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        await asyncio.sleep(0.02)


async def test_stopping_early_ends_the_call_on_the_server(scripted: Scripted, tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 96)
    scripted.lvlm.hold_after = 6  # the first two segments' calls answer, then every call waits
    client = await asyncio.to_thread(Client, scripted.address)

    def running() -> float:
        return _gauge("anyanomaly_detections_running")

    def pending() -> float:
        return _gauge("anyanomaly_lvlm_requests_pending", {"backend": "openai"})

    try:
        stream = client.detect(str(folder), ["bicycle"])
        first = await asyncio.to_thread(next, stream)
        assert isinstance(first, Segment) and first.index == 0 and running() == 1
        await asyncio.to_thread(stream.close)  # the caller lost interest after one segment
        await _until(lambda: running() == 0 and pending() == 0)  # the detection and its LVLM calls ended
        scripted.lvlm.release()
        again = await asyncio.to_thread(client.detect_all, str(folder), ["bicycle"])
        assert len(again.segments) == 4  # and the client is still usable
    finally:
        scripted.lvlm.release()
        await asyncio.to_thread(client.close)


async def test_errors_carry_the_status_and_the_services_message(scripted: Scripted, tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 24)
    async with AsyncClient(scripted.address) as client:
        with pytest.raises(InvalidArgument) as bad:
            async for _ in client.detect(folder, TEXTS, sigma=-1.0):
                pytest.fail("no segment may come for a refused request")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "sigma must be 0 (no smoothing) to 1000" in bad.value.message
        assert str(bad.value).startswith("INVALID_ARGUMENT: ")
        with pytest.raises(AnyAnomalyError) as empty:
            await client.detect_all(folder, [])
        assert empty.value.code == grpc.StatusCode.INVALID_ARGUMENT
    async with AsyncClient("127.0.0.1:9", timeout=5) as nowhere:  # nothing listens on the discard port
        with pytest.raises(AnyAnomalyError) as down:
            await nowhere.detect_all(folder, TEXTS)
        assert down.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_options_that_cannot_work_are_refused_up_front() -> None:
    with pytest.raises(StartupError, match="needs tls_ca too"):
        AsyncClient("127.0.0.1:50050", tls_cert="client.pem", tls_key="client.key")


async def test_jobs_and_events_through_the_client(scripted_live: Scripted, tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 72)
    rules = [events_pb2.EventRule(text="", threshold=0.05)]  # low, so the scripted scores open events
    async with AsyncClient(scripted_live.address) as client:
        job = await client.submit_job(folder, TEXTS, name="three segments", rules=rules)
        watched = [item async for item in client.watch_job(job.job_id)]
        assert [type(item) for item in watched] == [Segment, Segment, Segment, Summary]
        assert [j.job_id for j in await client.list_jobs()] == [job.job_id]
        assert (await client.get_job(job.job_id)).segments_done == 3
        events = await client.list_events(job_id=job.job_id)
        assert events and all(e.job_id == job.job_id for e in events)
        opened = next(e for e in events if e.phase == events_pb2.EVENT_PHASE_OPEN)
        evidence = await client.get_evidence(opened.event_id)
        assert evidence.key_frame.data and evidence.position_context.data
        with pytest.raises(NotFound) as missing:
            await client.get_job("nope")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND and "nope" in missing.value.message


async def test_rich_error_details_name_the_field_and_the_reason(scripted: Scripted, tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 24)
    async with AsyncClient(scripted.address) as client:
        with pytest.raises(InvalidArgument) as sigma:
            await client.detect_all(folder, TEXTS, sigma=-1.0)
        with pytest.raises(InvalidArgument) as blank:
            await client.detect_all(folder, ["bicycle", " "])
    assert sigma.value.reason == "INVALID_INPUT" and sigma.value.retry_after is None
    assert sigma.value.violations == (FieldViolation("options.sigma", sigma.value.message),)
    assert [v.field for v in blank.value.violations] == ["texts[1]"]
    # The command shows them too.
    command = await asyncio.create_subprocess_exec(
        ANYANOMALY, "detect", str(folder), "-t", "bicycle", "--sigma", "-1", "--address", scripted.address,
        stderr=asyncio.subprocess.PIPE, preexec_fn=die_with_this_process)
    _, stderr = await command.communicate()
    assert command.returncode == 2
    assert "sigma must be 0 (no smoothing) to 1000" in stderr.decode() and "(field: options.sigma)" in stderr.decode()


async def test_a_refusal_at_capacity_says_when_to_retry(tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 24)
    async with scripted_stack(max_detections=1) as stack, AsyncClient(stack.address) as client:
        stack.lvlm.hold_after = 0  # every engine call waits: the first detection stays running
        first = asyncio.create_task(client.detect_all(folder, ["bicycle"]))
        try:
            assert await asyncio.to_thread(stack.lvlm.holding.wait, 60), "the first detection never reached the LVLM"
            with pytest.raises(ResourceExhausted) as refused:
                await client.detect_all(folder, ["bicycle"])
        finally:
            stack.lvlm.release()
        assert len((await first).segments) == 1
    assert refused.value.reason == "DETECTIONS_AT_CAPACITY" and refused.value.retry_after == 1.0
    assert "--max-detections" in refused.value.message


async def test_include_images_brings_the_images_the_lvlm_judged(scripted: Scripted, tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 48)
    async with AsyncClient(scripted.address) as client:
        plain = await client.detect_all(folder, ["bicycle"])
        shown = await client.detect_all(folder, ["bicycle"], include_images=True)
    assert not any(s.HasField("images") for segment in plain.segments for s in segment.message.scores)
    assert [s.scores for s in shown.segments] == [s.scores for s in plain.segments]  # same scores either way
    frames = sorted(folder.iterdir())
    for segment in shown.segments:
        images = segment.message.scores[0].images
        # A frame folder's files travel as they are: the key frame is the representative's file.
        assert images.key_frame.data == frames[segment.scores["bicycle"].representative].read_bytes()
        for context in (images.position_context.data, images.temporal_context.data):
            assert decode_image(context).shape == (224, 224, 3)


async def test_the_token_option_is_sent_and_a_missing_one_is_named(tmp_path: Path) -> None:
    token = new_token()
    (tmp_path / "tokens").write_text(f"{token_hash(token)} detect,events,jobs script\n")
    folder = frame_folder(tmp_path, 24)
    async with scripted_stack(data_dir=str(tmp_path / "data"), auth_tokens_file=str(tmp_path / "tokens")) as stack:
        async with AsyncClient(stack.address) as anonymous:
            with pytest.raises(Unauthenticated) as refused:
                await anonymous.detect_all(folder, ["bicycle"])
            assert "needs a token" in refused.value.message and refused.value.reason == "UNAUTHENTICATED"
        async with AsyncClient(stack.address, token=token) as client:
            assert len((await client.detect_all(folder, ["bicycle"])).segments) == 1
            with pytest.raises(PermissionDenied) as scope:
                await client.list_monitors()
            assert "needs the scope 'monitors'" in scope.value.message
