"""The images of a Score request, checked and made ready for the model once: decoded (a
corrupt image is the caller's INVALID_ARGUMENT, never the engine's crash), checked against
the request's pixel budget and a sane shape, and downscaled (aspect kept) to the model's pixel
bound. A remote engine is sent the original bytes unless they were downscaled; a local engine
gets the decoded pixels, so nothing is decoded twice."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from services.common.images import check_pixel_budget, decode_image, encode_jpeg, encode_png, image_format


@dataclass(frozen=True)
class Picture:
    data: bytes  # JPEG or PNG, what a remote engine is sent
    pixels: np.ndarray  # (H, W, 3) RGB uint8, what a local engine is given
    downscaled: bool


def bounded(rgb: np.ndarray, max_pixels: int) -> np.ndarray:
    """`rgb` scaled down (area interpolation, aspect kept) to at most `max_pixels` pixels."""
    height, width = rgb.shape[:2]
    if not max_pixels or height * width <= max_pixels:
        return rgb
    scale = math.sqrt(max_pixels / (height * width))
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))


def prepare(data: bytes, what: str, max_input_pixels: int, max_model_pixels: int) -> Picture:
    rgb = decode_image(data, what, max_input_pixels)
    small = bounded(rgb, max_model_pixels)
    if small is rgb:
        return Picture(data, rgb, False)
    encoded = encode_png(small) if image_format(data) == "png" else encode_jpeg(small)
    return Picture(encoded, small, True)


def prepare_all(images: Sequence[bytes], max_input_pixels: int, max_request_pixels: int, max_model_pixels: int
                ) -> list[Picture]:
    """One Picture per image, in order; an image repeated in the request is prepared once."""
    check_pixel_budget(list(dict.fromkeys(images)), max_request_pixels, "images")
    done: dict[bytes, Picture] = {}
    for position, data in enumerate(images):
        if data not in done:
            done[data] = prepare(data, f"items[{position}].image", max_input_pixels, max_model_pixels)
    return [done[data] for data in images]
