"""lvlm_service with the `openai` backend against FakeOpenAIServer (a local
OpenAI-compatible HTTP server standing in for `vllm serve`, which needs a GPU)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from anyanomaly.v1 import common_pb2, lvlm_pb2, lvlm_pb2_grpc
from services.common.clients import open_channel
from services.common.images import encode_jpeg, encode_png, header_size
from tests.helpers.fake_openai_server import FakeOpenAIServer, Reply, prompt_text
from tests.helpers.lvlm import IMAGE, openai_lvlm, score, segment_items
from tests.helpers.stack import lvlm_settings, start_lvlm


async def test_one_request_per_image_and_text_with_the_right_shape(fake: FakeOpenAIServer) -> None:
    lvlm = await openai_lvlm(fake)
    try:
        response = await score(lvlm.address, segment_items(["running", "bicycle"]))
    finally:
        await lvlm.shutdown(1.0)
    assert fake.problems == []
    assert len(fake.requests) == 6  # 3 images x 2 texts
    assert all(r["max_tokens"] == 128 for r in fake.requests)
    prompts = [prompt_text(r) for r in fake.requests]
    assert sum("**Context**" in p for p in prompts) == 2  # P* for the two temporal contexts
    assert sum("**running**" in p for p in prompts) == 3
    assert [item.kind for item in response.items] == [
        lvlm_pb2.CONTEXT_KIND_FRAME, lvlm_pb2.CONTEXT_KIND_POSITION, lvlm_pb2.CONTEXT_KIND_TEMPORAL,
        lvlm_pb2.CONTEXT_KIND_POSITION, lvlm_pb2.CONTEXT_KIND_TEMPORAL]
    first = response.items[0].scores
    assert [s.text for s in first] == ["running", "bicycle"]
    assert all(s.parsed and s.score == pytest.approx(0.7) for item in response.items for s in item.scores)
    assert first[0].reason == "a person runs across the plaza."
    assert first[0].raw_answer.startswith("Score: 0.7")
    assert (response.usage.calls, response.usage.images) == (6, 6)
    per_answer = -(-len(Reply().content) // 4)  # the fake server's ~4 characters per token
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (600, 6 * per_answer)


async def test_requests_run_concurrently_up_to_the_limit(fake: FakeOpenAIServer) -> None:
    both_in = threading.Barrier(2, timeout=10)

    def answer(request: dict[str, Any]) -> Reply:
        both_in.wait()  # only passes when two requests are inside the server at once
        return Reply()

    fake.answer = answer
    lvlm = await openai_lvlm(fake, max_concurrency=2)
    try:
        response = await score(lvlm.address, segment_items(["running", "bicycle"]))
    finally:
        await lvlm.shutdown(1.0)
    assert fake.max_in_flight == 2
    assert all(s.parsed for item in response.items for s in item.scores)


async def test_unreadable_answers_are_retried_once_then_reported(fake: FakeOpenAIServer) -> None:
    def answer(request: dict[str, Any]) -> Reply:
        text = prompt_text(request)
        if "bicycle" in text:
            return Reply("I cannot tell.")  # never a score
        if "score first" in text:
            return Reply("0.4 - on a second look, someone is running")
        return Reply("Running is hard to judge here.")  # the first answer for running has no score

    fake.answer = answer
    lvlm = await openai_lvlm(fake)
    try:
        response = await score(lvlm.address, [lvlm_pb2.ScoreItem(
            image=common_pb2.Image(data=IMAGE), kind=lvlm_pb2.CONTEXT_KIND_FRAME, texts=["running", "bicycle"])])
    finally:
        await lvlm.shutdown(1.0)
    running, bicycle = response.items[0].scores
    assert running.parsed and running.score == pytest.approx(0.4) and running.attempts == 2
    assert (bicycle.parsed, bicycle.score, bicycle.attempts) == (False, 0.0, 2)
    assert bicycle.error == "no score in the answer" and bicycle.raw_answer == "I cannot tell."
    assert response.usage.calls == 4


async def test_malformed_replies_errors_and_slow_answers_are_marked_not_fatal(fake: FakeOpenAIServer) -> None:
    release = threading.Event()

    def answer(request: dict[str, Any]) -> Reply:
        text = prompt_text(request)
        if "**car**" in text:
            return Reply(raw_body="{not json")
        if "**dog**" in text:
            return Reply(status=500)
        if "**stroller**" in text:
            return Reply(hold=release)  # slower than the request timeout
        return Reply()

    fake.answer = answer
    lvlm = await openai_lvlm(fake, request_timeout_seconds=0.5)
    try:
        response = await score(lvlm.address, [lvlm_pb2.ScoreItem(
            image=common_pb2.Image(data=IMAGE), kind=lvlm_pb2.CONTEXT_KIND_FRAME,
            texts=["car", "dog", "stroller", "running"])])
    finally:
        release.set()
        await lvlm.shutdown(1.0)
    car, dog, stroller, running = response.items[0].scores
    assert not car.parsed and "malformed reply" in car.error
    assert not dog.parsed and "HTTP 500" in dog.error
    assert not stroller.parsed and "did not answer within 0.5 s" in stroller.error
    assert running.parsed and running.score == pytest.approx(0.7)
    assert car.attempts == dog.attempts == stroller.attempts == 1  # engine failures are not parse retries


async def test_an_unreachable_server_gives_unavailable() -> None:
    with FakeOpenAIServer() as server:
        url, model = server.url, server.model  # the server is gone once the block ends
    lvlm = await start_lvlm(lvlm_settings(backend="openai", openai_url=url, openai_model=model))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await score(lvlm.address, segment_items(["running"]))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "unreachable" in (caught.value.details() or "")
    finally:
        await lvlm.shutdown(1.0)


async def test_bad_score_requests_are_invalid_argument(fake: FakeOpenAIServer) -> None:
    lvlm = await openai_lvlm(fake)
    image = common_pb2.Image(data=IMAGE)
    cases = [
        ([], "no items given"),
        ([lvlm_pb2.ScoreItem(image=image, texts=["car"])], "kind must be"),
        ([lvlm_pb2.ScoreItem(image=common_pb2.Image(data=b"xx"), kind=lvlm_pb2.CONTEXT_KIND_FRAME, texts=["car"])],
         "not a JPEG or PNG"),
        ([lvlm_pb2.ScoreItem(image=image, kind=lvlm_pb2.CONTEXT_KIND_FRAME, texts=[])], "no items[0].texts given"),
    ]
    try:
        for items, message in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await score(lvlm.address, items)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (caught.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await score(lvlm.address, segment_items(["car"]), preset="ucf")
        assert "unknown preset" in (caught.value.details() or "")
        assert (await score(lvlm.address, segment_items(["car"]))).usage.calls == 3
    finally:
        await lvlm.shutdown(1.0)


async def test_parity_profile_uses_the_reference_prompt_label_parser_and_no_retry(fake: FakeOpenAIServer) -> None:
    def answer(request: dict[str, Any]) -> Reply:
        return Reply("I cannot tell." if "**car**" in prompt_text(request) else "1. **Score**: 0.9")

    fake.answer = answer
    lvlm = await openai_lvlm(fake)
    items = segment_items(["running", "car"])
    try:
        parity = await score(lvlm.address, items, profile=common_pb2.PROFILE_PARITY, preset="shtech")
        parity_prompts = [prompt_text(r) for r in fake.requests]
        fake.requests.clear()
        default = await score(lvlm.address, items, preset="shtech")
        default_prompts = [prompt_text(r) for r in fake.requests]
        fake.requests.clear()
        await score(lvlm.address, items, profile=common_pb2.PROFILE_PARITY, preset="avenue", output_label="Answer")
        labelled = [prompt_text(r) for r in fake.requests]
    finally:
        await lvlm.shutdown(1.0)
    assert all("- **Response**:" in p for p in parity_prompts)  # ShT's label
    assert all("- **Output**:" in p for p in default_prompts)
    assert all("- **Answer**:" in p for p in labelled)  # the option beats the profile
    assert any("0 to 1.A score" in p for p in parity_prompts)  # the reference's P* typo
    assert not any("0 to 1.A score" in p for p in default_prompts)
    running_parity, car_parity = parity.items[0].scores
    running_default, car_default = default.items[0].scores
    assert running_parity.score == pytest.approx(1.0) and running_default.score == pytest.approx(0.9)
    assert running_default.reason == ""  # nothing but the numbering besides the score
    assert (car_parity.score, car_parity.parsed, car_parity.attempts) == (0.0, False, 1)  # no retry in parity
    assert car_default.attempts == 2
    assert parity.usage.calls == 6 and default.usage.calls == 9  # car is retried in each of its 3 images


def received_sizes(fake: FakeOpenAIServer) -> list[tuple[int, int]]:
    """(width, height) of every image the server was sent."""
    sizes = []
    for request in fake.requests:
        url = next(m for m in request["messages"] if m["role"] == "user")["content"][0]["image_url"]["url"]
        sizes.append(header_size(base64.b64decode(url.split(",", 1)[1])) or (0, 0))
    return sizes


async def test_images_are_downscaled_to_the_models_pixel_bound_before_sending(
    fake: FakeOpenAIServer, avenue21_frames: list[np.ndarray]
) -> None:
    frame = encode_jpeg(avenue21_frames[0])  # 640x360 = 230,400 pixels
    context = encode_png(avenue21_frames[1][:224, :224])  # a 224x224 context image, 50,176 pixels
    items = [lvlm_pb2.ScoreItem(image=common_pb2.Image(data=frame), kind=lvlm_pb2.CONTEXT_KIND_FRAME, texts=["car"]),
             lvlm_pb2.ScoreItem(image=common_pb2.Image(data=context), kind=lvlm_pb2.CONTEXT_KIND_POSITION,
                                texts=["car"])]
    lvlm = await openai_lvlm(fake, downscale_to_pixels=40_000)
    try:
        await score(lvlm.address, items)
        async with open_channel(lvlm.address) as channel:
            info = await lvlm_pb2_grpc.LvlmServiceStub(channel).GetModelInfo(common_pb2.GetModelInfoRequest())
    finally:
        await lvlm.shutdown(1.0)
    # The two requests run concurrently: tell them apart by shape, not by arrival order.
    (context_w, context_h), (frame_w, frame_h) = sorted(received_sizes(fake), key=lambda size: size[0] / size[1])
    assert frame_w * frame_h <= 40_000 and abs(frame_w / frame_h - 640 / 360) < 0.02  # aspect kept
    assert context_w * context_h <= 40_000 and context_w == context_h
    assert info.max_image_pixels == 40_000


async def test_the_model_presets_bound_decides_when_none_is_set(fake: FakeOpenAIServer,
                                                                 avenue21_frames: list[np.ndarray]) -> None:
    big = encode_jpeg(np.concatenate([np.concatenate([avenue21_frames[0]] * 3, axis=1)] * 3))  # 1920x1080
    lvlm = await openai_lvlm(fake)  # Qwen2.5-VL-7B: 1280 tokens of 28x28 pixels
    try:
        await score(lvlm.address, [lvlm_pb2.ScoreItem(image=common_pb2.Image(data=big),
                                                      kind=lvlm_pb2.CONTEXT_KIND_FRAME, texts=["car"])])
    finally:
        await lvlm.shutdown(1.0)
    ((width, height),) = received_sizes(fake)
    assert 1280 * 28 * 28 >= width * height >= 950_000 and (width, height) != (1920, 1080)


async def test_requests_held_back_by_the_concurrency_limit_are_exported_as_waiting(fake: FakeOpenAIServer) -> None:
    # The autoscaler adds these to vLLM's num_requests_waiting, which never sees them.
    inside = threading.Semaphore(0)
    release = threading.Event()

    def answer(request: dict[str, Any]) -> Reply:
        inside.release()
        release.wait(30)
        return Reply()

    fake.answer = answer
    lvlm = await openai_lvlm(fake, max_concurrency=2)
    try:
        scoring = asyncio.ensure_future(score(lvlm.address, segment_items(["running", "bicycle"])))  # 6 calls
        for _ in range(2):
            assert await asyncio.to_thread(inside.acquire, True, 30)
        pending = REGISTRY.get_sample_value("anyanomaly_lvlm_requests_pending", {"backend": "openai"})
        waiting = REGISTRY.get_sample_value("anyanomaly_lvlm_requests_waiting", {"backend": "openai"})
        assert (pending, waiting) == (6, 4)  # two at the server, four held back
        release.set()
        await scoring
        assert REGISTRY.get_sample_value("anyanomaly_lvlm_requests_pending", {"backend": "openai"}) == 0
        assert REGISTRY.get_sample_value("anyanomaly_lvlm_requests_waiting", {"backend": "openai"}) == 0
    finally:
        release.set()
        await lvlm.shutdown(1.0)


def shared_prefix(request: dict[str, Any]) -> str:
    """Everything a request sends before its question: the messages ahead of the user's, then
    the user's content up to and including the image (what vLLM's prefix cache can reuse)."""
    messages = request["messages"]
    user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    parts = messages[user]["content"]
    image = next(i for i, p in enumerate(parts) if p["type"] == "image_url")
    return json.dumps([*messages[:user], {**messages[user], "content": parts[:image + 1]}], sort_keys=True)


@pytest.mark.parametrize("options", [{}, {"mode": lvlm_pb2.SCORE_MODE_REASON_FIRST},
                                     {"mode": lvlm_pb2.SCORE_MODE_FAST}, {"multi_text": True}],
                         ids=["standard", "reason_first", "fast", "multi_text"])
async def test_calls_on_the_same_image_share_everything_before_the_question(
        fake: FakeOpenAIServer, options: dict[str, Any]) -> None:
    texts = ["running", "bicycle", "person lying on the ground"]
    pictures = [encode_png(np.full((64, 96, 3), shade, np.uint8)) for shade in range(20, 160, 20)]
    key_frame = common_pb2.Image(data=pictures[0])
    if options.get("multi_text"):
        items = [lvlm_pb2.ScoreItem(image=common_pb2.Image(data=pictures[k]), kind=kind, texts=texts)
                 for k, kind in enumerate((lvlm_pb2.CONTEXT_KIND_FRAME, lvlm_pb2.CONTEXT_KIND_POSITION,
                                           lvlm_pb2.CONTEXT_KIND_TEMPORAL))]
    else:
        items = [lvlm_pb2.ScoreItem(image=key_frame, kind=lvlm_pb2.CONTEXT_KIND_FRAME, texts=texts)]
        items += [lvlm_pb2.ScoreItem(image=common_pb2.Image(data=pictures[1 + 2 * t + k]), kind=kind, texts=[text])
                  for t, text in enumerate(texts)
                  for k, kind in enumerate((lvlm_pb2.CONTEXT_KIND_POSITION, lvlm_pb2.CONTEXT_KIND_TEMPORAL))]
    lvlm = await openai_lvlm(fake)
    try:
        await score(lvlm.address, items, **options)
    finally:
        await lvlm.shutdown(1.0)
    assert fake.problems == []
    by_image: dict[str, list[dict[str, Any]]] = {}
    for request in fake.requests:
        by_image.setdefault(image_url(request), []).append(request)
    if not options.get("multi_text"):  # the key frame goes with every text
        assert max(len(group) for group in by_image.values()) >= len(texts)
    for group in by_image.values():
        assert len({shared_prefix(request) for request in group}) == 1  # one cached prefix per image
        assert not any(text in shared_prefix(group[0]) for text in texts)  # no text before the image
    heads = {shared_prefix(r).split('"image_url"')[0] for r in fake.requests}
    assert len(heads) == 1  # and what precedes the image is the same for every call


def image_url(request: dict[str, Any]) -> str:
    parts = next(m for m in request["messages"] if m["role"] == "user")["content"]
    return str(next(p for p in parts if p["type"] == "image_url")["image_url"]["url"])
