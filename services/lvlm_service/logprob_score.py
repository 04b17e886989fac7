"""Fast mode: the score as an expected value read from token log-probabilities.

The model is asked for the score only ("0.7"), so its first answer tokens are the number.
At the first position that offers numeric candidates, each candidate contributes its
probability times its value: "1" (or "1.0") is 1.0, a complete "0.7" is 0.7, and "0" / "0."
take the expected first decimal from the position where the decimal digit is generated
(0.5 when the greedy path never reached it). Probabilities are renormalised over the
numeric candidates, so the result lies in [0, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

Candidates = Sequence[tuple[str, float]]  # (token text, log-probability) at one position

_COMPLETE = re.compile(r"^(?:0?\.\d+|0\.\d+|1(?:\.0*)?|0|0\.)$")
UNKNOWN_DECIMAL = 0.5
MAX_POSITIONS = 4  # the number must start within the first few answer tokens


def _numeric(token: str) -> str | None:
    text = token.strip().strip('"')
    return text if text and _COMPLETE.match(text) else None


def _decimal_expectation(candidates: Candidates) -> float | None:
    """E[d / 10] over the single-digit candidates at the decimal position."""
    weights = [(int(t.strip()), math.exp(lp)) for t, lp in candidates if t.strip().isdigit() and len(t.strip()) == 1]
    total = sum(w for _, w in weights)
    return sum(d * w for d, w in weights) / 10 / total if total > 0 else None


def _decimal_after(tokens: Sequence[str], positions: Sequence[Candidates], index: int) -> float:
    """The expected decimal of "0.d" when the greedy path went through "0" at `index`."""
    chosen = tokens[index].strip() if index < len(tokens) else ""
    expectation = None
    if chosen == "0." and index + 1 < len(positions):
        expectation = _decimal_expectation(positions[index + 1])
    elif chosen == "0" and index + 2 < len(positions) and tokens[index + 1].strip() == ".":
        expectation = _decimal_expectation(positions[index + 2])
    return UNKNOWN_DECIMAL if expectation is None else expectation  # "0.0" is 0, not unknown


def expected_score(tokens: Sequence[str], positions: Sequence[Candidates]) -> float | None:
    """E[score] in [0, 1] from the generated `tokens` and each position's candidates, or None
    when no numeric candidate appears in the first positions."""
    for index, candidates in enumerate(positions[:MAX_POSITIONS]):
        numeric = [(value, math.exp(lp)) for token, lp in candidates if (value := _numeric(token)) is not None]
        total = sum(p for _, p in numeric)
        if total <= 0:
            continue
        decimal = _decimal_after(tokens, positions, index)  # what "0" / "0." lead to
        expected = sum(p * (decimal if v in ("0", "0.") else min(1.0, float(v))) for v, p in numeric)
        return min(1.0, max(0.0, expected / total))
    return None
