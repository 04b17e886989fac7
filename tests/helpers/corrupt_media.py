"""A corpus of corrupt and hostile media, made in code: what a camera, a bad export or an attacker
can hand the orchestrator as a file, a frame folder or a stream."""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import av
import numpy as np

from services.common.images import encode_jpeg, encode_png
from tests.helpers.hostile_images import png_of_size

BOMB_SIDE = 15_000  # 225 million pixels (under FFmpeg's own limit): 675 MB as RGB from a few kB


def small_video(container: str, codec: str, frames: int = 48, side: int = 64) -> bytes:
    """A valid little video, moving noise, in `container` with `codec`."""
    out = io.BytesIO()
    rng = np.random.default_rng(7)
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=25)
        stream.width = stream.height = side
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                muxer.mux(packet)
        for packet in stream.encode():
            muxer.mux(packet)
    return out.getvalue()


def with_jpeg_dimensions(data: bytes, side: int) -> bytes:
    """Every JPEG start-of-frame in `data` rewritten to declare side x side (the container's own
    header keeps the small size: only the decoder sees the bomb)."""
    return re.sub(rb"\xff\xc0(..)(.)(....)", lambda m: b"\xff\xc0" + m.group(1) + m.group(2)
                  + struct.pack(">HH", side, side), data, flags=re.DOTALL)


def with_avi_dimensions(data: bytes, side: int) -> bytes:
    """The AVI main header's and the stream format's width and height rewritten to side x side."""
    patched = bytearray(data)
    main = patched.index(b"avih") + 8  # dwMicroSecPerFrame ... dwWidth at +32, dwHeight at +36
    patched[main + 32:main + 40] = struct.pack("<II", side, side)
    bitmap = patched.index(b"strf") + 8  # BITMAPINFOHEADER: biSize, biWidth, biHeight
    patched[bitmap + 4:bitmap + 12] = struct.pack("<ii", side, side)
    return bytes(patched)


def corrupt_files() -> dict[str, bytes]:
    """name -> content of files that are not (all) decodable video."""
    mp4 = small_video("mp4", "mpeg4")
    avi = small_video("avi", "mjpeg")
    frame = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    garbled = bytearray(mp4)
    garbled[len(mp4) // 3:] = np.random.default_rng(2).integers(0, 255, len(mp4) - len(mp4) // 3,
                                                                dtype=np.uint8).tobytes()
    return {
        "zero-byte.mp4": b"",
        "one-byte.mp4": b"\x00",
        "text.mp4": b"this is not a video\n" * 100,
        "png-named.mp4": encode_png(frame),
        "jpeg-named.avi": encode_jpeg(frame),
        "header-only.mp4": mp4[:256],
        "truncated-half.mp4": mp4[: len(mp4) // 2],
        "truncated-half.avi": avi[: len(avi) // 2],
        "garbled-after-a-third.mp4": bytes(garbled),
        "random-bytes.avi": np.random.default_rng(3).integers(0, 255, 200_000, dtype=np.uint8).tobytes(),
        "bomb-in-bitstream.avi": with_jpeg_dimensions(avi, BOMB_SIDE),
        "bomb-in-header.avi": with_avi_dimensions(with_jpeg_dimensions(avi, BOMB_SIDE), BOMB_SIDE),
        "bomb.y4m": f"YUV4MPEG2 W{BOMB_SIDE} H{BOMB_SIDE} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + b"\x80" * 4096,
    }


def corrupt_frame_folders() -> dict[str, dict[str, bytes]]:
    """name -> the files of a frame folder that cannot be read whole."""
    frame = np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    good = encode_jpeg(frame)
    frames = {f"{i:03d}.jpg": good for i in range(24)}
    return {
        "zero-byte-frame": {"000.jpg": good, "001.jpg": b""},
        "truncated-frame": frames | {"010.jpg": good[: len(good) // 2]},
        "garbled-frame": frames | {"010.jpg": good[:200] + b"\x00" * (len(good) - 200)},
        "text-as-frame": {"000.jpg": b"not a picture"},
        "png-bomb-frame": {"000.png": png_of_size(BOMB_SIDE, BOMB_SIDE, b"")},
        "jpeg-bomb-frame": {"000.jpg": with_jpeg_dimensions(good, BOMB_SIDE)},
        "bmp-bomb-frame": {"000.bmp": bmp_bomb(BOMB_SIDE)},
        "tiff-as-frame": {"000.jpg": b"II*\x00" + b"\x00" * 200},
    }


def bmp_bomb(side: int) -> bytes:
    """A 1 kB run-length-encoded BMP that declares side x side (decodes to side^2 x 3 bytes)."""
    pixels = b"\x00\x01" * 256 + b"\x00\x01"  # end-of-line runs, then end of bitmap
    header = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    palette = b"\x80\x80\x80\x00" * 256
    offset = 14 + len(header) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + palette + pixels


SPARSE_BYTES = 4 << 30  # a file that reads as 4 GiB of zeros and takes no disk


def write_corpus(folder: Path) -> list[Path]:
    """Every file and frame folder of the corpus under `folder`; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("sparse-4GiB.mp4", "sparse-4GiB-frame/000.jpg"):
        (folder / name).parent.mkdir(exist_ok=True)
        with (folder / name).open("wb") as sparse:
            sparse.truncate(SPARSE_BYTES)
        paths.append((folder / name).parent if "/" in name else folder / name)
    for name, content in corrupt_files().items():
        (folder / name).write_bytes(content)
        paths.append(folder / name)
    for name, files in corrupt_frame_folders().items():
        (folder / name).mkdir()
        for file_name, content in files.items():
            (folder / name / file_name).write_bytes(content)
        paths.append(folder / name)
    return paths
