"""Turning decoded RGB frames into CLIP input tensors (METHOD.md section 2).

- centre crop: the standard CLIP transform (shortest side to S with bicubic
  resampling, centre crop S x S, CLIP mean/std), what the key-frame rule sees;
- squash: pixels / 255, bilinear resize (align_corners=False) of the whole image
  or of each window to S x S, optionally CLIP mean/std; what the reference feeds
  CLIP for window crops (without mean/std).
"""

from __future__ import annotations

from collections.abc import Sequence
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


class Preprocessor:
    """`device`: where window crops are cut and resized (the model's: on a GPU the resizes of a
    frame's windows are one batched op there instead of CPU work); whole images are prepared on
    the CPU (PIL's bicubic resize is the reference's, to the pixel)."""

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
        if batch.device == self.device and self.device.type != "cpu":
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

    def windows(self, rgb: np.ndarray, grids: Sequence[WindowGrid], mode: Mode) -> torch.Tensor:
        """Every window of every grid (row-major, grids in order) -> (L, 3, S, S), on `device`."""
        pixels = self._unit_pixels(rgb).to(self.device)
        normalize = mode is Mode.SQUASH_NORMALIZED
        parts = []
        for grid in grids:
            crops = []
            for index in range(grid.count):
                top, left, bottom, right = grid.box(index)
                crops.append(pixels[0, :, top:bottom, left:right])
            parts.append(self._squash(torch.stack(crops), normalize))
        return torch.cat(parts)
