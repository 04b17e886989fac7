"""Dense window features: every window's embedding pooled from the patch features of one
forward pass over its whole image, instead of one forward per window crop."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.windows import WindowGrid


def _overlaps(starts: np.ndarray, ends: np.ndarray, extent: int, patches: int) -> np.ndarray:
    """(windows, patches): how many pixels of each window's [start, end) fall in each patch's
    span of an axis of `extent` pixels cut into `patches` equal parts."""
    edges = np.arange(patches + 1, dtype=np.float64) * (extent / patches)
    low = np.maximum(starts[:, None], edges[None, :-1])
    high = np.minimum(ends[:, None], edges[None, 1:])
    return np.clip(high - low, 0, None)


def pooling_weights(grids: Sequence[WindowGrid], height: int, width: int, patches: int) -> np.ndarray:
    """(windows, patches * patches) weights, each row summing to 1: a window's feature is the
    mean of the patch features it covers, weighted by the area it covers of each. The image is
    squashed to the model's input, so patch p spans the same fraction of each axis."""
    boxes = np.array([grid.box(index) for grid in grids for index in range(grid.count)], dtype=np.float64)
    rows = _overlaps(boxes[:, 0], boxes[:, 2], height, patches)
    cols = _overlaps(boxes[:, 1], boxes[:, 3], width, patches)
    weights = (rows[:, :, None] * cols[:, None, :]).reshape(len(boxes), -1)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def pool_windows(patch_features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(images, g, g, D) patch features -> (images, windows, D) L2-normalised window features."""
    flat = patch_features.reshape(patch_features.shape[0], -1, patch_features.shape[-1])
    pooled = np.einsum("wp,ipd->iwd", weights, flat)
    return (pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)).astype(np.float32)
