"""lvlm_service as a vLLM client (FakeOpenAIServer checks every request against vLLM 0.33's
fields): structured outputs, the scoring modes, retries, backpressure, faults, metrics."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from anyanomaly.v1 import common_pb2, lvlm_pb2
from services.lvlm_service.prompts import score_schema
from tests.helpers.fake_openai_server import FakeOpenAIServer, Reply, prompt_text
from tests.helpers.lvlm import IMAGE, openai_lvlm, score, segment_items


def frame_item(*texts: str) -> list[lvlm_pb2.ScoreItem]:
    return [lvlm_pb2.ScoreItem(image=common_pb2.Image(data=IMAGE), kind=lvlm_pb2.CONTEXT_KIND_FRAME, texts=texts)]


async def test_structured_outputs_use_the_vllm_field_and_schema(fake: FakeOpenAIServer) -> None:
    fake.answer = lambda request: Reply('{"score": 0.8, "reason": "a cart on the walkway"}')
    lvlm = await openai_lvlm(fake)
    try:
        default = await score(lvlm.address, frame_item("cart"))
        await score(lvlm.address, frame_item("cart"), mode=lvlm_pb2.SCORE_MODE_REASON_FIRST)
        await score(lvlm.address, frame_item("cart"), profile=common_pb2.PROFILE_PARITY)
    finally:
        await lvlm.shutdown(1.0)
    assert fake.problems == []
    standard, reason_first, parity = fake.requests
    assert standard["structured_outputs"] == {"json": score_schema()}
    assert list(reason_first["structured_outputs"]["json"]["properties"]) == ["reason", "score"]
    assert "structured_outputs" not in parity and "response_format" not in parity  # the reference: free text
    assert '"score": <score>' in prompt_text(standard) and "First give a brief reason" in prompt_text(reason_first)
    (cart,) = default.items[0].scores
    assert cart.score == pytest.approx(0.8) and (cart.reason, cart.parsed) == ("a cart on the walkway", True)


async def test_response_format_for_other_openai_compatible_servers(fake: FakeOpenAIServer) -> None:
    lvlm = await openai_lvlm(fake, structured_output_field="openai")
    try:
        await score(lvlm.address, frame_item("cart"))
    finally:
        await lvlm.shutdown(1.0)
    body = fake.requests[0]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == score_schema()
    assert fake.problems == []


async def test_multi_text_scores_all_texts_of_an_image_in_one_call(fake: FakeOpenAIServer) -> None:
    texts = ["running", "bicycle", "car", "fighting", "throwing"]

    def answer(request: dict[str, Any]) -> Reply:
        if request["structured_outputs"]["json"]["required"] == texts:  # one object keyed by every text
            return Reply(json.dumps({t: {"score": i / 10, "reason": f"about {t}"} for i, t in enumerate(texts)}))
        return Reply('{"score": 0.5, "reason": "one text"}')

    fake.answer = answer
    lvlm = await openai_lvlm(fake)
    image = common_pb2.Image(data=IMAGE)
    items = [lvlm_pb2.ScoreItem(image=image, kind=kind, texts=texts) for kind in (
        lvlm_pb2.CONTEXT_KIND_FRAME, lvlm_pb2.CONTEXT_KIND_POSITION, lvlm_pb2.CONTEXT_KIND_TEMPORAL)]
    try:
        response = await score(lvlm.address, items, multi_text=True)
        single = await score(lvlm.address, items[:1])
    finally:
        await lvlm.shutdown(1.0)
    assert response.usage.calls == 3  # 3 images, not 3 x 5
    assert single.usage.calls == 5
    assert [r["max_tokens"] for r in fake.requests[:3]] == [5 * 128] * 3  # room for every text's answer
    assert all("For each of **running**, **bicycle**" in prompt_text(r) for r in fake.requests[:3])
    for item in response.items:
        assert [(s.text, round(s.score, 1), s.reason) for s in item.scores] == [
            (t, i / 10, f"about {t}") for i, t in enumerate(texts)]


async def test_fast_mode_reads_the_score_from_log_probabilities(fake: FakeOpenAIServer) -> None:
    digits = [("7", -0.4), ("5", -1.4), ("9", -2.5)]
    fake.answer = lambda request: Reply("0.7", logprobs=[("0", [("0", -0.1), ("1", -2.4)]), (".", [(".", 0.0)]),
                                                          ("7", digits)])
    lvlm = await openai_lvlm(fake)
    try:
        response = await score(lvlm.address, frame_item("cart", "bicycle"), mode=lvlm_pb2.SCORE_MODE_FAST)
    finally:
        await lvlm.shutdown(1.0)
    assert fake.problems == []
    request = fake.requests[0]
    assert (request["logprobs"], request["top_logprobs"], request["max_tokens"]) == (True, 20, 4)
    assert "structured_outputs" not in request  # the number must be the first answer token
    assert "without any additional text" in prompt_text(request)
    import math
    p0, p1 = math.exp(-0.1), math.exp(-2.4)
    weights = [(int(d), math.exp(lp)) for d, lp in digits]
    decimal = sum(d * w for d, w in weights) / sum(w for _, w in weights) / 10
    expected = (p0 * decimal + p1 * 1.0) / (p0 + p1)
    for pair in response.items[0].scores:
        assert pair.parsed and pair.score == pytest.approx(expected) and pair.reason == ""
    assert response.usage.completion_tokens == 2 * 3


async def test_429_storms_are_retried_with_backoff_then_reported(fake: FakeOpenAIServer) -> None:
    seen: dict[str, int] = {}

    def answer(request: dict[str, Any]) -> Reply:
        text = "storm" if "**storm**" in prompt_text(request) else "burst"
        seen[text] = seen.get(text, 0) + 1
        if text == "storm" or seen[text] <= 2:
            return Reply(status=429, retry_after="0")
        return Reply()

    fake.answer = answer
    lvlm = await openai_lvlm(fake, http_retries=3)
    try:
        response = await score(lvlm.address, frame_item("burst", "storm"))
    finally:
        await lvlm.shutdown(1.0)
    burst, storm = response.items[0].scores
    assert burst.parsed and burst.score == pytest.approx(0.7) and seen["burst"] == 3
    assert not storm.parsed and "HTTP 429" in storm.error and "after 3 retries" in storm.error
    assert seen["storm"] == 4  # the first try and 3 retries
    assert response.usage.retries == 2 + 3 and response.usage.calls == 3 + 4 and response.usage.failures == 1


async def test_a_full_queue_is_refused_with_resource_exhausted(fake: FakeOpenAIServer) -> None:
    release, entered = threading.Event(), threading.Event()

    def answer(request: dict[str, Any]) -> Reply:
        entered.set()
        return Reply(hold=release)

    fake.answer = answer
    lvlm = await openai_lvlm(fake, max_concurrency=1, max_queued=1)
    try:
        first = asyncio.ensure_future(score(lvlm.address, frame_item("a", "b")))  # 1 in flight + 1 waiting
        await asyncio.to_thread(entered.wait, 10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await score(lvlm.address, frame_item("c"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in (caught.value.details() or "")
        release.set()
        assert all(s.parsed for s in (await first).items[0].scores)
        assert (await score(lvlm.address, frame_item("c"))).items[0].scores[0].parsed  # room again
    finally:
        release.set()
        await lvlm.shutdown(1.0)


async def test_faults_are_marked_and_retried_once_never_silently_zero(fake: FakeOpenAIServer) -> None:
    def answer(request: dict[str, Any]) -> Reply:
        text, retry = prompt_text(request), "score first" in prompt_text(request)
        if "**invalid**" in text:
            return Reply('{"score": oops}')
        if "**cut**" in text:
            return Reply('{"score": 0.6, "reason": "a long' if not retry else '{"score": 0.6, "reason": "ok"}',
                         finish_reason="length" if not retry else "stop")
        if "**refused**" in text:
            return Reply("", refusal="I can't help with that.")
        return Reply('{"score": 0.2, "reason": "nothing unusual"}')

    fake.answer = answer
    lvlm = await openai_lvlm(fake)
    try:
        response = await score(lvlm.address, frame_item("invalid", "cut", "refused", "fine"))
    finally:
        await lvlm.shutdown(1.0)
    invalid, cut, refused, fine = response.items[0].scores
    assert not invalid.parsed and invalid.attempts == 2 and invalid.error == "no score in the answer"
    assert cut.parsed and cut.score == pytest.approx(0.6) and cut.attempts == 2  # retried with more tokens
    cut_requests = [r for r in fake.requests if "**cut**" in prompt_text(r)]
    assert cut_requests[1]["max_tokens"] == 2 * cut_requests[0]["max_tokens"]
    assert not refused.parsed and refused.error == "the model refused: I can't help with that."
    assert fine.parsed and fine.attempts == 1
    assert response.usage.failures == 2


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_usage_is_exported_as_prometheus_metrics(fake: FakeOpenAIServer) -> None:
    labels = {"backend": "openai"}
    calls, images = sample("anyanomaly_lvlm_calls_total", {**labels, "mode": "standard"}), sample(
        "anyanomaly_lvlm_images_total", labels)
    tokens = sample("anyanomaly_lvlm_prompt_tokens_total", labels)
    lvlm = await openai_lvlm(fake)
    try:
        response = await score(lvlm.address, segment_items(["running", "car"]))
    finally:
        await lvlm.shutdown(1.0)
    assert sample("anyanomaly_lvlm_calls_total", {**labels, "mode": "standard"}) - calls == response.usage.calls == 6
    assert sample("anyanomaly_lvlm_images_total", labels) - images == 6
    assert sample("anyanomaly_lvlm_prompt_tokens_total", labels) - tokens == response.usage.prompt_tokens
    assert sample("anyanomaly_lvlm_engine_seconds_count", labels) >= 6


async def test_a_multi_text_answer_is_bounded_however_many_texts(fake: FakeOpenAIServer) -> None:
    texts = [f"text {i}" for i in range(12)]
    fake.answer = lambda request: Reply(json.dumps({t: {"score": 0.5, "reason": "r"} for t in texts}))
    lvlm = await openai_lvlm(fake)
    try:
        await score(lvlm.address, [lvlm_pb2.ScoreItem(image=common_pb2.Image(data=IMAGE),
                                                      kind=lvlm_pb2.CONTEXT_KIND_FRAME, texts=texts)],
                    multi_text=True, max_tokens=4096)
    finally:
        await lvlm.shutdown(1.0)
    assert [r["max_tokens"] for r in fake.requests] == [2 * 4096]  # not 12 x 4096
