"""Detect with the LVLM behind FakeOpenAIServer (an OpenAI-compatible stand-in for `vllm
serve`): LVLM calls per segment in each mode, the CLIP gate, reasons on demand."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from anyanomaly.v1 import lvlm_pb2, orchestrator_pb2

from tests.helpers.detect import detect, frame_folder, split
from tests.helpers.fake_openai_server import FakeOpenAIServer, Reply, prompt_text
from tests.helpers.stack import Stack, lvlm_settings, start_stack

TEXTS = ["cart", "bicycle"]


def answer(request: dict[str, Any]) -> Reply:
    text = prompt_text(request)
    if "without any additional text" in text:  # fast mode: the number, with log-probabilities
        return Reply("0.9", logprobs=[("0", [("0", -2.0), ("1", -0.2)]), (".", [(".", 0.0)]), ("9", [("9", 0.0)])])
    schema = (request.get("structured_outputs") or {}).get("json", {})
    if len(schema.get("required", [])) > 2:
        return Reply(json.dumps({t: {"score": 0.4, "reason": f"{t} maybe"} for t in schema["required"]}))
    return Reply('{"score": 0.6, "reason": "a reason from the standard prompt"}')


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[Stack, FakeOpenAIServer]]:
    with FakeOpenAIServer(answer=answer) as fake:
        stack = await start_stack(lvlm_settings(backend="openai", openai_url=fake.url, openai_model=fake.model,
                                                retry_backoff_seconds=0.01))
        yield stack, fake
        await stack.shutdown()


async def run(stack: Stack, folder: Path, texts: list[str], **options: Any) -> tuple[
    list[orchestrator_pb2.SegmentResult], orchestrator_pb2.Summary
]:
    _, segments, summary = split(await detect(stack.orchestrator.address,
                                              orchestrator_pb2.VideoSource(frame_folder=str(folder)), texts, **options))
    return segments, summary


async def test_calls_per_segment_3k_by_default_and_3_with_multi_text(
    served: tuple[Stack, FakeOpenAIServer], tmp_path: Path
) -> None:
    stack, fake = served
    folder = frame_folder(tmp_path, 48)  # two segments
    texts = ["cart", "bicycle", "skateboard"]
    segments, summary = await run(stack, folder, texts)
    assert [s.lvlm_usage.calls for s in segments] == [9, 9]  # 3 images x 3 texts
    assert summary.lvlm_usage.calls == 18 == len(fake.requests)
    fake.requests.clear()
    segments, summary = await run(stack, folder, texts, multi_text=True)
    assert [s.lvlm_usage.calls for s in segments] == [3, 3]
    assert len(fake.requests) == 6 and fake.problems == []
    for segment in segments:
        assert [round(t.frame.score, 2) for t in segment.scores] == [0.4, 0.4, 0.4]
        assert len({tuple(t.key_frames) for t in segment.scores}) == 1  # one shared set of key frames
        assert segment.scores[1].temporal.reason == "bicycle maybe"


async def test_the_clip_gate_skips_the_lvlm(served: tuple[Stack, FakeOpenAIServer], tmp_path: Path) -> None:
    stack, fake = served
    folder = frame_folder(tmp_path, 48)
    segments, summary = await run(stack, folder, TEXTS, gate_threshold=1.01)  # above any cosine
    assert all(s.gated and s.score == 0 and s.lvlm_usage.calls == 0 for s in segments)
    assert (summary.gated_segments, summary.segments, len(fake.requests)) == (2, 2, 0)
    assert all(-1 <= s.best_similarity <= 1 for s in segments)
    segments, summary = await run(stack, folder, TEXTS, gate_threshold=-1.01)  # below any cosine
    assert summary.gated_segments == 0 and len(fake.requests) == 12


async def test_fast_mode_fetches_reasons_only_above_the_threshold(
    served: tuple[Stack, FakeOpenAIServer], tmp_path: Path
) -> None:
    stack, fake = served
    folder = frame_folder(tmp_path, 24)
    fast = orchestrator_pb2.DetectOptions().scoring
    fast.mode = lvlm_pb2.SCORE_MODE_FAST
    segments, _ = await run(stack, folder, TEXTS, scoring=fast)
    assert segments[0].lvlm_usage.calls == 6 and all(t.frame.reason == "" for t in segments[0].scores)
    p0, p1 = math.exp(-2.0), math.exp(-0.2)  # "0" then ".9", or "1"
    assert segments[0].scores[0].frame.score == pytest.approx((p0 * 0.9 + p1 * 1.0) / (p0 + p1), rel=1e-5)
    fake.requests.clear()
    segments, _ = await run(stack, folder, TEXTS, scoring=fast, reason_threshold=0.5)
    assert segments[0].lvlm_usage.calls == 6 + 2  # one standard call per text above the threshold
    assert all(t.frame.reason == "a reason from the standard prompt" for t in segments[0].scores)
    segments, _ = await run(stack, folder, TEXTS, scoring=fast, reason_threshold=1.0)
    assert segments[0].lvlm_usage.calls == 6
