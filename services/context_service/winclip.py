"""Position context (PC): WinCLIP-style attention on the representative key frame
(METHOD.md section 4), computed from window embeddings that clip_service made."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.windows import WindowGrid
from services.context_service.params import OUTPUT_SIZE
from services.context_service.resize import resize_bilinear


def class_list(preset_classes: Sequence[str], requested: Sequence[str], texts: Sequence[str]) -> list[str]:
    """The requested classes (else the preset's), with every text appended once if missing."""
    classes = list(requested) if requested else list(preset_classes)
    for text in texts:
        if text not in classes:
            classes.append(text)
    return classes


def _softmax_over_classes(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=0, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=0, keepdims=True)).astype(np.float32)


def attention_map(
    window_embeddings: np.ndarray,
    grids: Sequence[WindowGrid],
    class_matrix: np.ndarray,
    class_index: int,
    logit_scale: float,
    class_adaptive: bool,
) -> np.ndarray:
    """The fused score map M (224 x 224): per scale, each window's score for the text,
    bilinearly upsampled; then the mean over scales.

    window_embeddings: (L, D) normalised embeddings of all windows of the representative
    frame, grids concatenated; class_matrix: (C, D) normalised template-ensemble rows.
    """
    maps = []
    for grid in grids:
        windows = window_embeddings[grid.offset : grid.offset + grid.count]
        similarity = class_matrix @ windows.T  # (C, L) cosines
        if class_adaptive:
            scores = _softmax_over_classes(np.float32(logit_scale) * similarity)[class_index]
        else:
            scores = similarity[class_index]
        maps.append(resize_bilinear(scores.reshape(grid.rows, grid.cols), OUTPUT_SIZE, OUTPUT_SIZE))
    total = maps[0]
    for extra in maps[1:]:
        total = total + extra
    return (total / np.float32(len(maps))).astype(np.float32)


def minmax(score_map: np.ndarray, epsilon: float) -> np.ndarray:
    """(M - min) / (max - min + epsilon). A constant map (no spatial information,
    e.g. a single 1x1 scale or a one-class list) gives all ones instead of NaN."""
    low, high = score_map.min(), score_map.max()
    span = (high - low) + np.float32(epsilon)
    if span <= 0:
        return np.ones_like(score_map, dtype=np.float32)
    return ((score_map - low) / span).astype(np.float32)


def position_context(frame_224: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The key frame weighted by the mask; truncated to uint8 as the reference does."""
    return (frame_224 * mask[..., None]).astype(np.uint8)
