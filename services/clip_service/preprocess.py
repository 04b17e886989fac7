"""Turning decoded RGB frames into CLIP input tensors (METHOD.md section 2).

- centre crop: the standard CLIP transform (shortest side to S with bicubic
  resampling, centre crop S x S, CLIP mean/std), what the key-frame rule sees;
- squash: pixels / 255, bilinear resize (align_corners=False) of the whole image
  or of each window to S x S, optionally CLIP mean/std; what the reference feeds
  CLIP for window crops (without mean/std).

Window crops wait for the model as their own uint8 pixels (a WindowCrop: 7-43 KB for the
ShT windows where a resized float crop is 600 KB) and are resized when their batch is formed,
those of one size in one op on the model's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

from services.common.windows import WindowGrid


class Mode(Enum):
    CENTER_CROP = "center_crop"
    SQUASH = "squash"
    SQUASH_NORMALIZED = "squash_normalized"


@dataclass(frozen=True)
class WindowCrop:
    """One window, not yet resized: a view of its frame's uint8 pixels."""

    pixels: torch.Tensor  # (3, h, w) uint8
    normalize: bool  # CLIP mean/std after the resize (SQUASH_NORMALIZED)


Row = torch.Tensor | WindowCrop  # what waits in the batcher for the model


class Preprocessor:
    """`device`: the model's; window crops are resized there when their batch is formed (on a
    GPU one op per window size instead of CPU work). Whole images are prepared on the CPU
    (PIL's bicubic resize is the reference's, to the pixel)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], device: str = "cpu") -> None:
        self.size = size
        self.device = torch.device(device)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._device_mean, self._device_std = self._mean.to(self.device), self._std.to(self.device)
        self._center_crop = Compose([
            Resize(size, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(size),
            ToTensor(),
            Normalize(mean, std),
        ])

    def _normalize(self, batch: torch.Tensor) -> torch.Tensor:
        # By type: the model's "cuda" is the batch's "cuda:0", and a (1, 3, 1, 1) CPU tensor
        # cannot meet a CUDA one.
        if batch.device.type == self.device.type and self.device.type != "cpu":
            return (batch - self._device_mean) / self._device_std
        return (batch - self._mean) / self._std

    def _squash(self, pixels: torch.Tensor, normalize: bool) -> torch.Tensor:
        """(B, 3, h, w) float in [0, 1] -> (B, 3, S, S)."""
        resized = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self._normalize(resized) if normalize else resized

    @staticmethod
    def _unit_pixels(rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1], computed as in the reference."""
        return torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0)

    def image(self, rgb: np.ndarray, mode: Mode) -> torch.Tensor:
        """One whole image -> (3, S, S)."""
        if mode is Mode.CENTER_CROP:
            tensor: torch.Tensor = self._center_crop(Image.fromarray(rgb))
            return tensor
        return self._squash(self._unit_pixels(rgb), mode is Mode.SQUASH_NORMALIZED)[0]

    @staticmethod
    def windows(rgb: np.ndarray, grids: Sequence[WindowGrid], mode: Mode) -> list[WindowCrop]:
        """Every window of every grid (row-major, grids in order), to be resized in its batch."""
        pixels = torch.from_numpy(rgb).permute(2, 0, 1)  # (3, H, W), shares the decoded frame
        normalize = mode is Mode.SQUASH_NORMALIZED
        crops = []
        for grid in grids:
            for index in range(grid.count):
                top, left, bottom, right = grid.box(index)
                crops.append(WindowCrop(pixels[:, top:bottom, left:right], normalize))
        return crops

    def batch(self, rows: Sequence[Row]) -> torch.Tensor:
        """The model's input (B, 3, S, S) on `device`: whole images as prepared, window crops
        resized here, those of one size and kind in one op."""
        ready: list[torch.Tensor | None] = [row.to(self.device) if isinstance(row, torch.Tensor) else None
                                            for row in rows]
        groups: dict[tuple[int, int, bool], list[int]] = {}
        for index, row in enumerate(rows):
            if isinstance(row, WindowCrop):
                groups.setdefault((row.pixels.shape[1], row.pixels.shape[2], row.normalize), []).append(index)
        for (_, _, normalize), members in groups.items():
            pixels = torch.stack([rows[i].pixels for i in members]).to(self.device)  # type: ignore[union-attr]
            resized = self._squash(pixels.float() / 255, normalize)  # as the reference: float32 / 255, then resize
            for slot, index in enumerate(members):
                ready[index] = resized[slot]
        return torch.stack([row for row in ready if row is not None])
