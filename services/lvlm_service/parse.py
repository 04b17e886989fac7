"""Reading a score (and a reason) from the model's answer.

- `parse_first_number`: the reference (`utils.extract_score`): the first number anywhere,
  no clamping, 0.0 when there is none. "1. **Score**: 0.9" gives 1.0, ".5" gives 5.0.
- `parse_robust` (default): an explicit score field wins (JSON `"score"`, or `Score: x`),
  list numbering is skipped, percentages and x/10 are converted, the value is clamped to
  [0, 1], and an answer without a score is reported as a failure instead of scoring 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

REFERENCE_NUMBER = re.compile(r"(\d+(\.\d+)?)")

_NUMBER = r"-?(?:\d+(?:\.\d+)?|\.\d+)"
_SCALE = r"(?:\s*(%|/\s*100\b|/\s*10\b))?"
SCORE_FIELD = re.compile(rf"score\**\s*(?:is|of|[:=])?\s*\**\s*({_NUMBER}){_SCALE}", re.IGNORECASE)
ANY_NUMBER = re.compile(rf"(?<![\w.])({_NUMBER}){_SCALE}")
LIST_MARKER = re.compile(r"^\s*\d+\.\s", re.MULTILINE)
JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
REASON_FIELD = re.compile(r"reason[\"*]*\s*[:=]\s*[\"*]*\s*(.+)", re.IGNORECASE | re.DOTALL)
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Parsed:
    score: float
    reason: str
    parsed: bool
    error: str = ""


def parse_first_number(answer: str) -> Parsed:
    match = REFERENCE_NUMBER.search(answer)
    if match is None:
        return Parsed(0.0, answer.strip(), False, "no number in the answer (scored 0.0, as the reference does)")
    return Parsed(float(match.group(1)), answer.strip(), True)


def _scaled(number: str, scale: str | None) -> float:
    value = float(number)
    if scale:
        value /= 100.0 if ("%" in scale or "100" in scale) else 10.0
    return min(1.0, max(0.0, value))


def _clean_reason(text: str) -> str:
    text = re.sub(r"(?m)^\s*\d+\.(?:\s|$)", " ", text)  # list numbering
    text = re.sub(r"[*`#]+", "", text)  # markdown emphasis (underscores stay: hand_truck)
    text = text.strip().rstrip("}").strip().rstrip('"').strip()  # the end of a JSON answer
    text = re.sub(r"^\W*(?:reason\s*[:=-]?)?\s*", "", text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    return text[:MAX_REASON_CHARS]


def _from_json(answer: str) -> Parsed | None:
    for candidate in JSON_OBJECT.findall(answer):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("score"), int | float) and not isinstance(
            data.get("score"), bool
        ):
            reason = data.get("reason")
            return Parsed(_scaled(str(data["score"]), None), _clean_reason(str(reason or "")), True)
    return None


def _first_plausible_number(answer: str) -> re.Match[str] | None:
    """Without a score field: the first number in [0, 1] (after % or /10), skipping list
    numbering ("1. ..."); failing that, the first number at all (then clamped)."""
    without_markers = LIST_MARKER.sub(lambda m: " " * len(m.group(0)), answer)
    matches = list(ANY_NUMBER.finditer(without_markers))
    for match in matches:
        value = float(match.group(1))
        if match.group(2):
            value /= 100.0 if ("%" in match.group(2) or "100" in match.group(2)) else 10.0
        if 0.0 <= value <= 1.0:
            return match
    return matches[0] if matches else None


def parse_robust(answer: str) -> Parsed:
    if not answer.strip():
        return Parsed(0.0, "", False, "the model returned an empty answer")
    from_json = _from_json(answer)
    if from_json is not None:
        return from_json
    match = SCORE_FIELD.search(answer) or _first_plausible_number(answer)
    if match is None:
        return Parsed(0.0, _clean_reason(answer), False, "no score in the answer")
    score = _scaled(match.group(1), match.group(2))
    reason_match = REASON_FIELD.search(answer)
    rest = (answer[: match.start()] + " " + answer[match.end() :]).strip()
    reason = reason_match.group(1) if reason_match else rest
    return Parsed(score, _clean_reason(reason), True)
