"""Orchestrator.DetectStream: frames pushed by the client, results as they happen, and a client
that pushes faster than the server scores held back by gRPC flow control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from anyanomaly.v1 import common_pb2, events_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from services.common.clients import open_channel
from services.common.images import encode_jpeg
from tests.conftest import Scripted
from tests.helpers import expected
from tests.helpers.detect import detect, split
from tests.helpers.fake_openai_server import FakeOpenAIServer
from tests.helpers.fixtures import avenue_clip, read_video_frames
from tests.helpers.scripted_lvlm import ScriptedLVLM
from tests.helpers.stack import lvlm_settings, start_stack


def config(texts: list[str], fps: float = 25.0, **options: object) -> orchestrator_pb2.DetectStreamRequest:
    return orchestrator_pb2.DetectStreamRequest(config=orchestrator_pb2.DetectStreamConfig(
        texts=texts, fps=fps, options=orchestrator_pb2.DetectOptions(**options)))  # type: ignore[arg-type]


def frame(data: bytes, seconds: float | None = None) -> orchestrator_pb2.DetectStreamRequest:
    pushed = orchestrator_pb2.StreamFrame(image=common_pb2.Image(data=data))
    if seconds is not None:
        pushed.media_seconds = seconds
    return orchestrator_pb2.DetectStreamRequest(frame=pushed)


async def stream(address: str, messages: AsyncIterator[orchestrator_pb2.DetectStreamRequest]
                 ) -> list[orchestrator_pb2.DetectUpdate]:
    async with open_channel(address) as channel:
        call = orchestrator_pb2_grpc.OrchestratorStub(channel).DetectStream(messages, timeout=120)
        return [update async for update in call]


async def pushed(*messages: orchestrator_pb2.DetectStreamRequest
                 ) -> AsyncIterator[orchestrator_pb2.DetectStreamRequest]:
    for message in messages:
        yield message


async def test_pushed_frames_score_like_the_same_video_read_from_a_file(scripted: Scripted) -> None:
    jpegs = [encode_jpeg(rgb) for rgb in read_video_frames(avenue_clip("08"))]  # what Detect sends for a file
    from_file = split(await detect(scripted.address, orchestrator_pb2.VideoSource(path=str(avenue_clip("08"))),
                                   ["running", "bicycle"], sigma=3.0))
    from_stream = split(await stream(scripted.address, pushed(config(["running-bicycle"], sigma=3.0),
                                                                 *(frame(j) for j in jpegs))))
    assert list(from_stream[0].texts) == ["running", "bicycle"]
    def untimed(results: list[orchestrator_pb2.SegmentResult]) -> list[dict[str, object]]:
        return [{k: v for k, v in s.items() if not k.endswith("seconds")} for s in expected.segments_of(results)]

    assert untimed(from_stream[1]) == untimed(from_file[1])
    for segments in (from_stream[1], from_file[1]):
        np.testing.assert_allclose([(s.start_seconds, s.end_seconds) for s in segments], [(0.0, 0.96), (0.96, 1.44)])
    assert all(s.wall_time_ms > 0 for s in from_stream[1]) and all(s.wall_time_ms == 0 for s in from_file[1])
    np.testing.assert_allclose(from_stream[2].frame_scores, from_file[2].frame_scores)


async def test_media_time_comes_from_the_frames_when_they_carry_it(scripted: Scripted) -> None:
    jpegs = [encode_jpeg(rgb) for rgb in read_video_frames(avenue_clip("21"), count=48)]
    updates = await stream(scripted.address, pushed(config(["running"], fps=10.0),
                                                       *(frame(j, 100.0 + 0.1 * i) for i, j in enumerate(jpegs))))
    segments = split(updates)[1]
    np.testing.assert_allclose([(s.start_seconds, s.end_seconds) for s in segments], [(100.0, 102.4), (102.4, 104.8)])


async def test_bad_streams_are_refused(scripted: Scripted) -> None:
    jpeg = encode_jpeg(read_video_frames(avenue_clip("08"), count=1)[0])
    cases = [
        (pushed(frame(jpeg)), "starts with a config message"),
        (pushed(), "starts with a config message"),
        (pushed(config(["running"], fps=1e9)), "fps must be 0 (25) to 240"),
        (pushed(config(["running"]), frame(b"not an image")), "frame 0 is not a JPEG or PNG image"),
        (pushed(config(["running"]), frame(jpeg), config(["car"])), "one config message, then only frame"),
        (pushed(config(["run\x00ning"])), "contains the control character U+0000"),
        (pushed(config(["running"]), frame(jpeg, float("nan"))), "frame 0: media_seconds must be a time"),
        (pushed(config(["running"]), frame(jpeg)), "at least 4 are needed"),
        (pushed(orchestrator_pb2.DetectStreamRequest(config=orchestrator_pb2.DetectStreamConfig(
            texts=["running"], rules=[events_pb2.EventRule(text="boat")]))), "rules for texts that are not detected"),
        (pushed(orchestrator_pb2.DetectStreamRequest(config=orchestrator_pb2.DetectStreamConfig(
            texts=["running"], rules=[events_pb2.EventRule(threshold=0.5, release=0.9)]))), "release must be"),
    ]
    for messages, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(scripted.address, messages)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert message in (caught.value.details() or "")


async def test_a_client_pushing_faster_than_the_server_scores_is_held_back() -> None:
    """While the LVLM holds its answers, the server takes no more frames than the segments in
    flight need: the client's pushes wait (gRPC flow control) and the server's memory is bounded."""
    answers = ScriptedLVLM(hold_after=0)
    jpeg = encode_jpeg(read_video_frames(avenue_clip("20"), count=1)[0])
    taken = 0

    async def endless() -> AsyncIterator[orchestrator_pb2.DetectStreamRequest]:
        nonlocal taken
        yield config(["running"])
        for index in range(2000):
            taken += 1
            yield frame(jpeg, index / 25)

    with FakeOpenAIServer(answer=answers) as server:
        stack = await start_stack(lvlm_settings(backend="openai", openai_url=server.url, openai_model=server.model))
        try:
            call = asyncio.ensure_future(stream(stack.orchestrator.address, endless()))
            assert await asyncio.to_thread(answers.holding.wait, 60)
            await asyncio.sleep(3.0)  # time for a client that is not held back to push far ahead
            held = taken
            assert held < 200, held  # 2 segments in flight and 1 being read, plus what the windows hold
            answers.release()
            updates = await call
        finally:
            answers.release()
            await stack.shutdown()
    assert taken == 2000 and len(split(updates)[1]) == 2000 // 24 + 1


async def test_event_rules_open_and_close_events_on_the_causal_scores(scripted: Scripted) -> None:
    jpegs = [encode_jpeg(rgb) for rgb in read_video_frames(avenue_clip("20"))]
    first = split(await stream(scripted.address, pushed(config(["running"], sigma=10.0),
                                                           *(frame(j) for j in jpegs))))[1]
    segments = expected.segments_of(first)
    causal = expected.causal_by_text(segments, 10.0)["running"]
    np.testing.assert_allclose([s["scores"]["running"]["causal"] for s in segments], causal, atol=1e-5)
    threshold = float(np.float32(np.median(causal)))  # events open and close on these varied scores
    rule = events_pb2.EventRule(text="running", threshold=threshold)
    updates = await stream(scripted.address, pushed(
        orchestrator_pb2.DetectStreamRequest(config=orchestrator_pb2.DetectStreamConfig(
            texts=["running"], rules=[rule], options=orchestrator_pb2.DetectOptions(sigma=10.0))),
        *(frame(j) for j in jpegs)))
    kinds = [u.WhichOneof("update") for u in updates]
    assert kinds[0] == "started" and kinds[-1] == "summary" and "event" in kinds
    events = [u.event for u in updates if u.WhichOneof("update") == "event"]
    assert [e.cursor for e in events] == list(range(1, len(events) + 1))
    starts = {round(s["start_seconds"], 6): i for i, s in enumerate(segments)}
    above = causal >= threshold
    opened = [e for e in events if e.phase == events_pb2.EVENT_PHASE_OPEN]
    closed = [e for e in events if e.phase == events_pb2.EVENT_PHASE_CLOSE]
    assert opened and len(opened) == len(closed)  # every event closes (at the latest when the stream ends)
    for event in opened:  # opens where the causal score crosses the threshold upwards
        index = starts[round(event.start_seconds, 6)]
        assert above[index] and (index == 0 or not above[index - 1])
    assert sum(above[i] and (i == 0 or not above[i - 1]) for i in range(len(above))) == len(opened)
    for event in closed:
        assert event.event_id in {e.event_id for e in opened}
        after = starts.get(round(event.end_seconds, 6))
        assert after is None or not above[after]  # closed where it fell below (or at the end)
        run = causal[starts[round(event.start_seconds, 6)]:after]
        assert event.peak_score == pytest.approx(run.max(), abs=1e-5)
