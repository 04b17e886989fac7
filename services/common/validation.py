"""Input checks shared by services, with messages a caller can act on."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from services.common.errors import InvalidInput

MAX_TEXT_CHARS = 300
MAX_TEXTS = 256
MAX_ANSWER_TOKENS = 4096  # an LVLM answer: a score and a sentence need tens; bounds a request's work
# Unicode categories a text may not contain: control characters (NUL, newlines, escapes), format
# characters (bidi embeddings, overrides and isolates, zero-width spaces) and surrogates. They
# would go into the LVLM prompt as they are, and can hide or reorder what a reader sees.
_REFUSED_CATEGORIES = {"Cc": "control", "Cf": "invisible formatting", "Cs": "surrogate"}
# Format characters that real writing needs: the soft hyphen, zero-width (non-)joiners (Persian,
# Indic scripts, emoji sequences) and the directional marks of right-to-left text.
_ALLOWED_FORMAT = {"\u00ad", "\u200c", "\u200d", "\u200e", "\u200f", "\u061c"}


def _refused_character(text: str) -> tuple[int, str, str] | None:
    for position, char in enumerate(text):
        kind = _REFUSED_CATEGORIES.get(unicodedata.category(char))
        if kind and char not in _ALLOWED_FORMAT:
            return position, char, kind
    return None


def validate_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    """Texts are used verbatim (underscores and case kept), but must be non-blank and short.
    `what` names them in messages and, as a field path ("texts", "queries[0].more_texts"), in the
    error's field violation."""
    field = what.replace(" ", "_")
    if not texts:
        raise InvalidInput(f"no {what} given: send at least one anomaly text, e.g. 'bicycle'", field=field)
    if len(texts) > MAX_TEXTS:
        raise InvalidInput(f"{len(texts)} {what} given; at most {MAX_TEXTS} per request", field=field)
    for position, text in enumerate(texts):
        at = f"{field}[{position}]"
        if not text.strip():
            raise InvalidInput(f"{what}[{position}] is empty; every text must name an anomaly", field=at)
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidInput(
                f"{what}[{position}] has {len(text)} characters; the limit is {MAX_TEXT_CHARS}", field=at
            )
        refused = _refused_character(text)
        if refused:
            index, char, kind = refused
            raise InvalidInput(f"{what}[{position}] contains the {kind} character U+{ord(char):04X} at position "
                               f"{index}; anomaly texts must be plain printable text", field=at)
    return list(texts)


def validate_max_tokens(value: int, what: str = "max_tokens") -> int:
    if not 0 <= value <= MAX_ANSWER_TOKENS:
        raise InvalidInput(f"{what} must be 0 (the service default) to {MAX_ANSWER_TOKENS}, got {value}")
    return value

