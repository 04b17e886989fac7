"""Jobs: detections of files and folders that outlive the request and the process.

Each finished segment is stored with the events it caused, in one transaction, before the next
is reported. A job that was running when the orchestrator stopped (or died) resumes on the next
start: the stored segments are read back (their frames read past, not scored again), the event
rules replay them to their state at the crash, and scoring continues with the first segment
not stored. Events get ids from the job id and a counter, so the replay names them the same."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

from anyanomaly.v1 import jobs_pb2, jobs_pb2_grpc, orchestrator_pb2
from services.common.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    ServiceError,
    echo,
)
from services.common.interceptors import current_caller
from services.common.server import RpcContext
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.live.access import LiveAccess
from services.orchestrator.live.events import EventEngine, rules_from_proto
from services.orchestrator.live.notify import Changes
from services.orchestrator.live.recorder import EventRecorder, Owner, plain_events
from services.orchestrator.messages import outcome_from_proto, to_proto
from services.orchestrator.pipeline import Detector, SegmentOutcome, Started, Summary
from services.orchestrator.requests import checked_texts, detect_params, frame_encoding, source_policy
from services.orchestrator.sources import open_threaded
from services.orchestrator.store.database import StoreUnavailable
from services.orchestrator.store.store import Store, now_ms

LOG = logging.getLogger(__name__)
TERMINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)
UNFINISHED = (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING)
MAX_PAGE = 1000


def check_request(request: jobs_pb2.SubmitJobRequest, settings: OrchestratorSettings) -> None:
    """What can be checked before the job is queued (the source is opened when it runs)."""
    if request.source.uri:
        raise InvalidInput("a job reads a file or a frame folder; watch a stream with a monitor")
    if not (request.source.path or request.source.frame_folder):
        raise InvalidInput("no source given: set source.path (a video file) or source.frame_folder")
    if len(request.name) > 200:
        raise InvalidInput(f"the job name has {len(request.name)} characters; at most 200")
    texts = checked_texts(request.texts, request.options, settings.max_texts)
    detect_params(request.options, settings)
    rules_from_proto(request.rules, texts)


def page_after(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    created, _, job_id = token.partition("/")
    if not (created.isascii() and created.isdigit() and len(created) <= 18) or not job_id:
        raise InvalidInput(f"page_token {echo(token)} is not one this service returned")
    return int(created), job_id


class JobRunner:
    def __init__(self, store: Store, detector: Detector, settings: OrchestratorSettings, changes: Changes) -> None:
        self._store = store
        self._detector = detector
        self._settings = settings
        self._changes = changes
        self._slots = asyncio.Semaphore(settings.max_running_jobs)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._admitting = asyncio.Lock()  # a caller's count and its new job: one submission at a time

    async def resume(self) -> None:
        """Start the jobs a previous process left unfinished, oldest first."""
        for job in await self._store.list_jobs(UNFINISHED, None, 1_000_000):
            self._start(job.job_id, resumed=job.state == jobs_pb2.JOB_STATE_RUNNING)

    async def submit(self, request: jobs_pb2.SubmitJobRequest) -> jobs_pb2.Job:
        check_request(request, self._settings)
        owner = current_caller()
        async with self._admitting:
            unfinished = await self._store.unfinished_jobs(owner)
            if unfinished >= self._settings.max_jobs_per_token:
                who = f"{owner!r} has" if owner else "callers have"
                raise Overloaded(f"{who} {unfinished} queued or running jobs, the most --max-jobs-per-token "
                                        "allows; wait for one to finish or cancel one", reason="JOB_QUOTA",
                                 retry_after=30.0)
            created = now_ms()
            job = jobs_pb2.Job(job_id=uuid.uuid4().hex, name=request.name, state=jobs_pb2.JOB_STATE_QUEUED,
                               source=request.source, texts=request.texts, created_ms=created, updated_ms=created)
            await self._store.add_job(job, request, owner)
        self._start(job.job_id, resumed=False)
        return job

    async def cancel(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is None:
            await self._store.update_job(job_id, unfinished_only=True, state=jobs_pb2.JOB_STATE_CANCELLED)
            return
        self._cancelled.add(job_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        """Stop the running jobs where they are; the next start resumes them."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _start(self, job_id: str, resumed: bool) -> None:
        task = asyncio.create_task(self._guarded(job_id, resumed), name=f"job {job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def _guarded(self, job_id: str, resumed: bool) -> None:
        try:
            async with self._slots:
                await self._run(job_id, resumed)
        except StoreUnavailable as exc:  # nothing can be written now; the next start resumes it
            LOG.error("job %s stopped: %s", job_id, exc)
        except asyncio.CancelledError:
            if job_id in self._cancelled:
                self._cancelled.discard(job_id)
                await self._finish(job_id, jobs_pb2.JOB_STATE_CANCELLED, "")
            raise
        except ServiceError as exc:
            await self._finish(job_id, jobs_pb2.JOB_STATE_FAILED, str(exc))
        except Exception as exc:
            LOG.exception("job %s failed", job_id)
            await self._finish(job_id, jobs_pb2.JOB_STATE_FAILED, f"internal error: {type(exc).__name__}: {exc}")

    async def _finish(self, job_id: str, state: jobs_pb2.JobState.ValueType, error: str) -> None:
        await asyncio.shield(self._store.update_job(job_id, unfinished_only=True, state=state, error=error))
        self._changes.notify()

    async def _run(self, job_id: str, resumed: bool) -> None:
        request = await self._store.job_request(job_id)
        job = await self._store.get_job(job_id)
        assert job is not None
        texts = checked_texts(request.texts, request.options, self._settings.max_texts)
        params = detect_params(request.options, self._settings)
        stored = await self._store.job_segments(job_id, 0, 1_000_000_000)
        done = [outcome_from_proto(orchestrator_pb2.DetectUpdate.FromString(body).segment) for _, body in stored]
        await self._store.update_job(job_id, state=jobs_pb2.JOB_STATE_RUNNING,
                                     restarts=job.restarts + (1 if resumed else 0))
        self._changes.notify()
        rules = rules_from_proto(request.rules, texts)
        numbers = itertools.count(1)
        engine = EventEngine(rules, lambda: f"{job_id}.{next(numbers)}")
        for outcome in done:  # the rules' state at the last stored segment; those events are stored
            engine.observe(outcome)
        recorder = EventRecorder(self._store, Owner(job_id=job_id), self._settings.evidence_budget_mb << 20,
                                 self._settings.evidence_days)
        params = replace(params, keep_images=bool(rules))
        source = await open_threaded(request.source.path, request.source.frame_folder, "",
                                     frame_encoding(self._settings), source_policy(self._settings),
                                     self._settings.stream_timeout_seconds)
        try:
            async for update in self._detector.detect(source, texts, params, done=done):
                await self._store_update(job_id, update, engine, recorder, len(done))
        finally:
            source.close()

    async def _store_update(self, job_id: str, update: Started | SegmentOutcome | Summary, engine: EventEngine,
                            recorder: EventRecorder, resumed_at: int) -> None:
        if isinstance(update, Started):
            await self._store.update_job(job_id, started=to_proto(update).SerializeToString(),
                                         num_frames=update.num_frames, segment_length=update.segment_length)
        elif isinstance(update, SegmentOutcome):
            events = await recorder.record(engine, update, engine.observe(update))
            await self._store.add_segment(job_id, update.index, to_proto(update).SerializeToString(), events)
        else:
            closing = plain_events(engine.finish(), Owner(job_id=job_id), update.segments)
            await self._store.finish_job(job_id, to_proto(update).SerializeToString(), closing)
        self._changes.notify()


class JobsServicer(jobs_pb2_grpc.JobsServicer):
    def __init__(self, live: LiveAccess) -> None:
        self._live = live

    async def SubmitJob(self, request: jobs_pb2.SubmitJobRequest, context: RpcContext) -> jobs_pb2.Job:
        return await self._live.require().jobs.submit(request)

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: RpcContext) -> jobs_pb2.Job:
        return await self._job(request.job_id)

    async def _job(self, job_id: str) -> jobs_pb2.Job:
        job = await self._live.require().store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {echo(job_id)}")
        return job

    async def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: RpcContext) -> jobs_pb2.ListJobsResponse:
        store = self._live.require().store
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidInput(f"page_size must be 0 (100) to {MAX_PAGE}, got {request.page_size}")
        size = request.page_size or 100
        states = [request.state] if request.state else []
        jobs = await store.list_jobs(states, page_after(request.page_token), size + 1)
        token = f"{jobs[size - 1].created_ms}/{jobs[size - 1].job_id}" if len(jobs) > size else ""
        return jobs_pb2.ListJobsResponse(jobs=jobs[:size], next_page_token=token)

    async def CancelJob(self, request: jobs_pb2.CancelJobRequest, context: RpcContext) -> jobs_pb2.Job:
        job = await self._job(request.job_id)
        if job.state in TERMINAL:
            raise FailedPrecondition(f"job {job.job_id} has ended ({jobs_pb2.JobState.Name(job.state)})")
        await self._live.require().jobs.cancel(job.job_id)
        return await self._job(job.job_id)

    async def WatchJob(self, request: jobs_pb2.WatchJobRequest, context: RpcContext
                       ) -> AsyncIterator[orchestrator_pb2.DetectUpdate]:
        live = self._live.require()
        job = await self._job(request.job_id)
        if request.from_segment < 0:
            raise InvalidInput(f"from_segment must be 0 or more, got {request.from_segment}")
        started_sent, next_segment = False, request.from_segment
        while True:
            mark = live.changes.mark()
            job = await self._job(job.job_id)
            started, summary = await live.store.job_blobs(job.job_id)
            if started is not None and not started_sent:
                started_sent = True
                yield orchestrator_pb2.DetectUpdate.FromString(started)
            segments = await live.store.job_segments(job.job_id, next_segment) if started_sent else []
            if segments:
                events = await live.store.job_events(job.job_id, next_segment)
                last = segments[-1][0]
                for index, body in segments:
                    yield orchestrator_pb2.DetectUpdate.FromString(body)
                    for _, event in (e for e in events if e[0] == index):
                        yield orchestrator_pb2.DetectUpdate(event=event)
                next_segment = last + 1
                continue
            if job.state == jobs_pb2.JOB_STATE_SUCCEEDED and summary is not None:
                for segment, event in await live.store.job_events(job.job_id, next_segment):
                    if segment >= job.segments_done:  # the closes when the source ended
                        yield orchestrator_pb2.DetectUpdate(event=event)
                yield orchestrator_pb2.DetectUpdate.FromString(summary)
                return
            if job.state == jobs_pb2.JOB_STATE_FAILED:
                raise FailedPrecondition(f"job {job.job_id} failed: {job.error}")
            if job.state == jobs_pb2.JOB_STATE_CANCELLED:
                raise Cancelled(f"job {job.job_id} was cancelled")
            if live.changes.closed:
                raise NotReady(f"the orchestrator is stopping; watch job {job.job_id} again from segment "
                               f"{next_segment}")
            await live.changes.wait(mark)
