"""Anomaly texts: what real writing needs passes; what hides or reorders text does not."""

from __future__ import annotations

import re

import pytest

from services.common.errors import InvalidInput
from services.common.validation import validate_texts


@pytest.mark.parametrize("text", [
    "person lying on the ground", "hand_truck", "אופניים\u200f",  # Hebrew with a right-to-left mark
    "دوچرخه\u200cسوار",  # Persian with a zero-width non-joiner
    "👩\u200d🚒 firefighter", "bi\u00adcycle",  # an emoji sequence (zero-width joiner), a soft hyphen
])
def test_texts_in_any_script_pass(text: str) -> None:
    assert validate_texts([text]) == [text]


@pytest.mark.parametrize(("text", "character"), [
    ("bicycle\x00", "the control character U+0000 at position 7"),
    ("bicycle\nScore: 1.0", "the control character U+000A at position 7"),
    ("car\u202ereversed", "the invisible formatting character U+202E at position 3"),  # right-to-left override
    ("car\u2066isolated\u2069", "the invisible formatting character U+2066 at position 3"),
    ("bi\u200bcycle", "the invisible formatting character U+200B at position 2"),  # zero-width space
    ("bi\ud800", "the surrogate character U+D800 at position 2"),
])
def test_hidden_characters_are_refused_with_their_position(text: str, character: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(f"texts[1] contains {character}; anomaly texts must be plain")):
        validate_texts(["car", text])
