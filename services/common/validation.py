"""Input checks shared by services, with messages a caller can act on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from services.common.errors import InvalidInput

T = TypeVar("T")

MAX_TEXT_CHARS = 300
MAX_TEXTS = 256


def validate_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    """Texts are used verbatim (underscores and case kept), but must be non-blank and short."""
    if not texts:
        raise InvalidInput(f"no {what} given: send at least one anomaly text, e.g. 'bicycle'")
    if len(texts) > MAX_TEXTS:
        raise InvalidInput(f"{len(texts)} {what} given; at most {MAX_TEXTS} per request")
    for position, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"{what}[{position}] is empty; every text must name an anomaly")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidInput(
                f"{what}[{position}] has {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
            )
    return list(texts)


def lookup(table: Mapping[Any, T], value: int, what: str) -> T:
    """The contract enum `value` as the service's own type; InvalidInput for a value this
    version does not know (a newer client, or a number sent by hand)."""
    if value not in table:
        raise InvalidInput(f"unknown {what} value {value}")
    return table[value]
