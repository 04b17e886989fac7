"""A live source for a monitor: read at the source's own pace on a thread of its own, reconnected
with exponential backoff and jitter when it breaks, sampled to a target rate, and cut into
segments of which at most `max_waiting` wait for scoring: when scoring falls behind, the oldest
waiting segment is dropped whole (and counted), so lag and memory stay bounded.

Media time on a live feed is the wall clock since the monitor started (seconds), so it runs on
across reconnects and file loops and event rules (durations, cooldowns) see real time."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.errors import ServiceError
from services.orchestrator.sources import DEFAULT_FPS, Frame, FrameSource, FrameTooLarge, SourceInfo

LOG = logging.getLogger(__name__)


class FeedState(enum.Enum):
    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    FAILED = "failed"  # will not retry: the source itself breaks a limit
    STOPPED = "stopped"


@dataclass
class FeedStatus:
    """Counters and state, written by the feed's thread, read by the monitor (plain values)."""

    state: FeedState = FeedState.CONNECTING
    reason: str = ""
    frames_read: int = 0
    frames_dropped: int = 0  # by sampling, or in dropped segments
    segments_dropped: int = 0
    connects: int = 0


@dataclass(frozen=True)
class FeedPlan:
    segment_length: int
    sample_fps: float = 0.0  # 0: every frame
    max_waiting: int = 2  # segments cut but not yet taken by the pipeline
    loop: bool = False  # a file or folder: played again at its end, in real time
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 60.0


@dataclass
class _Waiting:
    segments: deque[list[Frame]] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)


def backoff(attempt: int, low: float, high: float) -> float:
    """Exponential backoff with full jitter in its upper half: low * 2^attempt, capped at high."""
    ceiling = min(high, low * 2 ** min(attempt, 30))
    return random.uniform(ceiling / 2, ceiling)


class LiveFeed:
    def __init__(self, open_source: Callable[[], FrameSource], plan: FeedPlan, name: str) -> None:
        self.status = FeedStatus()
        self.info = SourceInfo("stream", name, plan.sample_fps, 0)
        self._open = open_source
        self.plan = plan
        self._waiting = _Waiting()
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._started_ms = int(time.time() * 1000)
        self._thread = threading.Thread(target=self._run, name=f"feed {name}", daemon=True)
        self._thread.start()

    async def read(self, count: int) -> list[Frame]:
        """The next whole segment (`count` is the segment length); [] once stopped."""
        while True:
            with self._waiting.lock:
                if self._waiting.segments:
                    return self._waiting.segments.popleft()
                self._ready.clear()
            if self._stop.is_set():
                return []
            await self._ready.wait()

    def close(self) -> None:
        """Stop reading (the thread closes the source after its current read)."""
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._ready.set)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                source = self._open()
            except ServiceError as exc:
                attempt = self._retry_later(attempt, f"cannot connect: {exc}")
                continue
            except Exception as exc:  # a bug must not end the feed silently
                LOG.exception("opening %s failed", self.info.location)
                attempt = self._retry_later(attempt, f"cannot connect: {type(exc).__name__}: {exc}")
                continue
            self.status.state, self.status.reason = FeedState.LIVE, ""
            self.status.connects += 1
            frames_before = self.status.frames_read
            try:
                ended = self._read_all(source)
            except FrameTooLarge as exc:
                self.status.state, self.status.reason = FeedState.FAILED, str(exc)
                LOG.error("%s: %s", self.info.location, exc)
                self._stop.set()  # the detection ends; the monitor reports FAILED with the reason
                self._wake()
                return
            except ServiceError as exc:
                attempt = self._retry_later(0, str(exc))
                continue
            except Exception as exc:
                LOG.exception("reading %s failed", self.info.location)
                attempt = self._retry_later(0, f"{type(exc).__name__}: {exc}")
                continue
            finally:
                source.close()
            if ended and self.status.frames_read == frames_before:  # opens, but has no frame: do not spin
                attempt = self._retry_later(attempt, "the source has no frames")
            else:
                attempt = self._retry_later(0, "the stream ended") if ended and not self.plan.loop else 0
        self.status.state = FeedState.STOPPED
        self._wake()

    def _retry_later(self, attempt: int, reason: str) -> int:
        self.status.state = FeedState.CONNECTING if not self.status.connects else FeedState.RECONNECTING
        self.status.reason = reason
        LOG.warning("%s: %s; retrying", self.info.location, reason)
        self._stop.wait(backoff(attempt, self.plan.reconnect_min_seconds, self.plan.reconnect_max_seconds))
        return attempt + 1

    def _read_all(self, source: FrameSource) -> bool:
        """Frames until the source ends (True) or the feed stops (False)."""
        plan = self.plan
        fps = source.info.fps or DEFAULT_FPS
        began = time.monotonic()
        next_sample = 0.0
        segment: list[Frame] = []
        index = 0
        while not self._stop.is_set():
            frames = source.read(1)
            if not frames:
                return True
            if plan.loop:  # a file plays in real time, as a camera would send it
                self._stop.wait(max(0.0, began + index / fps - time.monotonic()))
            index += 1
            self.status.frames_read += 1
            now_ms = int(time.time() * 1000)
            seconds = (now_ms - self._started_ms) / 1000
            if plan.sample_fps:
                if seconds + 1e-9 < next_sample:
                    self.status.frames_dropped += 1
                    continue
                next_sample = max(next_sample + 1 / plan.sample_fps, seconds)
            segment.append(Frame(frames[0].data, seconds, now_ms))
            if len(segment) == plan.segment_length:
                self._push(segment)
                segment = []
        return False

    def _push(self, segment: list[Frame]) -> None:
        with self._waiting.lock:
            if len(self._waiting.segments) >= self.plan.max_waiting:
                dropped = self._waiting.segments.popleft()
                self.status.segments_dropped += 1
                self.status.frames_dropped += len(dropped)
            self._waiting.segments.append(segment)
        self._wake()
