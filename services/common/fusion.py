"""Late fusion, the max over texts, expansion to frames and temporal smoothing
(METHOD.md section 7), as pure functions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d

DEFAULT_WEIGHTS = (0.6, 0.3, 0.1)  # frame, position context, temporal context
DEFAULT_SIGMA = 15.0


def split_texts(texts: Iterable[str], split_hyphens: bool = True) -> list[str]:
    """'jumping-falling' -> 'jumping', 'falling' (the reference's multiple-scenario form);
    duplicates dropped, order kept, surrounding whitespace trimmed."""
    result: list[str] = []
    for text in texts:
        parts = text.split("-") if split_hyphens else [text]
        for part in parts:
            part = part.strip()
            if part and part not in result:
                result.append(part)
    return result


def fuse(frame: float, position: float, temporal: float, weights: Sequence[float] = DEFAULT_WEIGHTS) -> float:
    g1, g2, g3 = weights
    return g1 * frame + g2 * position + g3 * temporal


def max_over_texts(fused: Sequence[float]) -> float:
    return max(fused) if fused else 0.0


def max_then_fuse(
    streams: Sequence[tuple[float, float, float]], weights: Sequence[float] = DEFAULT_WEIGHTS
) -> float:
    """The reference's multi-text rule: each stream maxed over texts (starting from 0), then
    fused; the three maxima may come from different texts."""
    if not streams:
        return 0.0
    frame = max(0.0, *(s[0] for s in streams))
    position = max(0.0, *(s[1] for s in streams))
    temporal = max(0.0, *(s[2] for s in streams))
    return fuse(frame, position, temporal, weights)


def expand_to_frames(segment_scores: Sequence[tuple[int, int, float]], num_frames: int) -> np.ndarray:
    """Copy each (start, end, score) segment score to its frames; frames no segment covers stay 0."""
    frames = np.zeros(num_frames, dtype=np.float64)
    for start, end, score in segment_scores:
        frames[start:end] = score
    return frames


def smooth(scores: np.ndarray, sigma: float) -> np.ndarray:
    """scipy's gaussian_filter1d (mode 'reflect', truncate 4), as the reference; sigma 0 = none."""
    if sigma <= 0 or scores.size == 0:
        return scores.astype(np.float64)
    return gaussian_filter1d(scores.astype(np.float64), sigma)
