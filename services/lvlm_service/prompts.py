"""The VQA prompts P (key frame, position context) and P* (temporal context), METHOD.md
section 6: the reference's prompt type 3 ("reasoning + consideration")."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    FRAME = "frame"
    POSITION = "position"
    TEMPORAL = "temporal"


@dataclass(frozen=True)
class PromptStyle:
    output_label: str = "Output"  # "Response" for ShT and "Output" for Avenue in the reference
    # The reference's Chat-UniVi/MiniCPM P* lacks the space after the Task bullet's first
    # sentence ("...0 to 1.A score..."); only parity reproduces it.
    reproduce_tc_typo: bool = False


RETRY_SUFFIX = (
    "\nAnswer with the score first, as a number between 0 and 1 with one decimal place, then the reason."
)


def _task(text: str, joiner: str) -> str:
    return (
        f"- **Task**: Evaluate whether the given image includes **{text}** on a scale from 0 to 1."
        f"{joiner}A score of 1 means **{text}** is clearly present in the image, while a score of 0 means "
        f"**{text}** is not present at all. For intermediate cases, assign a value between 0 and 1 based on "
        f"the degree to which **{text}** is visible."
    )


def _context() -> str:
    return (
        "- **Context**: The given image represents a sequence (row 1 column 1 → row 1 column 2 → "
        "row 2 column 1 -> row 2 column 2) illustrating temporal progression."
    )


def _consideration(text: str) -> str:
    return (
        f"- **Consideration**: The key is whether **{text}** is present in the image, not its focus. Thus, if "
        f"**{text}** is present, even if it is not the main focus, assign a higher score like 1.0."
    )


def _output(label: str) -> str:
    return (
        f"- **{label}**: Provide the score as a float, rounded to one decimal place, including a brief reason "
        "for the score in **one short sentence**."
    )


def build_prompt(text: str, kind: Kind, style: PromptStyle = PromptStyle()) -> str:
    """P for the key frame and the position context; P* (with the Context bullet after
    Task) for the temporal-context grid. The text is inserted verbatim, in bold."""
    if kind is Kind.TEMPORAL:
        joiner = "" if style.reproduce_tc_typo else " "
        bullets = [_task(text, joiner), _context(), _consideration(text), _output(style.output_label)]
    else:
        bullets = [_task(text, " "), _consideration(text), _output(style.output_label)]
    return "\n".join(bullets)
