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
from tests.conftest import lvlm_settings, start_lvlm
from tests.integration.test_lvlm_openai import IMAGE, segment_items


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
    assert 0 < response.usage.completion_tokens <= response.usage.calls * 8


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
