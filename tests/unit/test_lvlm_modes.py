"""Fast-mode scoring from log-probabilities, the prompt and schema variants, the vLLM engine
mapping (without vLLM installed) and the model presets."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from services.common.errors import ModelLoadError
from services.lvlm_service.backends.base import Prompt
from services.lvlm_service.backends.vllm_engine import VllmEngineBackend, completion_from_output, sampling_settings
from services.lvlm_service.logprob_score import expected_score
from services.lvlm_service.presets import PRESETS
from services.lvlm_service.prompts import Kind, Mode, PromptStyle, build_prompt, multi_text_schema, score_schema
from tests.helpers.fixtures import REPO_ROOT


def test_expected_score_over_digit_tokens() -> None:
    top = [[("0", math.log(0.6)), ("1", math.log(0.2)), ("The", math.log(0.2))], [(".", 0.0)],
           [("8", math.log(0.5)), ("2", math.log(0.5))]]
    # "0.d" with E[d] = 5 (a 50/50 mix of 8 and 2), or "1"; "The" is not a score and is ignored.
    assert expected_score(["0", ".", "8"], top) == pytest.approx((0.6 * 0.5 + 0.2 * 1.0) / 0.8)


def test_a_certain_zero_is_zero_not_an_unknown_decimal() -> None:
    certain = [[("0", 0.0)], [(".", 0.0)], [("0", 0.0)]]
    assert expected_score(["0", ".", "0"], certain) == 0.0
    assert expected_score(["0.", "0"], [[("0.", 0.0)], [("0", 0.0)]]) == 0.0


def test_expected_score_with_whole_number_tokens_and_late_starts() -> None:
    assert expected_score(["0.7"], [[("0.7", math.log(0.5)), ("0.3", math.log(0.5))]]) == pytest.approx(0.5)
    assert expected_score(["Score", ":", " 1"], [[("Score", 0.0)], [(":", 0.0)], [(" 1", 0.0)]]) == 1.0
    # The greedy path went through "1", so the decimal of "0" is unknown: 0.5.
    assert expected_score(["1"], [[("1", math.log(0.5)), ("0", math.log(0.5))]]) == pytest.approx(0.75)
    assert expected_score(["The"], [[("The", 0.0), ("A", -1.0)]]) is None


def test_prompt_variants() -> None:
    multi = build_prompt(["running", "hand_truck"], Kind.TEMPORAL, PromptStyle(json=True))
    assert "For each of **running**, **hand_truck**" in multi and "**Context**" in multi
    assert '"hand_truck": {"score": <score>, "reason": "<reason>"}' in multi
    fast = build_prompt("car", Kind.FRAME, PromptStyle(mode=Mode.FAST))
    assert fast.endswith("without any additional text or explanation.")
    first = build_prompt("car", Kind.FRAME, PromptStyle(mode=Mode.REASON_FIRST, json=True))
    assert '{"reason": "<reason>", "score": <score>}' in first
    assert score_schema()["required"] == ["score", "reason"]
    assert score_schema()["properties"]["score"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert multi_text_schema(["a", "b"])["properties"]["b"] == score_schema()


def test_vllm_engine_mapping_without_vllm() -> None:
    prompt = Prompt(b"", "t", 4, score_schema(), top_logprobs=20)
    assert sampling_settings(prompt) == {"temperature": 0.0, "max_tokens": 4, "logprobs": 20,
                                         "json_schema": score_schema()}
    logprob = SimpleNamespace
    output = SimpleNamespace(
        prompt_token_ids=[1, 2, 3],
        outputs=[SimpleNamespace(text="0.7", token_ids=[10, 11], finish_reason="length", logprobs=[
            {10: logprob(logprob=-0.1, decoded_token="0"), 12: logprob(logprob=-2.0, decoded_token="1")},
            {11: logprob(logprob=0.0, decoded_token=".")},
        ])],
    )
    completion = completion_from_output(output)
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == ("0.7", 3, 2)
    assert completion.finish_reason == "length" and completion.tokens == ["0", "."]
    assert completion.top_logprobs[0] == [("0", -0.1), ("1", -2.0)]


async def test_vllm_engine_says_how_to_install_it() -> None:
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ModelLoadError, match=r"pip install \.\[vllm\]"):
            await VllmEngineBackend("Qwen/Qwen2.5-VL-7B-Instruct").start()
    else:
        pytest.skip("vLLM is installed here; the GPU path is not exercised in tests")


def test_the_readme_gives_each_presets_exact_vllm_serve_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert set(PRESETS) == {"Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct", "openbmb/MiniCPM-V-2_6"}
    for preset in PRESETS.values():
        assert preset.serve_command() in readme, preset.model
    assert "--trust-remote-code" in PRESETS["openbmb/MiniCPM-V-2_6"].serve_command()
