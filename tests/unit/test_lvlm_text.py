"""Prompts P / P* and both score parsers (METHOD.md sections 6 and 13)."""

from __future__ import annotations

import pytest

from services.lvlm_service.parse import parse_first_number, parse_robust
from services.lvlm_service.prompts import RETRY_SUFFIX, Kind, PromptStyle, build_prompt


def test_prompt_p_has_task_consideration_output_with_the_text_in_bold() -> None:
    prompt = build_prompt("hand_truck", Kind.FRAME)
    lines = prompt.split("\n")
    assert [line.split("**: ")[0] for line in lines] == ["- **Task", "- **Consideration", "- **Output"]
    assert prompt.count("**hand_truck**") == 6  # bold every time, underscores kept
    assert "rounded to one decimal place" in lines[2] and "**one short sentence**" in lines[2]
    assert build_prompt("x", Kind.POSITION) == build_prompt("x", Kind.FRAME)


def test_prompt_p_star_inserts_the_context_bullet_after_task() -> None:
    lines = build_prompt("running", Kind.TEMPORAL).split("\n")
    assert [line.split("**: ")[0] for line in lines] == ["- **Task", "- **Context", "- **Consideration", "- **Output"]
    assert "row 1 column 1 → row 1 column 2 → row 2 column 1 -> row 2 column 2" in lines[1]
    assert "0 to 1. A score" in lines[0]


def test_parity_style_uses_the_dataset_label_and_the_tc_typo() -> None:
    style = PromptStyle(output_label="Response", reproduce_tc_typo=True)
    assert build_prompt("running", Kind.FRAME, style).split("\n")[-1].startswith("- **Response**:")
    assert "0 to 1.A score" in build_prompt("running", Kind.TEMPORAL, style)
    assert "0 to 1. A score" in build_prompt("running", Kind.FRAME, style)  # only P* has the typo


def test_retry_suffix_asks_for_the_score_first() -> None:
    assert "score first" in RETRY_SUFFIX


# (answer, reference parser, robust parser); None = a reported parse failure.
CASES = [
    ("0.8", 0.8, 0.8),
    ("Score: 1.0. The person is clearly riding a bicycle.", 1.0, 1.0),
    ("1. **Score**: 0.9\n2. **Reason**: a cyclist crosses.", 1.0, 0.9),
    (".5", 5.0, 0.5),
    ("no number here", 0.0, None),
    ("10%", 10.0, 0.1),
    ("-0.2", 0.2, 0.0),
    ('{"score": 0.3, "reason": "a stroller, not a bicycle"}', 0.3, 0.3),
    ("There are 4 people walking; 0.2 since nobody runs.", 4.0, 0.2),
    ("7/10 - someone might be jumping", 7.0, 0.7),
]


@pytest.mark.parametrize(("answer", "reference", "robust"), CASES)
def test_parsers(answer: str, reference: float, robust: float | None) -> None:
    first = parse_first_number(answer)
    assert first.score == pytest.approx(reference)
    assert first.parsed == (reference != 0.0 or "0" in answer)
    parsed = parse_robust(answer)
    if robust is None:
        assert not parsed.parsed and parsed.score == 0.0 and parsed.error
    else:
        assert parsed.parsed and parsed.score == pytest.approx(robust)
        assert 0.0 <= parsed.score <= 1.0


def test_robust_parser_extracts_the_reason() -> None:
    assert parse_robust('{"score": 0.3, "reason": "a stroller"}').reason == "a stroller"
    assert parse_robust("Score: 0.9. Reason: a cyclist crosses the plaza.").reason == "a cyclist crosses the plaza."
    assert parse_robust("0.7 - a man is running").reason == "a man is running"
    assert not parse_robust("   ").parsed
