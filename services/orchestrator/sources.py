"""Video sources: a file (or stream URI) decoded with OpenCV, or a folder of frames.

Each frame is read once and handed on as encoded bytes: frame-folder files are sent
as they are (the reference reads the same JPEGs), decoded video frames are encoded
once (JPEG by default, PNG for exact pixels).

Opening and reading block (a stream may be slow or silent), so every detection's source
lives on a thread of its own (`open_threaded`): a stalled source delays only its own
detection. Streams are opened and read with PyAV, with a timeout; only regular files are
read as videos (a FIFO or a device would block forever)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import re
import stat
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np

from anyanomaly.v1 import orchestrator_pb2
from services.common.errors import InvalidInput, echo
from services.common.images import decode_image, encode_jpeg, encode_png, header_size, image_format
from services.common.urls import redact
from services.orchestrator.confinement import ANY_SOURCE, SourcePolicy

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
@dataclass(frozen=True)
class SourceInfo:
    kind: str  # "file", "folder" or "stream"
    location: str
    fps: float  # 0 when unknown
    num_frames: int  # 0 when unknown in advance


MAX_FRAME_FILE_BYTES = 64 << 20  # one picture of a frame folder (a 4K PNG is about 25 MB)
DEFAULT_FPS = 25.0  # media time of frames whose source has no frame rate (frame folders)


@dataclass(frozen=True)
class Frame:
    data: bytes  # JPEG or PNG
    seconds: float  # media time
    wall_ms: int = 0  # live sources: when it was read (Unix ms)


class FrameSource(Protocol):
    info: SourceInfo

    def read(self, count: int) -> list[Frame]:
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
    """A video file, decoded with OpenCV."""

    def __init__(self, location: str, encoding: FrameEncoding) -> None:
        self._capture = cv2.VideoCapture(location)
        if not self._capture.isOpened():
            raise InvalidInput(f"cannot open {echo(location, 200)} as a video: OpenCV could not read it "
                               "(unsupported or corrupt file)")
        self._encoding = encoding
        self._read = 0
        width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if encoding.max_pixels and width * height > encoding.max_pixels:  # as declared, before decoding
            self._capture.release()
            raise FrameTooLarge(too_large(location, width, height, encoding.max_pixels))
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.info = SourceInfo("file", location, fps if np.isfinite(fps) else 0.0, max(count, 0))

    def read(self, count: int) -> list[Frame]:
        frames: list[Frame] = []
        while len(frames) < count:
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                break
            check_frame_size(bgr, self.info.location, self._encoding.max_pixels)
            index = self._read + len(frames)
            frames.append(Frame(self._encoding.encode(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)),
                                index / (self.info.fps or DEFAULT_FPS)))
        if not frames and self._read == 0:
            raise InvalidInput(f"{self.info.location}: no frame could be decoded (empty or corrupt video)")
        self._read += len(frames)
        return frames

    def close(self) -> None:
        self._capture.release()


# Over HTTP, no redirect and no playlist (HLS, DASH, concat): either would make FFmpeg fetch from
# hosts the caller's URL was not checked for (confinement.py).
HTTP_FORMATS = "mpegts,mjpeg,mpjpeg,mov,matroska,flv,h264,hevc,avi,image2pipe,jpeg_pipe,png_pipe"


def _stream_options(uri: str) -> dict[str, str]:
    if uri.lower().startswith(("http://", "https://")):
        return {"max_redirects": "0", "format_whitelist": HTTP_FORMATS}
    return {}


class StreamSource:
    """A stream URI (RTSP, HTTP, ...), decoded with PyAV. Not OpenCV: its FFmpeg backend opens
    under one process-wide lock, so one silent camera would hold up every other open."""

    def __init__(self, uri: str, encoding: FrameEncoding, timeout_seconds: float) -> None:
        self._timeout = timeout_seconds
        try:  # the timeouts bound the connection and every later read
            self._container = av.open(uri, timeout=(timeout_seconds, timeout_seconds), options=_stream_options(uri))
        except (av.FFmpegError, OSError) as exc:
            raise InvalidInput(f"cannot open {echo(redact(uri), 200)} as a video: {self._why(exc)}") from None
        if not self._container.streams.video:
            self._container.close()
            raise InvalidInput(f"{echo(redact(uri), 200)} has no video stream")
        stream = self._container.streams.video[0]
        width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
        if encoding.max_pixels and width * height > encoding.max_pixels:  # as declared, before decoding
            self._container.close()
            raise FrameTooLarge(too_large(redact(uri), width, height, encoding.max_pixels))
        self._frames = self._container.decode(stream)
        self._encoding = encoding
        self._read = 0
        self.info = SourceInfo("stream", redact(uri), float(stream.average_rate or 0.0), 0)

    def _why(self, error: Exception) -> str:
        if isinstance(error, av.ExitError | TimeoutError):
            return f"it did not answer within {self._timeout:g} s"
        return f"it is unreachable or sends no video ({getattr(error, 'strerror', None) or error})"

    def read(self, count: int) -> list[Frame]:
        frames: list[Frame] = []
        while len(frames) < count:
            try:
                frame = next(self._frames)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as exc:
                raise InvalidInput(f"{echo(self.info.location, 200)} broke off after {self._read + len(frames)} "
                                   f"frames: {self._why(exc)}") from None
            rgb = frame.to_ndarray(format="rgb24")
            check_frame_size(rgb, self.info.location, self._encoding.max_pixels)
            index = self._read + len(frames)
            seconds = float(frame.time) if frame.time is not None else index / (self.info.fps or DEFAULT_FPS)
            frames.append(Frame(self._encoding.encode(rgb), seconds, int(time.time() * 1000)))
        self._read += len(frames)
        return frames

    def close(self) -> None:
        self._container.close()


class FrameTooLarge(InvalidInput):
    """A source's frames are above the size limit: reading it again will not help."""


def too_large(location: str, width: int, height: int, max_pixels: int) -> str:
    return f"{echo(location, 200)}: frames are {width}x{height}, above the limit of {max_pixels} pixels"


def check_frame_size(rgb: np.ndarray, location: str, max_pixels: int) -> None:
    height, width = rgb.shape[:2]
    if max_pixels and height * width > max_pixels:
        raise FrameTooLarge(too_large(location, width, height, max_pixels))


def read_frame_file(path: Path, shown: str) -> bytes:
    """Up to one byte more than a frame may have; a FIFO or device (swapped in after the folder
    was listed) is refused, not waited on."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:  # gone or unreadable since the folder was listed
        raise InvalidInput(f"{shown}: cannot be read ({exc.strerror})") from None
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise InvalidInput(f"{shown}: is not a regular file (a FIFO, socket or device)")
        return file.read(MAX_FRAME_FILE_BYTES + 1)


def bmp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a BMP header, or None when `data` is not a BMP."""
    if len(data) < 26 or not data.startswith(b"BM"):
        return None
    width, height = struct.unpack("<ii", data[18:26])
    return (abs(width), abs(height)) if width and height else None


class FolderSource:
    def __init__(self, folder: Path, encoding: FrameEncoding, policy: SourcePolicy = ANY_SOURCE) -> None:
        self._policy = policy
        self._files = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS), key=numeric_key
        )
        if not self._files:
            raise InvalidInput(f"{folder}: no frames in this folder (looked for {', '.join(FRAME_EXTENSIONS)} files)")
        self._encoding = encoding
        self._next = 0
        self.info = SourceInfo("folder", str(folder), 0.0, len(self._files))

    def read(self, count: int) -> list[Frame]:
        frames: list[Frame] = []
        for path in self._files[self._next : self._next + count]:
            shown = echo(str(path), 200)
            data = read_frame_file(self._policy.check_member(path), shown)  # a link out of the roots is refused
            if len(data) > MAX_FRAME_FILE_BYTES:
                raise InvalidInput(f"{shown}: more bytes than a frame may have ({MAX_FRAME_FILE_BYTES >> 20} MiB)")
            bmp = image_format(data) == "unknown"
            size = bmp_size(data) if bmp else header_size(data)
            if size is None:
                raise InvalidInput(f"{shown}: not a readable JPEG, PNG or BMP picture (empty, truncated or another "
                                   "format)")
            if self._encoding.max_pixels and size[0] * size[1] > self._encoding.max_pixels:  # before decoding
                raise FrameTooLarge(too_large(str(path), *size, self._encoding.max_pixels))
            if bmp:  # decoded once here and sent as PNG (the services take JPEG and PNG)
                bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise InvalidInput(f"{shown}: a corrupt BMP picture")
                data = encode_png(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            frames.append(Frame(data, (self._next + len(frames)) / DEFAULT_FPS))
        self._next += len(frames)
        return frames

    def close(self) -> None:
        return None


MAX_PATH_CHARS = 4096  # PATH_MAX


def _file_kind(target: Path, location: str) -> str:
    """"dir" or "file" for a readable source; InvalidInput for anything else."""
    try:
        mode = target.stat().st_mode  # stat never blocks, unlike opening a FIFO
    except FileNotFoundError:
        raise InvalidInput(f"no such file or folder: {echo(location, 200)}") from None
    except (OSError, ValueError) as exc:  # too long a name, no permission, a NUL in the path
        raise InvalidInput(f"cannot read {echo(location, 200)}: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(mode):
        return "dir"
    if not stat.S_ISREG(mode):
        raise InvalidInput(f"{echo(location, 200)} is not a regular file (a FIFO, socket or device); give a video "
                           "file or a folder of frames")
    return "file"


def open_source(
    path: str = "", frame_folder: str = "", uri: str = "", encoding: FrameEncoding = FrameEncoding(),
    policy: SourcePolicy = ANY_SOURCE, stream_timeout_seconds: float = 10.0,
) -> FrameSource:
    """Open a source (blocking: call it from the source's own thread, see open_threaded), as far
    as `policy` allows."""
    if uri:
        if len(uri) > MAX_PATH_CHARS:
            raise InvalidInput(f"the stream URI has {len(uri)} characters; the limit is {MAX_PATH_CHARS}")
        policy.check_stream(uri)
        return StreamSource(uri, encoding, stream_timeout_seconds)
    location = path or frame_folder
    if not location:
        raise InvalidInput("no source given: set a video file path, a frame folder or a stream URI")
    if len(location) > MAX_PATH_CHARS:
        raise InvalidInput(f"the path has {len(location)} characters; the limit is {MAX_PATH_CHARS}")
    target = policy.check_path(location)
    if _file_kind(target, location) == "dir":
        return FolderSource(target, encoding, policy)
    if frame_folder:
        raise InvalidInput(f"{echo(location, 200)} is a file, not a folder of frames")
    return VideoSource(str(target), encoding)


class AsyncFrameSource(Protocol):
    """What the detection pipeline reads frames from."""

    info: SourceInfo

    async def read(self, count: int) -> list[Frame]:
        """The next `count` frames (fewer at the end, [] when exhausted)."""

    def close(self) -> None: ...


class ThreadedSource:
    """A FrameSource whose blocking calls run on a thread of its own."""

    def __init__(self, source: FrameSource, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        self.info = source.info
        self._source = source
        self._executor = executor

    async def read(self, count: int) -> list[Frame]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._source.read, count)

    def close(self) -> None:
        """Release the source after any read in progress, without waiting for it."""
        self._executor.submit(self._source.close)
        self._executor.shutdown(wait=False)


async def open_threaded(*args: object, **kwargs: object) -> ThreadedSource:
    """open_source(...) on a new thread that then serves this source's reads."""
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="source")
    opening = asyncio.get_running_loop().run_in_executor(
        executor, functools.partial(open_source, *args, **kwargs))  # type: ignore[arg-type]
    try:
        source = await asyncio.shield(opening)
    except asyncio.CancelledError:
        # The open goes on in its thread (a silent stream takes its whole timeout): the caller's
        # place stays taken until it ends and what it opened is closed, so callers that go away
        # cannot pile up threads and sockets.
        await asyncio.wait({opening})
        if not opening.cancelled() and opening.exception() is None:
            opening.result().close()
        executor.shutdown(wait=False)
        raise
    except BaseException:
        executor.shutdown(wait=False)
        raise
    return ThreadedSource(source, executor)


class PushedSource:
    """Frames a client pushes over DetectStream. Frames are taken from the stream only when the
    pipeline wants the next segment, so gRPC flow control holds the client back when scoring is
    slower than it pushes: the server never buffers more than a few segments."""

    def __init__(self, messages: AsyncIterator[orchestrator_pb2.DetectStreamRequest], fps: float,
                 max_pixels: int) -> None:
        self._messages = messages
        self._fps = fps or DEFAULT_FPS
        self._max_pixels = max_pixels
        self._anchor = (0.0, 0)  # (media time, frame number) of the last frame that carried its time
        self._count = 0
        self.info = SourceInfo("pushed", "DetectStream", fps, 0)

    async def read(self, count: int) -> list[Frame]:
        frames: list[Frame] = []
        async for message in self._messages:
            if not message.HasField("frame"):
                raise InvalidInput("DetectStream takes one config message, then only frame messages")
            data = message.frame.image.data
            what = f"frame {self._count}"
            size = header_size(data) if image_format(data) != "unknown" else None
            if size is None:
                decode_image(data, what)  # raises with what is wrong
            elif self._max_pixels and size[0] * size[1] > self._max_pixels:
                decode_image(data, what, self._max_pixels)
            if message.frame.HasField("media_seconds"):  # later frames without a time count on from here
                if not 0 <= message.frame.media_seconds < 1e12:
                    raise InvalidInput(f"{what}: media_seconds must be a time in seconds, 0 or more, got "
                                       f"{echo(message.frame.media_seconds, 20)}")
                self._anchor = (message.frame.media_seconds, self._count)
            seconds = self._anchor[0] + (self._count - self._anchor[1]) / self._fps
            self._count += 1
            frames.append(Frame(data, seconds, int(time.time() * 1000)))
            if len(frames) == count:
                break
        return frames

    def close(self) -> None:
        return None
