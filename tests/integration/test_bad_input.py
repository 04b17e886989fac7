"""Every bad input gets INVALID_ARGUMENT with an actionable message, and the next good
request still succeeds (the service keeps serving)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from PIL import Image

from anyanomaly.v1 import clip_pb2, clip_pb2_grpc, common_pb2, context_pb2, context_pb2_grpc
from services.clip_service.engine import ClipEngine
from services.common.clients import open_channel
from services.common.server import RunningServer
from tests.helpers.stack import clip_settings, start_clip, start_context

PIXEL_LIMIT = 200_000  # below the 640x360 = 230,400 pixels of an Avenue frame


@pytest_asyncio.fixture
async def limited_stack(avenue21_pngs: list[bytes]) -> AsyncIterator[tuple[str, str]]:
    clip, _ = await start_clip(clip_settings(max_image_pixels=PIXEL_LIMIT))
    context = await start_context(clip.address, max_image_pixels=PIXEL_LIMIT)
    yield clip.address, context.address
    await context.shutdown(1.0)
    await clip.shutdown(1.0)


def jpeg(width: int, height: int, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 30)).save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def images(pngs: list[bytes]) -> list[common_pb2.Image]:
    return [common_pb2.Image(data=p) for p in pngs]


async def expect_invalid(call: object, request: object, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request)  # type: ignore[operator]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert message in (caught.value.details() or ""), caught.value.details()


async def test_clip_service_bad_inputs(
    clip_server: tuple[RunningServer, ClipEngine], avenue21_pngs: list[bytes]
) -> None:
    running, _ = clip_server
    frames = images(avenue21_pngs)
    good = clip_pb2.SelectKeyFramesRequest(frames=frames, texts=["running"])
    cases: list[tuple[str, object, str]] = [
        ("SelectKeyFrames", clip_pb2.SelectKeyFramesRequest(frames=frames, texts=[]), "no texts given"),
        ("SelectKeyFrames", clip_pb2.SelectKeyFramesRequest(frames=frames, texts=[""]), "texts[0] is empty"),
        ("SelectKeyFrames", clip_pb2.SelectKeyFramesRequest(frames=frames, texts=["a" * 301]), "limit is 300"),
        ("SelectKeyFrames", clip_pb2.SelectKeyFramesRequest(frames=[], texts=["running"]), "no frames given"),
        ("SelectKeyFrames", clip_pb2.SelectKeyFramesRequest(frames=frames[:3], texts=["running"]),
         "needs at least 4"),
        ("SelectKeyFrames", clip_pb2.SelectKeyFramesRequest(
            frames=[*frames[:5], common_pb2.Image(data=b"\xff\xd8garbage")], texts=["running"]),
         "images[5]"),
        ("SelectKeyFrames", clip_pb2.SelectKeyFramesRequest(
            frames=frames, texts=["x"], strategy=common_pb2.KeyFrameStrategy.ValueType(99)),
         "unknown KeyFrameStrategy value 99"),
        ("EmbedTexts", clip_pb2.EmbedTextsRequest(texts=[]), "no texts given"),
        ("EmbedImages", clip_pb2.EmbedImagesRequest(
            images=frames[:1], preprocess=clip_pb2.PREPROCESS_SQUASH, windows=[clip_pb2.WindowGrid(size=400)]),
         "larger than the 640x360 image"),
        ("EmbedImages", clip_pb2.EmbedImagesRequest(images=[common_pb2.Image(data=b"not an image")]),
         "not a JPEG or PNG"),
        ("EmbedImages", clip_pb2.EmbedImagesRequest(
            images=[frames[0], common_pb2.Image(data=jpeg(64, 48))], preprocess=clip_pb2.PREPROCESS_SQUASH,
            windows=[clip_pb2.WindowGrid(size=32)]), "must all have the same size"),
        # Equal headers, but the second decodes rotated (EXIF orientation 6): caught after decoding.
        ("EmbedImages", clip_pb2.EmbedImagesRequest(
            images=[common_pb2.Image(data=jpeg(64, 48)), common_pb2.Image(data=jpeg(64, 48, orientation=6))],
            preprocess=clip_pb2.PREPROCESS_SQUASH, windows=[clip_pb2.WindowGrid(size=32)]),
         "got 64x48 and 48x64"),
    ]
    async with open_channel(running.address) as channel:
        stub = clip_pb2_grpc.ClipServiceStub(channel)
        for method, request, message in cases:
            await expect_invalid(getattr(stub, method), request, message)
            response = await stub.SelectKeyFrames(good)  # still serving
            assert len(response.selections) == 1


async def test_context_service_bad_inputs(
    clip_server: tuple[RunningServer, ClipEngine], context_server: RunningServer, avenue21_pngs: list[bytes]
) -> None:
    frames = images(avenue21_pngs[:4])

    def request(
        texts: tuple[str, ...] = ("running",), keys: tuple[int, ...] = (0, 1, 2, 3), rep: int = 0,
        frames: list[common_pb2.Image] = frames, **options: object,
    ) -> context_pb2.BuildContextsRequest:
        return context_pb2.BuildContextsRequest(
            frames=frames,
            queries=[context_pb2.ContextQuery(text=t, key_frames=list(keys), representative=rep) for t in texts],
            options=context_pb2.ContextOptions(**options),  # type: ignore[arg-type]
        )

    cases: list[tuple[context_pb2.BuildContextsRequest, str]] = [
        (request(texts=()), "no queries given"),
        (request(texts=("",)), "query texts[0] is empty"),
        (request(texts=("z" * 301,)), "limit is 300"),
        (request(frames=[]), "no frames given"),
        (request(keys=(0, 1, 2)), "has 3 key frames"),
        (request(keys=(0, 1, 2, 9)), "refers to frame 9"),
        (request(frames=[*frames[:3], common_pb2.Image(data=b"\x89PNG\r\n\x1a\n")]), "frames[3]"),
        (request(preset="ucf-crime"), "unknown preset 'ucf-crime'"),
        (request(preset="custom", window_sizes=[48, 300]), "window size 300 does not fit"),
        (request(profile=7), "unknown Profile value 7"),
    ]
    async with open_channel(context_server.address) as channel:
        stub = context_pb2_grpc.ContextServiceStub(channel)
        for bad, message in cases:
            await expect_invalid(stub.BuildContexts, bad, message)
            response = await stub.BuildContexts(request())
            assert len(response.contexts) == 1


async def test_images_above_the_pixel_limit_are_refused(
    limited_stack: tuple[str, str], avenue21_pngs: list[bytes]
) -> None:
    clip_address, context_address = limited_stack
    async with open_channel(clip_address) as channel:
        await expect_invalid(
            clip_pb2_grpc.ClipServiceStub(channel).SelectKeyFrames,
            clip_pb2.SelectKeyFramesRequest(frames=images(avenue21_pngs), texts=["running"]),
            f"above the limit of {PIXEL_LIMIT}",
        )
    async with open_channel(context_address) as channel:
        await expect_invalid(
            context_pb2_grpc.ContextServiceStub(channel).BuildContexts,
            context_pb2.BuildContextsRequest(
                frames=images(avenue21_pngs[:4]),
                queries=[context_pb2.ContextQuery(text="running", key_frames=[0, 1, 2, 3])],
            ),
            f"above the limit of {PIXEL_LIMIT}",
        )


async def test_context_service_reports_a_dead_clip_service_as_unavailable(avenue21_pngs: list[bytes]) -> None:
    clip, _ = await start_clip()
    context = await start_context(clip.address, clip_timeout_seconds=5.0)
    await clip.shutdown(0)
    async with open_channel(context.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await context_pb2_grpc.ContextServiceStub(channel).BuildContexts(
                context_pb2.BuildContextsRequest(
                    frames=images(avenue21_pngs[:4]),
                    queries=[context_pb2.ContextQuery(text="running", key_frames=[0, 1, 2, 3])],
                )
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "clip_service" in (caught.value.details() or "")
    await context.shutdown(1.0)
