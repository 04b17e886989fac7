"""The VQA prompts P (key frame, position context) and P* (temporal context), METHOD.md
section 6: the reference's prompt type 3 ("reasoning + consideration"), and the variants
the scoring modes need (JSON answers, score only, reason first, several texts at once)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Kind(Enum):
    FRAME = "frame"
    POSITION = "position"
    TEMPORAL = "temporal"


class Mode(Enum):
    STANDARD = "standard"  # the score, then a one-sentence reason
    FAST = "fast"  # the score only, read from token log-probabilities
    REASON_FIRST = "reason_first"  # the reason, then the score


@dataclass(frozen=True)
class PromptStyle:
    output_label: str = "Output"  # "Response" for ShT and "Output" for Avenue in the reference
    # The reference's Chat-UniVi/MiniCPM P* lacks the space after the Task bullet's first
    # sentence ("...0 to 1.A score..."); only parity reproduces it.
    reproduce_tc_typo: bool = False
    mode: Mode = Mode.STANDARD
    json: bool = False  # ask for a JSON object (engines constrain it with the schema below)


RETRY_SUFFIX = (
    "\nAnswer with the score first, as a number between 0 and 1 with one decimal place, then the reason."
)


def _bold_list(texts: Sequence[str]) -> str:
    return ", ".join(f"**{t}**" for t in texts)


def _task(texts: Sequence[str], joiner: str) -> str:
    if len(texts) == 1:
        text = texts[0]
        return (
            f"- **Task**: Evaluate whether the given image includes **{text}** on a scale from 0 to 1."
            f"{joiner}A score of 1 means **{text}** is clearly present in the image, while a score of 0 means "
            f"**{text}** is not present at all. For intermediate cases, assign a value between 0 and 1 based on "
            f"the degree to which **{text}** is visible."
        )
    return (
        f"- **Task**: For each of {_bold_list(texts)}, evaluate whether the given image includes it on a scale "
        f"from 0 to 1.{joiner}A score of 1 means it is clearly present in the image, while a score of 0 means it "
        "is not present at all. For intermediate cases, assign a value between 0 and 1 based on the degree to "
        "which it is visible."
    )


def _context() -> str:
    return (
        "- **Context**: The given image represents a sequence (row 1 column 1 → row 1 column 2 → "
        "row 2 column 1 -> row 2 column 2) illustrating temporal progression."
    )


def _consideration(texts: Sequence[str]) -> str:
    if len(texts) == 1:
        text = texts[0]
        return (
            f"- **Consideration**: The key is whether **{text}** is present in the image, not its focus. Thus, if "
            f"**{text}** is present, even if it is not the main focus, assign a higher score like 1.0."
        )
    return (
        "- **Consideration**: The key is whether each of them is present in the image, not its focus. Thus, if "
        "one is present, even if it is not the main focus, assign it a higher score like 1.0."
    )


def _output(texts: Sequence[str], style: PromptStyle) -> str:
    label = f"- **{style.output_label}**: "
    if style.mode is Mode.FAST:
        return label + ("Provide the score as a float, rounded to one decimal place, without any additional "
                        "text or explanation.")
    if len(texts) > 1:
        example = ", ".join(f'"{t}": {{"score": <score>, "reason": "<reason>"}}' for t in texts)
        return label + ("For each of them, provide the score as a float, rounded to one decimal place, with a "
                        "brief reason in **one short sentence**, as a JSON object keyed by name: {" + example + "}.")
    if style.mode is Mode.REASON_FIRST:
        if style.json:
            return label + ('First give a brief reason in **one short sentence**, then the score as a float, '
                            'rounded to one decimal place, as JSON: {"reason": "<reason>", "score": <score>}.')
        return label + ("First give a brief reason in **one short sentence**, then the score as a float, rounded "
                        "to one decimal place, as 'Reason: ... Score: ...'.")
    if style.json:
        return label + ("Provide the score as a float, rounded to one decimal place, including a brief reason for "
                        'the score in **one short sentence**, as JSON: {"score": <score>, "reason": "<reason>"}.')
    return label + ("Provide the score as a float, rounded to one decimal place, including a brief reason for the "
                    "score in **one short sentence**.")


def build_prompt(text: str | Sequence[str], kind: Kind, style: PromptStyle = PromptStyle()) -> str:
    """P for the key frame and the position context; P* (with the Context bullet after
    Task) for the temporal-context grid. Texts are inserted verbatim, in bold. Several texts
    make one prompt that asks for a JSON object keyed by text."""
    texts = [text] if isinstance(text, str) else list(text)
    joiner = "" if kind is Kind.TEMPORAL and style.reproduce_tc_typo else " "
    bullets = [_task(texts, joiner)]
    if kind is Kind.TEMPORAL:
        bullets.append(_context())
    bullets += [_consideration(texts), _output(texts, style)]
    return "\n".join(bullets)


def score_schema(reason_first: bool = False) -> dict[str, Any]:
    """JSON schema of one answer: {"score": number in [0, 1], "reason": string}. The property
    order is the generation order under constrained decoding."""
    score = {"type": "number", "minimum": 0, "maximum": 1}
    reason = {"type": "string", "maxLength": 300}
    properties = {"reason": reason, "score": score} if reason_first else {"score": score, "reason": reason}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def multi_text_schema(texts: Sequence[str]) -> dict[str, Any]:
    """One answer object per text, keyed by the text."""
    return {"type": "object", "properties": {t: score_schema() for t in texts}, "required": list(texts),
            "additionalProperties": False}
