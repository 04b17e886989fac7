"""Bilinear resizing that matches torch.nn.functional.interpolate(mode="bilinear",
align_corners=False, antialias=False) on float32 data, without torch."""

from __future__ import annotations

import numpy as np


def _axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights along one axis, computed as PyTorch's CPU kernel does."""
    if in_size == 1:  # replicate exactly (a 1x1 score map must stay constant)
        zeros = np.zeros(out_size, dtype=np.int64)
        return zeros, zeros, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    source = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    source = np.maximum(source, np.float32(0))
    first = np.minimum(source.astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    weight_second = (source - first.astype(np.float32)).astype(np.float32)
    weight_first = (np.float32(1) - weight_second).astype(np.float32)
    return first, second, weight_first, weight_second


def resize_bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W) or (H, W, C) float data to (height, width[, C]) in float32."""
    data = np.asarray(array, dtype=np.float32)
    r0, r1, rw0, rw1 = _axis(data.shape[0], height)
    c0, c1, cw0, cw1 = _axis(data.shape[1], width)
    extra = (1,) * (data.ndim - 2)
    cw0 = cw0.reshape(1, width, *extra)
    cw1 = cw1.reshape(1, width, *extra)
    # Along the width first for the two source rows, then along the height:
    # h0 * (w0 * x00 + w1 * x01) + h1 * (w0 * x10 + w1 * x11), the kernel's order.
    top = cw0 * data[r0][:, c0] + cw1 * data[r0][:, c1]
    bottom = cw0 * data[r1][:, c0] + cw1 * data[r1][:, c1]
    rw0 = rw0.reshape(height, 1, *extra)
    rw1 = rw1.reshape(height, 1, *extra)
    return (rw0 * top + rw1 * bottom).astype(np.float32)
