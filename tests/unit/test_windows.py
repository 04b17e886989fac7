"""Window grids on the 240x240 grid image (METHOD.md sections 4-5 and 13)."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidInput
from services.common.presets import get_preset
from services.common.windows import layout_grids, strides_for


def counts(sizes: tuple[int, ...], half: bool = False) -> list[int]:
    return [g.count for g in layout_grids(strides_for(sizes, half), 240, 240)]


def test_shtech_windows_give_25_9_4() -> None:
    assert counts(get_preset("shtech").window_sizes) == [25, 9, 4]


def test_avenue_windows_give_25_9_1() -> None:
    assert counts(get_preset("avenue").window_sizes) == [25, 9, 1]


def test_half_stride_gives_81_25_9_and_avenue_large_stays_1() -> None:
    assert counts((48, 80, 120), half=True) == [81, 25, 9]
    assert counts((48, 80, 240), half=True) == [81, 25, 1]


def test_grids_are_row_major_and_offsets_concatenate() -> None:
    small, mid, large = layout_grids(strides_for((48, 80, 120), False), 240, 240)
    assert (small.offset, mid.offset, large.offset) == (0, 25, 34)
    assert small.box(0) == (0, 0, 48, 48)
    assert small.box(1) == (0, 48, 48, 96)  # next column first
    assert small.box(5) == (48, 0, 96, 48)  # then the next row
    assert large.box(3) == (120, 120, 240, 240)


def test_window_larger_than_image_is_refused() -> None:
    with pytest.raises(InvalidInput, match="larger than the 240x240 image"):
        layout_grids([(300, 300)], 240, 240)


def test_unknown_preset_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match="shtech, avenue, custom"):
        get_preset("ucf")
