"""Regular window grids (like torch.nn.functional.unfold: row-major, no padding)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common.errors import InvalidInput


@dataclass(frozen=True)
class WindowGrid:
    size: int
    stride: int
    rows: int
    cols: int
    offset: int  # index of this grid's first window when several grids are concatenated

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def box(self, index: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of window `index` (row-major) within this grid."""
        row, col = divmod(index, self.cols)
        top, left = row * self.stride, col * self.stride
        return top, left, top + self.size, left + self.size


def layout_grids(specs: Sequence[tuple[int, int]], height: int, width: int) -> list[WindowGrid]:
    """Grids for (size, stride) pairs over a height x width image; stride 0 means = size."""
    grids: list[WindowGrid] = []
    offset = 0
    for size, stride in specs:
        stride = stride or size
        if size <= 0 or stride <= 0:
            raise InvalidInput(f"window size {size} and stride {stride} must be positive")
        if size > height or size > width:
            raise InvalidInput(
                f"window size {size} is larger than the {width}x{height} image it is cut from; "
                f"use windows of at most {min(height, width)} pixels"
            )
        rows = (height - size) // stride + 1
        cols = (width - size) // stride + 1
        grids.append(WindowGrid(size, stride, rows, cols, offset))
        offset += rows * cols
    return grids


def strides_for(sizes: Sequence[int], half_stride: bool) -> list[tuple[int, int]]:
    """(size, stride) pairs: stride = size, or size // 2 with the half-stride option."""
    return [(size, max(1, size // 2) if half_stride else size) for size in sizes]
