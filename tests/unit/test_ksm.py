"""The key-frame rule and the ablation strategies against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from services.clip_service.ksm import Strategy, select_key_frames


def sims(n: int, peaks: dict[int, float]) -> np.ndarray:
    values = np.zeros(n, dtype=np.float32)
    for index, value in peaks.items():
        values[index] = value
    return values


def test_paper_example_n8_argmax4_gives_0_2_4_6() -> None:
    chosen = select_key_frames(sims(8, {4: 0.9}))
    assert chosen.key_frames == (0, 2, 4, 6)
    assert chosen.representative == 4


@pytest.mark.parametrize(
    ("argmax", "expected"),
    [(0, (0, 6, 12, 18)), (5, (5, 11, 17, 23)), (13, (1, 7, 13, 19)), (23, (5, 11, 17, 23))],
)
def test_n24_uses_offset_within_groups_of_six(argmax: int, expected: tuple[int, ...]) -> None:
    chosen = select_key_frames(sims(24, {argmax: 0.5}))
    assert chosen.key_frames == expected
    assert chosen.representative == argmax
    assert chosen.representative in chosen.key_frames


def test_ties_go_to_the_first_index() -> None:
    chosen = select_key_frames(sims(8, {3: 0.7, 5: 0.7}))
    assert chosen.representative == 3
    assert chosen.key_frames == (1, 3, 5, 7)


def test_n_not_multiple_of_four_floors_the_group_and_may_leave_argmax_outside() -> None:
    # N = 10 -> g = 2; argmax 9 -> offset 1 -> key frames in [0, 8), representative 9.
    chosen = select_key_frames(sims(10, {9: 1.0}))
    assert chosen.key_frames == (1, 3, 5, 7)
    assert chosen.representative == 9


def test_fewer_than_four_frames_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        select_key_frames(sims(3, {0: 1.0}))


def test_top4_is_time_ordered_and_representative_is_top1() -> None:
    values = sims(12, {9: 0.9, 2: 0.8, 7: 0.7, 4: 0.6, 0: 0.1})
    chosen = select_key_frames(values, Strategy.CLIP_TOP4)
    assert chosen.key_frames == (2, 4, 7, 9)
    assert chosen.representative == 9


def test_grouping_then_clip_takes_argmax_per_quarter() -> None:
    values = sims(8, {1: 0.2, 2: 0.5, 3: 0.4, 5: 0.1, 7: 0.3})
    chosen = select_key_frames(values, Strategy.GROUPING_THEN_CLIP)
    # groups [0,1] [2,3] [4,5] [6,7] -> 1, 2, 5, 7; global argmax 2
    assert chosen.key_frames == (1, 2, 5, 7)
    assert chosen.representative == 2


def test_random_is_seeded_sorted_distinct_and_earliest_is_representative() -> None:
    first = select_key_frames(sims(24, {}), Strategy.RANDOM, seed=7)
    again = select_key_frames(sims(24, {}), Strategy.RANDOM, seed=7)
    other = select_key_frames(sims(24, {}), Strategy.RANDOM, seed=8)
    assert first == again
    assert list(first.key_frames) == sorted(set(first.key_frames))
    assert first.representative == first.key_frames[0]
    assert other != first
