"""Temporal context (TC): the 2x2 grid of one window position across the four key
frames (METHOD.md section 5)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.common.windows import WindowGrid
from services.context_service.params import OUTPUT_SIZE, TILE_SIZE
from services.context_service.resize import resize_bilinear


def select_position(window_embeddings: np.ndarray, text_vector: np.ndarray) -> tuple[int, float]:
    """The candidate position whose best window (max over the 4 key frames) is most
    similar to the raw text; first index on ties.

    window_embeddings: (4, L, D) normalised; text_vector: (D,) normalised.
    """
    similarity = window_embeddings @ text_vector  # (4, L)
    per_position = similarity.max(axis=0)
    candidate = int(np.argmax(per_position))
    return candidate, float(per_position[candidate])


def locate(grids: Sequence[WindowGrid], candidate: int) -> tuple[WindowGrid, int]:
    """The grid holding a candidate index, and the window's index within that grid."""
    for grid in grids:
        if grid.offset <= candidate < grid.offset + grid.count:
            return grid, candidate - grid.offset
    raise IndexError(f"candidate {candidate} is outside the grids")


def compose_grid(squashed_frames: Sequence[np.ndarray], grid: WindowGrid, index: int) -> np.ndarray:
    """224x224 uint8 mosaic: the window of key frames 0..3 as 112x112 tiles, k0 top-left,
    k1 top-right, k2 bottom-left, k3 bottom-right. As the reference: window in [0, 1],
    bilinear to 224, bilinear to 112, x255, truncated to uint8."""
    if len(squashed_frames) != 4:
        raise ValueError(f"a grid needs 4 key frames, got {len(squashed_frames)}")
    top, left, bottom, right = grid.box(index)
    canvas = np.zeros((OUTPUT_SIZE, OUTPUT_SIZE, 3), dtype=np.float32)
    for position, frame in enumerate(squashed_frames):
        window = frame[top:bottom, left:right].astype(np.float32) / np.float32(255)
        tile = resize_bilinear(resize_bilinear(window, OUTPUT_SIZE, OUTPUT_SIZE), TILE_SIZE, TILE_SIZE)
        row, col = divmod(position, 2)
        canvas[row * TILE_SIZE : (row + 1) * TILE_SIZE, col * TILE_SIZE : (col + 1) * TILE_SIZE] = tile
    return (canvas * np.float32(255)).astype(np.uint8)


def all_grids(squashed_frames: Sequence[np.ndarray], grids: Sequence[WindowGrid]) -> list[np.ndarray]:
    """The mosaic of every candidate position, in candidate order (for grid-embedding selection)."""
    return [compose_grid(squashed_frames, grid, index) for grid in grids for index in range(grid.count)]


def select_grid(grid_embeddings: np.ndarray, text_vector: np.ndarray) -> tuple[int, float]:
    """The candidate whose composed grid is most similar to the raw text; first on ties."""
    similarity = grid_embeddings @ text_vector
    candidate = int(np.argmax(similarity))
    return candidate, float(similarity[candidate])
