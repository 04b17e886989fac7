"""What the channels between services promise, checked through real servers: retries of
UNAVAILABLE for idempotent methods only, a second endpoint taking over, the caller's deadline
passed downstream, malformed messages and over-long errors answered cleanly, keepalive."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from anyanomaly.v1 import clip_pb2, clip_pb2_grpc, common_pb2, context_pb2, context_pb2_grpc
from services.clip_service.engine import ClipEngine, ImageEmbeddings, KeyFrameResult
from services.clip_service.server import build_service as build_clip
from services.common.clients import open_channel
from services.common.deadlines import remaining
from services.common.errors import NotReady
from services.common.interceptors import ServiceInterceptor
from services.common.server import RunningServer, start_server
from tests.helpers.stack import clip_settings, start_context


class FlakyClipEngine(ClipEngine):
    """A real ClipEngine that answers UNAVAILABLE (model not ready) to its first `failures`
    key-frame requests, and counts every attempt that reaches it."""

    def __init__(self, failures: int, **settings: object) -> None:
        super().__init__(clip_settings(**settings))
        self.failures, self.attempts = failures, 0

    async def select_key_frames(self, frames: Sequence[bytes], texts: Sequence[str], *args: Any,
                                **kwargs: Any) -> KeyFrameResult:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise NotReady("clip_service is still loading its model; retry shortly")
        return await super().select_key_frames(frames, texts, *args, **kwargs)


class HeldClipEngine(ClipEngine):
    """A real ClipEngine whose image batches wait for the test (`release`)."""

    def __init__(self, **settings: object) -> None:
        super().__init__(clip_settings(**settings))
        self.entered, self.release = threading.Event(), threading.Event()

    def _encode_batch(self, rows: list) -> list:  # type: ignore[type-arg]
        self.entered.set()
        self.release.wait(timeout=60)
        return super()._encode_batch(rows)


async def serve(engine: ClipEngine) -> RunningServer:
    spec, _ = build_clip(engine.settings, engine)
    running = await start_server(spec, engine.settings)
    await running.until_ready()
    return running


def select_request(pngs: list[bytes]) -> clip_pb2.SelectKeyFramesRequest:
    return clip_pb2.SelectKeyFramesRequest(frames=[common_pb2.Image(data=p) for p in pngs], texts=["running"])


async def test_unavailable_is_retried_until_the_service_answers(avenue21_pngs: list[bytes]) -> None:
    engine = FlakyClipEngine(failures=2)
    running = await serve(engine)
    request = select_request(avenue21_pngs)
    assert request.ByteSize() > 4 * 1024 * 1024  # far above gRPC's default 256 KiB retry buffer
    try:
        async with open_channel(running.address) as channel:
            response = await clip_pb2_grpc.ClipServiceStub(channel).SelectKeyFrames(request, timeout=60)
    finally:
        await running.shutdown(1.0)
    assert engine.attempts == 3  # two UNAVAILABLE answers, then served
    assert len(response.selections) == 1


async def test_a_method_not_declared_idempotent_is_tried_once() -> None:
    attempts = []

    async def submit(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        attempts.append(request)
        raise NotReady("not now")

    server = grpc.aio.server(interceptors=[ServiceInterceptor("test")])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "anyanomaly.v1.Jobs", {"SubmitJob": grpc.unary_unary_rpc_method_handler(submit)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with open_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                submit_job: Any = channel.unary_unary("/anyanomaly.v1.Jobs/SubmitJob")
                await submit_job(b"job", timeout=10)
    finally:
        await server.stop(0)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(attempts) == 1


async def test_a_second_endpoint_takes_over_from_one_that_is_unavailable(avenue21_pngs: list[bytes]) -> None:
    broken, healthy = FlakyClipEngine(failures=1_000), FlakyClipEngine(failures=0)
    servers = [await serve(broken), await serve(healthy)]
    try:
        both = ",".join(s.address for s in servers)
        async with open_channel(both) as channel:
            stub = clip_pb2_grpc.ClipServiceStub(channel)
            for _ in range(6):
                response = await stub.SelectKeyFrames(select_request(avenue21_pngs[:8]), timeout=60)
                assert len(response.selections) == 1
    finally:
        for server in servers:
            await server.shutdown(1.0)
    assert healthy.attempts == 6
    assert broken.attempts >= 1  # it was tried, and every call it failed went on to the other


async def test_retries_stop_when_a_dependency_stays_down(avenue21_pngs: list[bytes]) -> None:
    """Retry throttling: a service that keeps answering UNAVAILABLE gets at most 4 attempts per call
    at first, then one: retries at several hops cannot multiply without end."""
    engine = FlakyClipEngine(failures=1_000_000)
    running = await serve(engine)
    calls = 24
    try:
        async with open_channel(running.address) as channel:
            stub = clip_pb2_grpc.ClipServiceStub(channel)
            for _ in range(calls):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.SelectKeyFrames(select_request(avenue21_pngs[:4]), timeout=30)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.shutdown(1.0)
    assert calls < engine.attempts < 3 * calls  # retried at first, then throttled (4 each would be 96)


class DeadlineRecordingClipEngine(ClipEngine):
    """A real ClipEngine that notes the time its caller's deadline leaves each image request."""

    def __init__(self) -> None:
        super().__init__(clip_settings())
        self.time_left: list[float | None] = []

    async def embed_images(self, *args: Any, **kwargs: Any) -> ImageEmbeddings:
        self.time_left.append(remaining(None))
        return await super().embed_images(*args, **kwargs)


async def test_the_callers_deadline_reaches_the_services_it_calls(avenue21_pngs: list[bytes]) -> None:
    """context_service's own limit for its clip_service calls is 60 s; for a caller that waits
    5 s, the clip_service work it causes must be bounded by those 5 s."""
    engine = DeadlineRecordingClipEngine()
    clip = await serve(engine)
    context = await start_context(clip.address, clip_timeout_seconds=60.0)
    request = context_pb2.BuildContextsRequest(
        frames=[common_pb2.Image(data=p) for p in avenue21_pngs[:4]],
        queries=[context_pb2.ContextQuery(text="running", key_frames=[0, 1, 2, 3])])
    try:
        async with open_channel(context.address) as channel:
            await context_pb2_grpc.ContextServiceStub(channel).BuildContexts(request, timeout=5.0)
            await context_pb2_grpc.ContextServiceStub(channel).BuildContexts(request, timeout=500.0)
    finally:
        await context.shutdown(1.0)
        await clip.shutdown(1.0)
    first, second = engine.time_left
    assert first is not None and 0 < first <= 5.0
    assert second is not None and 50 < second <= 61.0  # the service's own limit when the caller's is longer


async def test_malformed_messages_and_huge_echoes_get_short_invalid_argument(
    clip_server: tuple[RunningServer, ClipEngine], context_server: RunningServer, avenue21_pngs: list[bytes]
) -> None:
    running, _ = clip_server
    async with open_channel(running.address) as channel:
        raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/anyanomaly.v1.ClipService/EmbedTexts")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\xff\xff\xff\xff not protobuf", timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid EmbedTextsRequest message" in (caught.value.details() or "")
        good = await clip_pb2_grpc.ClipServiceStub(channel).EmbedTexts(clip_pb2.EmbedTextsRequest(texts=["car"]))
        assert list(good.embeddings.shape) == [1, 64]
    async with open_channel(context_server.address) as channel:
        request = context_pb2.BuildContextsRequest(
            frames=[common_pb2.Image(data=p) for p in avenue21_pngs[:4]],
            queries=[context_pb2.ContextQuery(text="running", key_frames=[0, 1, 2, 3])],
            options=context_pb2.ContextOptions(preset="p" * 10_000))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await context_pb2_grpc.ContextServiceStub(channel).BuildContexts(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "unknown preset" in details and len(details) < 400


async def test_the_request_id_comes_back_in_the_trailing_metadata(
    clip_server: tuple[RunningServer, ClipEngine]
) -> None:
    running, _ = clip_server
    async with open_channel(running.address) as channel:
        call = clip_pb2_grpc.ClipServiceStub(channel).EmbedTexts(
            clip_pb2.EmbedTextsRequest(texts=["car"]), metadata=(("x-request-id", "req-42"),))
        await call
        assert ("x-request-id", "req-42") in list(await call.trailing_metadata())
