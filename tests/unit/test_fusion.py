"""Fusion, the max over texts, frame expansion, smoothing and text splitting."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from services.common.fusion import expand_to_frames, fuse, max_over_texts, smooth, split_texts


def test_fuse_uses_the_default_weights_0_6_0_3_0_1() -> None:
    assert fuse(1.0, 0.0, 0.0) == pytest.approx(0.6)
    assert fuse(0.5, 1.0, 1.0) == pytest.approx(0.7)
    assert fuse(0.2, 0.4, 0.8, (1 / 3, 1 / 3, 1 / 3)) == pytest.approx(0.4666667)


def test_max_over_texts() -> None:
    assert max_over_texts([0.2, 0.9, 0.4]) == 0.9
    assert max_over_texts([]) == 0.0


def test_segment_scores_are_copied_to_their_frames() -> None:
    frames = expand_to_frames([(0, 3, 0.5), (3, 6, 0.9)], 8)
    assert frames.tolist() == [0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.0, 0.0]


def test_smoothing_is_scipy_gaussian_filter1d_per_video() -> None:
    video_a = np.array([0, 0, 1, 1, 1, 0, 0, 0, 0, 0], dtype=float)
    video_b = np.array([1, 1, 1, 1, 0, 0], dtype=float)
    np.testing.assert_allclose(smooth(video_a, 2.0), gaussian_filter1d(video_a, 2.0))
    # Per video: b's start is not pulled down by a's end (the reference smooths the concatenation).
    per_video = np.concatenate([smooth(video_a, 2.0), smooth(video_b, 2.0)])
    concatenated = gaussian_filter1d(np.concatenate([video_a, video_b]), 2.0)
    assert per_video[len(video_a)] > concatenated[len(video_a)]
    assert smooth(video_a, 0).tolist() == video_a.tolist()


def test_texts_are_split_on_hyphens_deduplicated_and_trimmed() -> None:
    assert split_texts(["jumping-falling-pickup"]) == ["jumping", "falling", "pickup"]
    assert split_texts(["running", "running-bicycle", " car "]) == ["running", "bicycle", "car"]
    assert split_texts(["throwing-too_close"]) == ["throwing", "too_close"]
    assert split_texts(["person lying on the ground"]) == ["person lying on the ground"]
    assert split_texts(["jumping-falling"], split_hyphens=False) == ["jumping-falling"]
