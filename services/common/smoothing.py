"""Causal smoothing for live scores: an exponential moving average over frames, so that a score
never looks ahead. Its time constant is the detection's sigma (in frames), which is also its mean
delay: the latency the smoothing adds to an event. Files and jobs keep the per-video Gaussian
(services/common/fusion.py), which looks both ways."""

from __future__ import annotations

import math

import numpy as np


def causal_smooth(scores: np.ndarray, time_constant_frames: float) -> np.ndarray:
    """y[i] = y[i-1] + a * (x[i] - y[i-1]) with a = 1 - exp(-1 / tau), starting at x[0]; tau 0: none."""
    values = scores.astype(np.float64)
    if time_constant_frames <= 0 or values.size == 0:
        return values
    keep = math.exp(-1.0 / time_constant_frames)
    out = np.empty_like(values)
    state = values[0]
    for index, value in enumerate(values):
        state = keep * state + (1 - keep) * value
        out[index] = state
    return out


class CausalSmoother:
    """The same filter fed segment by segment: a segment's score holds for its frames, so the value
    after the segment is known in closed form without visiting every frame."""

    def __init__(self, time_constant_frames: float) -> None:
        self._tau = time_constant_frames
        self._state: float | None = None

    def update(self, score: float, frames: int) -> float:
        """The smoothed score at the last frame of a segment of `frames` frames scoring `score`."""
        if self._tau <= 0:
            return score
        if self._state is None:
            self._state = score
        self._state = score + (self._state - score) * math.exp(-frames / self._tau)
        return self._state
