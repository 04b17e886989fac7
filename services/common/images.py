"""Image bytes <-> RGB arrays (H, W, 3) uint8, with errors a caller can act on.

The size check reads only the PNG/JPEG header, so an oversized image is refused
before its pixels are decoded.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import cv2
import numpy as np

from services.common.errors import InvalidInput

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"
# JPEG start-of-frame markers that carry the image size (not DHT/JPG/DAC).
MAX_ASPECT_RATIO = 50
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_format(data: bytes) -> str:
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return "unknown"


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, or None when it cannot be read."""
    fmt = image_format(data)
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if fmt == "jpeg":
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                return None
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
                pos += 2
                continue
            (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
            if marker in _SOF_MARKERS:
                if pos + 9 > len(data):
                    return None
                height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
                return int(width), int(height)
            pos += 2 + length
        return None
    return None


def check_pixel_budget(images: Sequence[bytes], budget: int, what: str = "images") -> None:
    """Refuse a request whose images would decode to more than `budget` pixels in all, from
    their headers alone, before anything is decoded (many small files can decode to gigabytes)."""
    if not budget:
        return
    total = 0
    for data in images:
        size = header_size(data)
        if size is not None:
            total += size[0] * size[1]
    if total > budget:
        raise InvalidInput(
            f"the {len(images)} {what} of this request decode to {total} pixels, above the request budget of "
            f"{budget}; send fewer or smaller images, or raise the service's max-request-pixels setting"
        )


def decode_image(data: bytes, what: str = "image", max_pixels: int = 0) -> np.ndarray:
    """Decode PNG/JPEG bytes to an RGB uint8 array; raise InvalidInput naming `what`."""
    if not data:
        raise InvalidInput(f"{what} is empty: send JPEG or PNG bytes")
    if image_format(data) == "unknown":
        raise InvalidInput(f"{what} is not a JPEG or PNG image (starts with {data[:4]!r})")
    size = header_size(data)
    if size is None:
        raise InvalidInput(f"{what} has a corrupt or truncated {image_format(data).upper()} header")
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"{what} has an invalid size {width}x{height}")
    if max_pixels and width * height > max_pixels:
        raise InvalidInput(
            f"{what} is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}; "
            "downscale it or raise the service's max-image-pixels setting"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        # A sliver would become enormous when its short side is scaled to a model's input size.
        raise InvalidInput(f"{what} is {width}x{height}: more than {MAX_ASPECT_RATIO} times wider than tall (or "
                           "taller than wide); send camera frames")
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if array is None:
        raise InvalidInput(f"{what} could not be decoded: the {image_format(data).upper()} data is corrupt")
    return np.ascontiguousarray(cv2.cvtColor(array, cv2.COLOR_BGR2RGB))


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")


def encode_png(rgb: np.ndarray, compression: int = 1) -> bytes:
    """Lossless PNG bytes of an RGB uint8 array."""
    _check_rgb(rgb)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return bytes(buf.tobytes())


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    _check_rgb(rgb)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf.tobytes())
