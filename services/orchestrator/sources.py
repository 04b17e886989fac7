"""Video sources: a file (or stream URI) decoded with OpenCV, or a folder of frames.

Each frame is read once and handed on as encoded bytes: frame-folder files are sent
as they are (the reference reads the same JPEGs), decoded video frames are encoded
once (JPEG by default, PNG for exact pixels)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from services.common.errors import InvalidInput, PermissionDenied, echo
from services.common.images import decode_image, encode_jpeg, encode_png, header_size, image_format

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://")


@dataclass(frozen=True)
class SourceInfo:
    kind: str  # "file", "folder" or "stream"
    location: str
    fps: float  # 0 when unknown
    num_frames: int  # 0 when unknown in advance


class FrameSource(Protocol):
    info: SourceInfo

    def read(self, count: int) -> list[bytes]:
        """The next `count` frames (fewer at the end, [] when exhausted), encoded."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class FrameEncoding:
    format: str = "jpeg"  # "jpeg" or "png"
    jpeg_quality: int = 95
    max_pixels: int = 0

    def encode(self, rgb: np.ndarray) -> bytes:
        return encode_png(rgb) if self.format == "png" else encode_jpeg(rgb, self.jpeg_quality)


def numeric_key(path: Path) -> tuple[tuple[int, ...], str]:
    """Sort by all digit groups of the path, as the reference does (0.jpg, 1.jpg, ..., 10.jpg)."""
    return tuple(int(group) for group in re.findall(r"\d+", str(path))), str(path)


class VideoSource:
    def __init__(self, location: str, kind: str, encoding: FrameEncoding) -> None:
        self._capture = cv2.VideoCapture(location)
        if not self._capture.isOpened():
            raise InvalidInput(f"cannot open {echo(location, 200)} as a video: OpenCV could not read it "
                               "(unsupported or corrupt file, or an unreachable stream)")
        self._encoding = encoding
        self._read = 0
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if kind == "file" else 0
        self.info = SourceInfo(kind, location, fps if np.isfinite(fps) else 0.0, max(count, 0))

    def read(self, count: int) -> list[bytes]:
        frames: list[bytes] = []
        while len(frames) < count:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                break
            height, width = bgr.shape[:2]
            if self._encoding.max_pixels and height * width > self._encoding.max_pixels:
                raise InvalidInput(f"{self.info.location}: frames are {width}x{height}, above the limit of "
                                   f"{self._encoding.max_pixels} pixels")
            frames.append(self._encoding.encode(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        if not frames and self._read == 0:
            raise InvalidInput(f"{self.info.location}: no frame could be decoded (empty or corrupt video)")
        self._read += len(frames)
        return frames

    def close(self) -> None:
        self._capture.release()


class FolderSource:
    def __init__(self, folder: Path, encoding: FrameEncoding) -> None:
        self._files = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS), key=numeric_key
        )
        if not self._files:
            raise InvalidInput(f"{folder}: no frames in this folder (looked for {', '.join(FRAME_EXTENSIONS)} files)")
        self._encoding = encoding
        self._next = 0
        self.info = SourceInfo("folder", str(folder), 0.0, len(self._files))

    def read(self, count: int) -> list[bytes]:
        frames = []
        for path in self._files[self._next : self._next + count]:
            data = path.read_bytes()
            if image_format(data) == "unknown":  # e.g. BMP: decode once, send as PNG
                rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if rgb is None:
                    raise InvalidInput(f"{path}: not a readable image")
                data = encode_png(cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB))
            size = header_size(data)
            if size is None:
                raise InvalidInput(f"{path}: corrupt or truncated image")
            if self._encoding.max_pixels and size[0] * size[1] > self._encoding.max_pixels:
                decode_image(data, str(path), self._encoding.max_pixels)  # raises with the size in the message
            frames.append(data)
        self._next += len(frames)
        return frames

    def close(self) -> None:
        return None


def _check_roots(path: Path, roots: Sequence[str]) -> None:
    if not roots:
        return
    resolved = path.resolve()
    if not any(resolved.is_relative_to(Path(root).resolve()) for root in roots):
        raise PermissionDenied(f"{path} is outside the media folders this service may read ({', '.join(roots)})")


def open_source(
    path: str = "", frame_folder: str = "", uri: str = "", encoding: FrameEncoding = FrameEncoding(),
    media_roots: Sequence[str] = (),
) -> FrameSource:
    if uri:
        if not uri.lower().startswith(STREAM_SCHEMES):
            raise InvalidInput(f"unsupported stream URI {echo(uri, 200)}; use one of {', '.join(STREAM_SCHEMES)}")
        return VideoSource(uri, "stream", encoding)
    location = path or frame_folder
    if not location:
        raise InvalidInput("no source given: set a video file path, a frame folder or a stream URI")
    target = Path(location).expanduser()
    _check_roots(target, media_roots)
    if not target.exists():
        raise InvalidInput(f"no such file or folder: {location}")
    if target.is_dir():
        return FolderSource(target, encoding)
    if frame_folder:
        raise InvalidInput(f"{location} is a file, not a folder of frames")
    return VideoSource(str(target), "file", encoding)
