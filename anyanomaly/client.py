"""Client and AsyncClient: the orchestrator's API from Python.

    from anyanomaly import Client

    with Client("127.0.0.1:50050") as client:
        for item in client.detect("video.mp4", ["bicycle", "person lying on the ground"]):
            print(item)                       # a Segment per segment, then the Summary
        monitor = client.create_monitor(spec)  # monitors, events and jobs: the contract's messages

Every failed call raises an AnyAnomalyError subclass (anyanomaly.errors) carrying the gRPC status,
the service's message and its rich details.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import grpc

from anyanomaly.errors import from_rpc_error
from anyanomaly.v1 import (
    events_pb2,
    events_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    monitors_pb2,
    monitors_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
)
from services.common.clients import open_channel
from services.common.tls import ClientTls

T = TypeVar("T")
DEFAULT_ADDRESS = "127.0.0.1:50050"
DETECT_TIMEOUT_SECONDS = 24 * 3600.0  # a long video; the stream's own keepalive notices a dead server
CALL_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class TextScore:
    text: str
    fused: float  # g1 * frame + g2 * position + g3 * temporal
    frame: float
    position: float
    temporal: float
    reason: str  # the reason of the highest-scoring stream
    key_frames: tuple[int, ...]  # frame indices within the video
    representative: int
    screened_out: bool  # kept from full scoring by the cascade


@dataclass(frozen=True)
class Segment:
    index: int
    start_frame: int  # inclusive
    end_frame: int  # exclusive
    start_seconds: float
    end_seconds: float
    score: float  # under the detection's multi-text rule
    gated: bool  # skipped by the CLIP gate (no LVLM call)
    scores: dict[str, TextScore]
    # Everything else the service sent (timings included: not part of equality).
    message: orchestrator_pb2.SegmentResult = field(compare=False, repr=False)

    @property
    def best(self) -> TextScore | None:
        return max(self.scores.values(), key=lambda s: s.fused, default=None)


@dataclass(frozen=True)
class Summary:
    num_frames: int
    fps: float
    frame_scores: tuple[float, ...]  # one per frame, smoothed
    segments: int
    lvlm_calls: int
    random_weights: bool  # tiny or random models: the scores mean nothing
    message: orchestrator_pb2.Summary = field(compare=False, repr=False)


@dataclass(frozen=True)
class Detection:
    texts: tuple[str, ...]  # after splitting "a-b" texts
    segments: tuple[Segment, ...]
    summary: Summary


def best_reason(score: orchestrator_pb2.TextSegmentScore) -> str:
    """The reason of the stream with the highest score (the key frame's on ties, else any given)."""
    streams = (score.frame, score.position, score.temporal)
    best = max(streams, key=lambda s: s.score)
    return best.reason or next((s.reason for s in streams if s.reason), "")


def _segment(message: orchestrator_pb2.SegmentResult) -> Segment:
    scores = {}
    for score in message.scores:
        scores[score.text] = TextScore(
            score.text, score.fused, score.frame.score, score.position.score, score.temporal.score,
            best_reason(score), tuple(score.key_frames), score.representative, score.screened_out)
    return Segment(message.index, message.start_frame, message.end_frame, message.start_seconds,
                   message.end_seconds, message.score, message.gated, scores, message)


def _summary(message: orchestrator_pb2.Summary) -> Summary:
    return Summary(message.num_frames, message.fps, tuple(message.frame_scores), message.segments,
                   message.lvlm_usage.calls, message.clip_model.random_weights or message.lvlm_model.random_weights,
                   message)


def video_source(source: str | Path | orchestrator_pb2.VideoSource) -> orchestrator_pb2.VideoSource:
    """A stream URI, a frame folder (when it is a folder here) or a video file path; paths are
    read by the orchestrator, on its machine."""
    if isinstance(source, orchestrator_pb2.VideoSource):
        return source
    text = str(source)
    if "://" in text:
        return orchestrator_pb2.VideoSource(uri=text)
    path = Path(text).expanduser()
    if path.is_dir():
        return orchestrator_pb2.VideoSource(frame_folder=str(path.resolve()))
    return orchestrator_pb2.VideoSource(path=str(path.resolve()) if path.exists() else text)


def detect_request(source: str | Path | orchestrator_pb2.VideoSource, texts: Sequence[str],
                   options: orchestrator_pb2.DetectOptions | None, settings: dict[str, Any]
                   ) -> orchestrator_pb2.DetectRequest:
    merged = orchestrator_pb2.DetectOptions()
    if options is not None:
        merged.CopyFrom(options)
    given = orchestrator_pb2.DetectOptions(**settings)  # checks the names and types
    for name in settings:  # a keyword replaces that field of `options` (repeated ones too, not appended)
        cast(Any, merged).ClearField(name)
    merged.MergeFrom(given)
    return orchestrator_pb2.DetectRequest(source=video_source(source), texts=list(texts), options=merged)


def _detect_timeout(request: orchestrator_pb2.DetectRequest) -> float | None:
    """A file or folder ends; a live stream may run for as long as the caller reads it."""
    return None if request.source.uri else DETECT_TIMEOUT_SECONDS


class AsyncClient:
    """The orchestrator's API for asyncio code. `address`: HOST:PORT; `tls_ca` (with `tls_cert` and
    `tls_key` for mutual TLS): PEM files; `token`: a bearer token (the orchestrator's
    --auth-tokens-file)."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, tls_ca: str = "", tls_cert: str = "", tls_key: str = "",
                 token: str = "", timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        tls = ClientTls.from_settings(tls_ca, tls_cert, tls_key, ("tls_ca", "tls_cert", "tls_key"))
        self.address = address
        self.timeout = timeout
        self._channel = open_channel(address, default_timeout=None, tls=tls, token=token)
        self._detect = orchestrator_pb2_grpc.OrchestratorStub(self._channel)
        self._monitors = monitors_pb2_grpc.MonitorsStub(self._channel)
        self._events = events_pb2_grpc.EventsStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobsStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await method(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    async def _pages(self, method: Callable[..., Awaitable[Any]], request: Any, field: str) -> list[Any]:
        """Every item of a paged List method, page after page."""
        items: list[Any] = []
        while True:
            page = await self._unary(method, request)
            items += list(getattr(page, field))
            if not page.next_page_token:
                return items
            request.page_token = page.next_page_token

    async def _typed(self, method: Callable[..., Any], request: Any, timeout: float | None
                     ) -> AsyncGenerator[orchestrator_pb2.DetectStarted | Segment | Summary, None]:
        """A stream of DetectUpdates as the start message, typed Segments and the Summary."""
        async for update in self._stream(method, request, timeout):
            kind = update.WhichOneof("update")
            if kind == "started":
                yield update.started
            elif kind == "segment":
                yield _segment(update.segment)
            elif kind == "summary":
                yield _summary(update.summary)

    async def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> AsyncIterator[Any]:
        call = method(request, timeout=timeout)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        finally:  # the caller stopped early (or failed): end the call on the server too
            call.cancel()

    # -- detection -------------------------------------------------------------------
    async def detect(self, source: str | Path | orchestrator_pb2.VideoSource, texts: Sequence[str],
                     options: orchestrator_pb2.DetectOptions | None = None, **settings: Any
                     ) -> AsyncGenerator[Segment | Summary, None]:
        """Score a video file, a frame folder or a stream: a Segment as each is scored, then the
        Summary. `settings`: DetectOptions fields (segment_length=24, scoring_mode="SCORE_MODE_FAST",
        ...), over `options`."""
        request = detect_request(source, texts, options, settings)
        async for item in self._typed(self._detect.Detect, request, _detect_timeout(request)):
            if not isinstance(item, orchestrator_pb2.DetectStarted):
                yield item

    async def detect_all(self, source: str | Path | orchestrator_pb2.VideoSource, texts: Sequence[str],
                         options: orchestrator_pb2.DetectOptions | None = None, **settings: Any) -> Detection:
        """The whole detection at once."""
        request = detect_request(source, texts, options, settings)
        started, segments, summary = None, [], None
        async for item in self._typed(self._detect.Detect, request, _detect_timeout(request)):
            if isinstance(item, Segment):
                segments.append(item)
            elif isinstance(item, Summary):
                summary = item
            else:
                started = item
        if started is None or summary is None:
            raise RuntimeError("the detection stream ended before its summary")
        return Detection(tuple(started.texts), tuple(segments), summary)

    # -- monitors --------------------------------------------------------------------
    async def create_monitor(self, spec: monitors_pb2.MonitorSpec) -> monitors_pb2.Monitor:
        return await self._unary(self._monitors.CreateMonitor, monitors_pb2.CreateMonitorRequest(spec=spec))

    async def get_monitor(self, monitor_id: str) -> monitors_pb2.Monitor:
        return await self._unary(self._monitors.GetMonitor, monitors_pb2.GetMonitorRequest(monitor_id=monitor_id))

    async def list_monitors(self) -> list[monitors_pb2.Monitor]:
        return await self._pages(self._monitors.ListMonitors, monitors_pb2.ListMonitorsRequest(), "monitors")

    async def update_monitor(self, monitor_id: str, spec: monitors_pb2.MonitorSpec) -> monitors_pb2.Monitor:
        return await self._unary(self._monitors.UpdateMonitor,
                                 monitors_pb2.UpdateMonitorRequest(monitor_id=monitor_id, spec=spec))

    async def pause_monitor(self, monitor_id: str) -> monitors_pb2.Monitor:
        return await self._unary(self._monitors.PauseMonitor,
                                 monitors_pb2.PauseMonitorRequest(monitor_id=monitor_id))

    async def resume_monitor(self, monitor_id: str) -> monitors_pb2.Monitor:
        return await self._unary(self._monitors.ResumeMonitor,
                                 monitors_pb2.ResumeMonitorRequest(monitor_id=monitor_id))

    async def delete_monitor(self, monitor_id: str) -> monitors_pb2.Monitor:
        return await self._unary(self._monitors.DeleteMonitor,
                                 monitors_pb2.DeleteMonitorRequest(monitor_id=monitor_id))

    # -- events ----------------------------------------------------------------------
    async def list_events(self, *, monitor_id: str = "", job_id: str = "", text: str = "", since_ms: int = 0,
                          limit: int = 100) -> list[events_pb2.Event]:
        events: list[events_pb2.Event] = []
        token = ""
        while len(events) < limit:
            page = await self._unary(self._events.ListEvents, events_pb2.ListEventsRequest(
                monitor_id=monitor_id, job_id=job_id, text=text, since_ms=since_ms,
                page_size=min(1000, limit - len(events)), page_token=token))
            events += list(page.events)
            token = page.next_page_token
            if not token:
                break
        return events[:limit]

    async def watch_events(self, *, after_cursor: int = 0, monitor_id: str = "", job_id: str = "", text: str = ""
                           ) -> AsyncGenerator[events_pb2.Event, None]:
        """Events as they open, update and close, from `after_cursor` on; ends when the caller stops."""
        request = events_pb2.WatchEventsRequest(after_cursor=after_cursor, monitor_id=monitor_id, job_id=job_id,
                                                text=text)
        async for event in self._stream(self._events.WatchEvents, request, None):
            yield event

    async def get_evidence(self, event_id: str) -> events_pb2.Evidence:
        return await self._unary(self._events.GetEvidence, events_pb2.GetEvidenceRequest(event_id=event_id))

    # -- jobs ------------------------------------------------------------------------
    async def submit_job(self, source: str | Path | orchestrator_pb2.VideoSource, texts: Sequence[str],
                         options: orchestrator_pb2.DetectOptions | None = None, *, name: str = "",
                         rules: Sequence[Any] = (), **settings: Any) -> jobs_pb2.Job:
        detect = detect_request(source, texts, options, settings)
        return await self._unary(self._jobs.SubmitJob, jobs_pb2.SubmitJobRequest(
            source=detect.source, texts=detect.texts, options=detect.options, rules=list(rules), name=name))

    async def get_job(self, job_id: str) -> jobs_pb2.Job:
        return await self._unary(self._jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id))

    async def list_jobs(self) -> list[jobs_pb2.Job]:
        return await self._pages(self._jobs.ListJobs, jobs_pb2.ListJobsRequest(), "jobs")

    async def cancel_job(self, job_id: str) -> jobs_pb2.Job:
        return await self._unary(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id))

    async def watch_job(self, job_id: str, from_segment: int = 0) -> AsyncGenerator[Segment | Summary, None]:
        """The job's segments (from `from_segment`), then its summary once it is done."""
        request = jobs_pb2.WatchJobRequest(job_id=job_id, from_segment=from_segment)
        async for item in self._typed(self._jobs.WatchJob, request, None):
            if not isinstance(item, orchestrator_pb2.DetectStarted):
                yield item


class Client:
    """The same API without asyncio: each call runs on a private event loop in a background thread,
    so it works from scripts, notebooks and threads alike."""

    def __init__(self, address: str = DEFAULT_ADDRESS, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._open_streams: weakref.WeakSet[AsyncGenerator[Any, None]] = weakref.WeakSet()
        self._thread = threading.Thread(target=self._loop.run_forever, name="anyanomaly-client", daemon=True)
        self._thread.start()
        try:
            self._client = self._run(self._open(address, options))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _open(address: str, options: dict[str, Any]) -> AsyncClient:
        return AsyncClient(address, **options)  # grpc.aio channels belong to the loop they are made on

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; an iteration still open ends its call first."""
        if not self._loop.is_running():
            return
        for stream in list(self._open_streams):
            self._run(stream.aclose())
        self._run(self._client.close())
        self._run(self._loop.shutdown_asyncgens())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        """`call` on the client's loop; an interrupt here (Ctrl-C) cancels it there."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a Client method was called from its own event loop thread")
        future = asyncio.run_coroutine_threadsafe(call, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            with contextlib.suppress(BaseException):
                future.result(timeout=5)  # let the cancellation finish before going on
            raise

    def _iterate(self, stream: AsyncGenerator[T, None]) -> Generator[T, None, None]:
        async def following() -> T:
            return await stream.__anext__()  # made on the loop: its async-generator hooks apply

        self._open_streams.add(stream)
        try:
            while True:
                try:
                    yield self._run(following())
                except StopAsyncIteration:
                    return
        finally:  # the caller stopped early or failed: end the call on the server too
            self._open_streams.discard(stream)
            if self._loop.is_running():
                with contextlib.suppress(RuntimeError):  # already running or closed: nothing to end
                    self._run(stream.aclose())

    def detect(self, source: str | Path | orchestrator_pb2.VideoSource, texts: Sequence[str],
               options: orchestrator_pb2.DetectOptions | None = None, **settings: Any
               ) -> Generator[Segment | Summary, None, None]:
        return self._iterate(self._client.detect(source, texts, options, **settings))

    def detect_all(self, source: str | Path | orchestrator_pb2.VideoSource, texts: Sequence[str],
                   options: orchestrator_pb2.DetectOptions | None = None, **settings: Any) -> Detection:
        return self._run(self._client.detect_all(source, texts, options, **settings))

    def create_monitor(self, spec: monitors_pb2.MonitorSpec) -> monitors_pb2.Monitor:
        return self._run(self._client.create_monitor(spec))

    def get_monitor(self, monitor_id: str) -> monitors_pb2.Monitor:
        return self._run(self._client.get_monitor(monitor_id))

    def list_monitors(self) -> list[monitors_pb2.Monitor]:
        return self._run(self._client.list_monitors())

    def update_monitor(self, monitor_id: str, spec: monitors_pb2.MonitorSpec) -> monitors_pb2.Monitor:
        return self._run(self._client.update_monitor(monitor_id, spec))

    def pause_monitor(self, monitor_id: str) -> monitors_pb2.Monitor:
        return self._run(self._client.pause_monitor(monitor_id))

    def resume_monitor(self, monitor_id: str) -> monitors_pb2.Monitor:
        return self._run(self._client.resume_monitor(monitor_id))

    def delete_monitor(self, monitor_id: str) -> monitors_pb2.Monitor:
        return self._run(self._client.delete_monitor(monitor_id))

    def list_events(self, **filters: Any) -> list[events_pb2.Event]:
        return self._run(self._client.list_events(**filters))

    def watch_events(self, **filters: Any) -> Generator[events_pb2.Event, None, None]:
        return self._iterate(self._client.watch_events(**filters))

    def get_evidence(self, event_id: str) -> events_pb2.Evidence:
        return self._run(self._client.get_evidence(event_id))

    def submit_job(self, source: str | Path | orchestrator_pb2.VideoSource, texts: Sequence[str],
                   options: orchestrator_pb2.DetectOptions | None = None, **settings: Any) -> jobs_pb2.Job:
        return self._run(self._client.submit_job(source, texts, options, **settings))

    def get_job(self, job_id: str) -> jobs_pb2.Job:
        return self._run(self._client.get_job(job_id))

    def list_jobs(self) -> list[jobs_pb2.Job]:
        return self._run(self._client.list_jobs())

    def cancel_job(self, job_id: str) -> jobs_pb2.Job:
        return self._run(self._client.cancel_job(job_id))

    def watch_job(self, job_id: str, from_segment: int = 0) -> Generator[Segment | Summary, None, None]:
        return self._iterate(self._client.watch_job(job_id, from_segment))
