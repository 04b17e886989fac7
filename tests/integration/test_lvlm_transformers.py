"""lvlm_service with the `transformers` backend: a tiny random Qwen2-VL built in code,
run through the real processor, chat template and batched `generate`."""

from __future__ import annotations

from pathlib import Path

import pytest

from anyanomaly.v1 import common_pb2, lvlm_pb2, lvlm_pb2_grpc
from services.common.clients import open_channel
from services.common.errors import ModelLoadError
from services.lvlm_service.backends.base import Prompt
from services.lvlm_service.backends.transformers_local import TransformersBackend
from services.lvlm_service.prompts import Kind, build_prompt
from tests.helpers.lvlm import IMAGE, segment_items
from tests.helpers.stack import lvlm_settings, start_lvlm


async def test_score_through_the_real_generate_path() -> None:
    lvlm = await start_lvlm(lvlm_settings(batch_size=4, max_tokens=8))
    try:
        async with open_channel(lvlm.address) as channel:
            stub = lvlm_pb2_grpc.LvlmServiceStub(channel)
            info = await stub.GetModelInfo(common_pb2.GetModelInfoRequest())
            response = await stub.Score(lvlm_pb2.ScoreRequest(items=segment_items(["running", "bicycle"])))
    finally:
        await lvlm.shutdown(1.0)
    assert (info.backend, info.random_weights, info.device) == ("transformers", True, "cpu")
    pairs = [s for item in response.items for s in item.scores]
    assert len(pairs) == 6
    for pair in pairs:
        assert pair.attempts in (1, 2)
        assert 0.0 <= pair.score <= 1.0
        assert pair.parsed or pair.error  # never silently 0
    retries = sum(p.attempts - 1 for p in pairs)
    assert response.usage.calls == 6 + retries == response.usage.images
    assert response.usage.prompt_tokens > 6 * 50  # prompt text plus image tokens
    # A cut answer (at 8 tokens) is asked again with twice the tokens.
    assert 0 < response.usage.completion_tokens <= 6 * 8 + retries * 16


async def test_batches_preserve_order_and_respect_max_tokens() -> None:
    backend = TransformersBackend("unused", tiny=True, batch_size=2)
    await backend.start()
    try:
        prompts = [Prompt(IMAGE, build_prompt(t, Kind.FRAME), max_tokens=5) for t in ("a", "bb", "ccc", "dddd", "e")]
        batched = await backend.complete(prompts)
        single = [(await backend.complete([p]))[0] for p in prompts]
    finally:
        await backend.close()
    assert len(batched) == 5
    assert all(c.completion_tokens <= 5 for c in batched)
    # Greedy decoding: the same answer whether a prompt runs alone or in a padded batch.
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.prompt_tokens for c in batched] == [c.prompt_tokens for c in single]


async def test_a_missing_local_model_fails_with_one_actionable_message(tmp_path: Path) -> None:
    backend = TransformersBackend("Qwen/Qwen2-VL-2B-Instruct", offline=True, cache_dir=str(tmp_path))
    with pytest.raises(ModelLoadError, match="ANYANOMALY_LVLM_MODEL") as caught:
        await backend.start()
    assert "--models tiny" in str(caught.value) and "--backend openai" in str(caught.value)
    await backend.close()


async def test_fast_mode_uses_the_models_real_log_probabilities() -> None:
    lvlm = await start_lvlm(lvlm_settings(max_tokens=16))
    try:
        async with open_channel(lvlm.address) as channel:
            response = await lvlm_pb2_grpc.LvlmServiceStub(channel).Score(lvlm_pb2.ScoreRequest(
                items=segment_items(["running", "bicycle"]),
                options=lvlm_pb2.ScoreOptions(mode=lvlm_pb2.SCORE_MODE_FAST),
            ))
    finally:
        await lvlm.shutdown(1.0)
    pairs = [s for item in response.items for s in item.scores]
    assert all(p.parsed and 0.0 <= p.score <= 1.0 and p.reason == "" for p in pairs)
    assert len({round(p.score, 6) for p in pairs}) > 1  # expected values, not a constant fallback
    assert response.usage.calls == 6 and response.usage.completion_tokens <= 6 * 4


async def test_fast_scores_are_the_expected_value_over_numeric_tokens() -> None:
    """Recompute the first answer position's distribution straight from the model's logits."""
    import torch

    from services.lvlm_service.logprob_score import expected_score

    backend = TransformersBackend("unused", tiny=True)
    await backend.start()
    try:
        prompt = Prompt(IMAGE, build_prompt("bicycle", Kind.FRAME), max_tokens=4, top_logprobs=5)
        (completion,) = await backend.complete([prompt])
        model, processor = backend._model, backend._processor
        inputs = processor.apply_chat_template(
            [backend._conversation(prompt)], add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs).logits[0, -1]
    finally:
        await backend.close()
    probabilities = torch.softmax(logits.float(), dim=-1)
    first = dict(completion.top_logprobs[0])
    for token_id in backend._numeric_token_ids():
        token = processor.tokenizer.decode([token_id])
        assert first[token] == pytest.approx(float(torch.log(probabilities[token_id])), abs=1e-4)
    assert expected_score(completion.tokens, completion.top_logprobs) is not None


async def test_multi_text_with_a_model_that_cannot_answer_json_reports_every_text() -> None:
    lvlm = await start_lvlm(lvlm_settings(max_tokens=8))
    try:
        async with open_channel(lvlm.address) as channel:
            response = await lvlm_pb2_grpc.LvlmServiceStub(channel).Score(lvlm_pb2.ScoreRequest(
                items=[lvlm_pb2.ScoreItem(image=common_pb2.Image(data=IMAGE), kind=kind, texts=["running", "car"])
                       for kind in (lvlm_pb2.CONTEXT_KIND_FRAME, lvlm_pb2.CONTEXT_KIND_TEMPORAL)],
                options=lvlm_pb2.ScoreOptions(multi_text=True),
            ))
    finally:
        await lvlm.shutdown(1.0)
    assert response.usage.calls == 2 + response.usage.retries == 4  # one call per image, each retried once
    for item in response.items:
        assert [s.text for s in item.scores] == ["running", "car"]
        for pair in item.scores:  # random weights: no JSON, so every text is a reported failure
            assert not pair.parsed and "JSON object keyed by text" in pair.error and pair.attempts == 2
    assert response.usage.failures == 4


async def test_the_tiny_model_answers_briefly_about_small_images() -> None:
    """A smoke run must take minutes: the tiny model's preset bounds its answers to a few tokens
    and its images to 224x224 pixels, and lvlm_service says so."""
    lvlm = await start_lvlm(lvlm_settings())
    try:
        async with open_channel(lvlm.address) as channel:
            stub = lvlm_pb2_grpc.LvlmServiceStub(channel)
            info = await stub.GetModelInfo(common_pb2.GetModelInfoRequest())
            response = await stub.Score(lvlm_pb2.ScoreRequest(items=segment_items(["running"])))
    finally:
        await lvlm.shutdown(1.0)
    assert (info.max_tokens, info.max_image_pixels) == (8, 224 * 224)
    usage = response.usage
    first_calls = usage.calls - usage.retries
    assert usage.completion_tokens <= 8 * first_calls + 16 * usage.retries  # a cut answer is retried with twice
