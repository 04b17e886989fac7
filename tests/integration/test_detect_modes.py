"""Detect with the LVLM behind FakeOpenAIServer (an OpenAI-compatible stand-in for `vllm
serve`): LVLM calls per segment in each mode, the CLIP gate, reasons on demand."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest_asyncio

from anyanomaly.v1 import lvlm_pb2, orchestrator_pb2
from tests.conftest import Scripted
from tests.helpers import expected
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


async def test_the_clip_gate_skips_the_lvlm_for_segments_below_it(scripted: Scripted, tmp_path: Path) -> None:
    folder = frame_folder(tmp_path, 96)  # four segments
    ungated, _ = await run(scripted.stack, folder, TEXTS, sigma=0.0)
    similarities = sorted(s.best_similarity for s in ungated)
    assert similarities[0] < similarities[-1]
    threshold = (similarities[1] + similarities[2]) / 2  # gates the two least similar segments
    scripted.lvlm.answers.clear()
    results, summary = await run(scripted.stack, folder, TEXTS, sigma=0.0, gate_threshold=threshold)
    gated = [s.best_similarity < threshold for s in results]
    assert gated.count(True) == 2 and [s.gated for s in results] == gated
    for result, skipped in zip(results, gated, strict=True):
        if skipped:
            assert result.score == 0 and result.lvlm_usage.calls == 0
            assert all(t.fused == 0 for t in result.scores)
        else:
            assert result.lvlm_usage.calls == 3 * len(TEXTS)
    segments = expected.segments_of(results)
    assert expected.answered(segments) == scripted.lvlm.counts()  # no LVLM call for a gated segment
    scores = expected.check_segments(segments, (0.6, 0.3, 0.1), "fuse_then_max")
    assert expected.distinct(scores) >= 2
    np.testing.assert_allclose(summary.frame_scores, expected.frame_scores(segments, scores, 96, 0), atol=1e-6)
    assert (summary.gated_segments, summary.segments) == (2, 4)
    assert summary.lvlm_usage.calls == 2 * 3 * len(TEXTS) == len(scripted.lvlm.answers)


async def test_fast_mode_fetches_reasons_only_for_texts_at_or_above_the_threshold(
    scripted: Scripted, tmp_path: Path
) -> None:
    folder = frame_folder(tmp_path, 72)
    fast = lvlm_pb2.SCORE_MODE_FAST
    results, _ = await run(scripted.stack, folder, TEXTS, scoring_mode=fast)
    segments = expected.segments_of(results)
    assert expected.answered(segments) == scripted.lvlm.counts()  # the scores read from log-probabilities
    assert all(t.frame.reason == "" for s in results for t in s.scores)
    fused = sorted(t.fused for s in results for t in s.scores)
    assert fused[0] < fused[-1]
    threshold = fused[len(fused) // 2]  # half the texts reach it
    # An older client's nested options mean the same (DetectOptions.scoring before `advanced`).
    results, _ = await run(scripted.stack, folder, TEXTS, scoring=lvlm_pb2.ScoreOptions(mode=fast),
                           reason_threshold=threshold)
    for result in results:
        wanted = [t for t in result.scores if t.fused >= threshold]
        assert result.lvlm_usage.calls == 3 * len(TEXTS) + len(wanted)  # one standard call per text reaching it
        for text in result.scores:
            assert (text.frame.reason != "") == (text.fused >= threshold)
            if text.frame.reason:
                assert text.frame.reason.startswith(f"{text.text}: scripted")
    assert 0 < sum(t.fused >= threshold for s in results for t in s.scores) < len(fused)


async def test_the_cascade_scores_fully_only_the_texts_its_screening_lets_through(
    scripted: Scripted, tmp_path: Path
) -> None:
    folder = frame_folder(tmp_path, 96)  # four segments
    texts = ["cart", "bicycle", "skateboard"]
    # The screening call is the fast mode's key-frame call: a fast run gives every screening score.
    fast, _ = await run(scripted.stack, folder, texts, scoring_mode=lvlm_pb2.SCORE_MODE_FAST, sigma=0.0)
    screening = [{t.text: t.frame.score for t in segment.scores} for segment in fast]
    values = sorted(score for segment in screening for score in segment.values())
    threshold = values[len(values) // 2]
    assert values[0] < threshold  # some texts are screened out, some pass
    plain, _ = await run(scripted.stack, folder, texts, sigma=0.0)
    scripted.lvlm.answers.clear()
    cascaded, summary = await run(scripted.stack, folder, texts, sigma=0.0, cascade_threshold=threshold)
    out = 0
    for result, alone, screened in zip(cascaded, plain, screening, strict=True):
        passing = [t for t in texts if screened[t] >= threshold]
        assert result.lvlm_usage.calls == len(texts) + 3 * len(passing)  # one screening call each, then 3
        for text, full in zip(result.scores, alone.scores, strict=True):
            assert text.screened_out == (text.text not in passing)
            if text.screened_out:
                out += 1
                score = screened[text.text]
                assert text.frame.score == text.position.score == text.temporal.score == score
                assert text.fused == np.float32(score) and text.frame.reason == ""
            else:  # what the detection without the cascade gave
                assert (text.frame, text.position, text.temporal, text.fused) == (
                    full.frame, full.position, full.temporal, full.fused)
        assert result.max_fused == max(t.fused for t in result.scores)
    assert summary.screened_out == out and 0 < out < len(texts) * len(cascaded)
    assert summary.lvlm_usage.calls == len(scripted.lvlm.answers) == len(texts) * 4 + 3 * (len(texts) * 4 - out)
    # In the fast mode the screening call is the key-frame call: passing texts need two more, and
    # score what the fast mode without the cascade scores.
    quick, _ = await run(scripted.stack, folder, texts, sigma=0.0, scoring_mode=lvlm_pb2.SCORE_MODE_FAST,
                         cascade_threshold=threshold)
    for result, alone, screened in zip(quick, fast, screening, strict=True):
        passing = [t for t in texts if screened[t] >= threshold]
        assert result.lvlm_usage.calls == len(texts) + 2 * len(passing)
        for text, full in zip(result.scores, alone.scores, strict=True):
            assert text.screened_out == (text.text not in passing)
            if not text.screened_out:
                assert (text.frame, text.position, text.temporal) == (full.frame, full.position, full.temporal)
