from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import InvalidInput
from services.common.images import decode_image, encode_jpeg, encode_png, header_size


def test_png_round_trip_is_lossless_and_rgb_ordered() -> None:
    image = np.zeros((30, 40, 3), np.uint8)
    image[..., 0] = 255  # pure red
    decoded = decode_image(encode_png(image))
    assert decoded.shape == (30, 40, 3)
    assert (decoded == image).all()


def test_jpeg_header_gives_the_size_without_decoding() -> None:
    image = np.random.default_rng(0).integers(0, 255, (33, 57, 3), dtype=np.uint8)
    assert header_size(encode_jpeg(image)) == (57, 33)
    assert header_size(encode_png(image)) == (57, 33)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"GIF89a....", "not a JPEG or PNG"), (b"\x89PNG\r\n\x1a\nxx", "corrupt or truncated")],
)
def test_bad_bytes_are_refused_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_image(data, "frames[3]")


def test_corrupt_pixel_data_is_refused() -> None:
    data = encode_png(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InvalidInput, match="frames\\[0\\] could not be decoded"):
        decode_image(data[:60], "frames[0]")


def test_pixel_limit_is_checked_from_the_header() -> None:
    data = encode_png(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(InvalidInput, match="above the limit of 5000"):
        decode_image(data, max_pixels=5000)
