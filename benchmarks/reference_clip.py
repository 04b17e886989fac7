"""The CLIP side of one segment and ONE text the way the authors' code does it (METHOD.md sections
2-5 and 12): a yardstick for benchmarks, not used by any service.

Per text and per segment, with nothing shared between texts or segments:
- KSM: the 24 frames decoded again (PIL), CLIP-preprocessed, encoded in one batch; the raw text
  encoded;
- position context: the key frame decoded again (cv2) and squashed to 240x240; for every class of
  the preset plus the text, its 21 templates encoded (one batch per class) and averaged; each
  scale's windows encoded in one batch;
- temporal context: each key frame decoded again per scale (cv2), its windows resized to 224;
  every one of the 38 positions encoded as its own batch of 4; the raw text encoded again.

The outputs (key frames, the position-context image, the temporal-context position and image)
are the parity profile's, so a benchmark can check that what it times computes the same thing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from services.clip_service.templates import fill_templates

GRID = 240  # the squashed key frame windows are cut from
CROP = 224  # CLIP's input, and the context images' size


def _decode(jpeg: bytes) -> np.ndarray:
    """BGR, as cv2.imread gives it (the reference reads the frame file again each time)."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("a frame that does not decode")
    return bgr


@dataclass(frozen=True)
class ReferenceContexts:
    representative: int
    key_frames: list[int]
    position_context: np.ndarray  # 224x224x3 uint8
    temporal_position: int  # the chosen window position over all scales
    temporal_context: np.ndarray  # 224x224x3 uint8


class ReferenceClip:
    """`model`: an open_clip CLIP; `tokenizer` its tokenizer; `preprocess` the standard CLIP
    transform (PIL image -> tensor). Batches go to the model's device and dtype (a GPU in fp16, as
    the authors ran it) and features come back to the CPU as float32."""

    def __init__(self, model: Any, tokenizer: Any, preprocess: Any) -> None:
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess
        weights = model.visual.conv1.weight  # the input's layer (some parameters stay fp32 in an fp16 model)
        self.device, self.dtype = weights.device, weights.dtype

    def _images(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.model.encode_image(batch.to(self.device, self.dtype)).float().cpu()
        return features / features.norm(dim=-1, keepdim=True)

    def _texts(self, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(texts).to(self.device)).float().cpu()

    def _keyword(self, text: str) -> torch.Tensor:
        vector = self._texts([text])
        return vector / vector.norm(dim=-1, keepdim=True)

    @staticmethod
    def _windows(jpeg: bytes, size: int) -> torch.Tensor:
        """The key frame decoded (cv2), squashed to 240x240, cut into size x size windows, each
        resized to 224x224; pixels / 255, no CLIP mean/std (the reference's quirk)."""
        image = cv2.cvtColor(cv2.resize(_decode(jpeg), (GRID, GRID)), cv2.COLOR_BGR2RGB).astype("float32") / 255
        tensor = torch.tensor(image).permute(2, 0, 1).unsqueeze(0)
        patches = F.unfold(tensor, kernel_size=(size, size), stride=(size, size))
        patches = patches.permute(0, 2, 1).reshape(-1, 3, size, size)
        return F.interpolate(patches, size=(CROP, CROP), mode="bilinear")

    def key_frames(self, jpegs: Sequence[bytes], text: str) -> tuple[int, list[int]]:
        batch = torch.stack([self.preprocess(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])
        similarities = (self._images(batch) @ self._keyword(text).T)[:, 0].numpy()
        best = int(np.argmax(similarities))
        group = len(jpegs) // 4
        return best, [j * group + best % group for j in range(4)]

    def position_context(self, jpeg: bytes, classes: Sequence[str], text: str, sizes: Sequence[int]) -> np.ndarray:
        names = list(classes) + ([text] if text not in classes else [])
        rows = torch.stack([self._texts(fill_templates(name)).mean(dim=0) for name in names])  # one call per class
        rows = rows / rows.norm(dim=-1, keepdim=True)
        maps = []
        for size in sizes:
            side = (GRID - size) // size + 1
            similarity = (rows @ self._images(self._windows(jpeg, size)).T).softmax(dim=0)[names.index(text)]
            maps.append(F.interpolate(similarity.view(1, 1, side, side), size=(CROP, CROP), mode="bilinear").squeeze())
        total = sum(maps[1:], maps[0]) / len(maps)
        mask = ((total - total.min()) / (total.max() - total.min())).numpy()
        image = cv2.cvtColor(cv2.resize(_decode(jpeg), (CROP, CROP)), cv2.COLOR_BGR2RGB)
        return (image * mask[:, :, None]).astype(np.uint8)

    def temporal_context(self, jpegs: Sequence[bytes], text: str, sizes: Sequence[int]) -> tuple[int, np.ndarray]:
        groups: list[torch.Tensor] = []
        for size in sizes:
            per_frame = [self._windows(jpeg, size) for jpeg in jpegs]  # decoded again for every scale
            groups += [torch.stack([windows[i] for windows in per_frame]) for i in range(per_frame[0].shape[0])]
        keyword = self._keyword(text)
        scores = [float((keyword @ self._images(group).T).max()) for group in groups]  # a forward per position
        best = int(np.argmax(scores))
        canvas = np.zeros((3, CROP, CROP), dtype=np.float32)
        half = CROP // 2
        for position, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            tile = F.interpolate(groups[best][position].unsqueeze(0), size=(half, half), mode="bilinear")
            canvas[:, row * half:(row + 1) * half, col * half:(col + 1) * half] = tile.numpy()[0]
        return best, (canvas * 255).transpose(1, 2, 0).astype(np.uint8)

    def segment(self, jpegs: Sequence[bytes], text: str, classes: Sequence[str], sizes: Sequence[int],
                key_frames: Sequence[int] | None = None) -> ReferenceContexts:
        """One text's contexts for one segment. `key_frames` (4 indices): use these instead of the
        KSM's (a benchmark's worst case: every text on other frames); the KSM runs either way."""
        representative, chosen = self.key_frames(jpegs, text)
        if key_frames is not None:
            chosen, representative = list(key_frames), key_frames[0]
        position = self.position_context(jpegs[representative], classes, text, sizes)
        candidate, temporal = self.temporal_context([jpegs[k] for k in chosen], text, sizes)
        return ReferenceContexts(representative, chosen, position, candidate, temporal)

