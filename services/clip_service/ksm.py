"""Key frames Selection Module (METHOD.md section 3): pure functions on similarities."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

MIN_FRAMES = 4


class Strategy(Enum):
    CLIP_THEN_GROUPING = "clip_then_grouping"  # the paper's choice
    RANDOM = "random"
    CLIP_TOP4 = "clip_top4"
    GROUPING_THEN_CLIP = "grouping_then_clip"


@dataclass(frozen=True)
class KeyFrames:
    representative: int
    key_frames: tuple[int, int, int, int]


def _argmax(values: np.ndarray) -> int:
    return int(np.argmax(values))  # numpy: ties go to the first index, as in the reference


def select_key_frames(
    similarities: np.ndarray, strategy: Strategy = Strategy.CLIP_THEN_GROUPING, seed: int = 0
) -> KeyFrames:
    """Pick 4 key frames and the representative frame of one segment for one text.

    `similarities` holds the N cosine similarities between the segment's frames and
    the text. The group length is g = N // 4 (floored when N is not a multiple of 4,
    so the key frames then lie in [0, 4g) while the argmax may lie beyond).
    """
    n = len(similarities)
    if n < MIN_FRAMES:
        raise ValueError(f"key-frame selection needs at least {MIN_FRAMES} frames, got {n}")
    g = n // 4
    if strategy is Strategy.CLIP_THEN_GROUPING:
        best = _argmax(similarities)
        offset = best % g
        return KeyFrames(best, (offset, g + offset, 2 * g + offset, 3 * g + offset))
    if strategy is Strategy.RANDOM:
        chosen = sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=4, replace=False))
        return KeyFrames(chosen[0], (chosen[0], chosen[1], chosen[2], chosen[3]))
    if strategy is Strategy.CLIP_TOP4:
        ranked = [int(i) for i in np.argsort(-similarities, kind="stable")[:4]]
        top = sorted(ranked)
        return KeyFrames(ranked[0], (top[0], top[1], top[2], top[3]))
    if strategy is Strategy.GROUPING_THEN_CLIP:
        keys = [j * g + _argmax(similarities[j * g : (j + 1) * g]) for j in range(4)]
        return KeyFrames(_argmax(similarities), (keys[0], keys[1], keys[2], keys[3]))
    raise ValueError(f"unknown key-frame strategy {strategy}")
