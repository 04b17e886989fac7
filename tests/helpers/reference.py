"""An independent re-statement of the authors' PC/TC/KSM code paths (METHOD.md
sections 2-5), written with torch's unfold/interpolate like the reference, used to
check the services' parity profile. Not used by any service."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from services.clip_service.model import ClipModel
from services.clip_service.templates import fill_templates


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _encode_images(model: ClipModel, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _unit(model._model.encode_image(batch).float())  # the same weights, called directly


def _encode_text(model: ClipModel, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model._model.encode_text(model._tokenizer(texts)).float()  # type: ignore[operator]


def ksm(model: ClipModel, preprocess: object, frames: Sequence[np.ndarray], text: str) -> tuple[int, list[int]]:
    batch = torch.stack([preprocess(Image.fromarray(f)) for f in frames])  # type: ignore[operator]
    sims = (_encode_images(model, batch) @ _unit(_encode_text(model, [text])).T)[:, 0].numpy()
    best = int(np.argmax(sims))
    g = len(frames) // 4
    return best, [j * g + best % g for j in range(4)]


def _windows(frame: np.ndarray, size: int, model: ClipModel | None = None) -> torch.Tensor:
    """Window crops resized to 224; CLIP mean/std normalised when `model` is given (the default
    profile's fix), raw pixels / 255 otherwise (the reference)."""
    image = cv2.resize(frame, (240, 240)).astype("float32") / 255
    tensor = torch.tensor(image).permute(2, 0, 1).unsqueeze(0).float()
    patches = F.unfold(tensor, kernel_size=(size, size), stride=(size, size))
    patches = patches.permute(0, 2, 1).reshape(-1, 3, size, size)
    resized = F.interpolate(patches, size=(224, 224), mode="bilinear")
    if model is None:
        return resized
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    return (resized - mean) / std


def attention_map(model: ClipModel, frame: np.ndarray, classes: list[str], text: str, sizes: Sequence[int],
                  logit_scale: float = 1.0, normalize_windows: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(the fused map before min-max, the min-max normalised map), 224x224: per window the
    class softmax of logit_scale * cosine, each scale's grid upsampled bilinearly, averaged."""
    rows = _unit(torch.stack([_encode_text(model, fill_templates(c)).mean(dim=0) for c in classes]))
    maps = []
    for size in sizes:
        side = (240 - size) // size + 1
        windows = _windows(frame, size, model if normalize_windows else None)
        sim = (logit_scale * (rows @ _encode_images(model, windows).T)).softmax(dim=0)[classes.index(text)]
        maps.append(F.interpolate(sim.view(1, 1, side, side), size=(224, 224), mode="bilinear").squeeze())
    total = (sum(maps[1:], maps[0]) / len(maps)).numpy()
    return total, (total - total.min()) / (total.max() - total.min())


def position_context(
    model: ClipModel, frame: np.ndarray, classes: list[str], text: str, sizes: Sequence[int]
) -> np.ndarray:
    rows = torch.stack([_encode_text(model, fill_templates(c)).mean(dim=0) for c in classes])
    rows = _unit(rows)
    maps = []
    for size in sizes:
        side = (240 - size) // size + 1
        sim = (rows @ _encode_images(model, _windows(frame, size)).T).softmax(dim=0)[classes.index(text)]
        maps.append(F.interpolate(sim.view(1, 1, side, side), size=(224, 224), mode="bilinear").squeeze())
    total = sum(maps[1:], maps[0]) / len(maps)
    mask = ((total - total.min()) / (total.max() - total.min())).numpy()
    image = cv2.resize(frame, (224, 224))
    return (image * np.repeat(mask[:, :, None], 3, axis=2)).astype(np.uint8)


def temporal_context(
    model: ClipModel, key_frames: Sequence[np.ndarray], text: str, sizes: Sequence[int]
) -> tuple[int, np.ndarray]:
    groups: list[torch.Tensor] = []
    for size in sizes:
        per_frame = [_windows(frame, size) for frame in key_frames]
        groups += [torch.stack([p[i] for p in per_frame]) for i in range(per_frame[0].shape[0])]
    keyword = _unit(_encode_text(model, [text]))
    scores = [float((keyword @ _encode_images(model, g).T).max()) for g in groups]
    best = int(np.argmax(scores))
    grid = np.zeros((3, 224, 224), dtype=np.float32)
    for position, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        tile = F.interpolate(groups[best][position].unsqueeze(0), size=(112, 112), mode="bilinear").numpy()[0]
        grid[:, row * 112 : (row + 1) * 112, col * 112 : (col + 1) * 112] = tile
    return best, (grid * 255).transpose(1, 2, 0).astype(np.uint8)


def all_grids(key_frames: Sequence[np.ndarray], sizes: Sequence[int]) -> list[np.ndarray]:
    """Every candidate 2x2 grid (uint8 HWC), candidates in the reference's order."""
    _, first = temporal_context_candidates(key_frames, sizes)
    return first


def temporal_context_candidates(key_frames: Sequence[np.ndarray], sizes: Sequence[int]
                                ) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    groups: list[torch.Tensor] = []
    for size in sizes:
        per_frame = [_windows(frame, size) for frame in key_frames]
        groups += [torch.stack([p[i] for p in per_frame]) for i in range(per_frame[0].shape[0])]
    mosaics = []
    for group in groups:
        grid = np.zeros((3, 224, 224), dtype=np.float32)
        for position, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            tile = F.interpolate(group[position].unsqueeze(0), size=(112, 112), mode="bilinear").numpy()[0]
            grid[:, row * 112 : (row + 1) * 112, col * 112 : (col + 1) * 112] = tile
        mosaics.append((grid * 255).transpose(1, 2, 0).astype(np.uint8))
    return groups, mosaics


def embed_images(model: ClipModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """224x224 uint8 images as the parity profile embeds them: /255, no mean/std."""
    batch = torch.stack([torch.tensor(i.astype("float32") / 255).permute(2, 0, 1) for i in images])
    return _encode_images(model, batch)


def embed_text(model: ClipModel, text: str) -> torch.Tensor:
    return _unit(_encode_text(model, [text]))[0]
