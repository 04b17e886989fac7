"""Monitors: live sources watched around the clock, each with its texts, event rules and delivery
targets; created, changed, paused and removed at run time.

A monitor runs three things: its feed (the source on a thread: reconnects, sampling, bounded
lag), its detection (the pipeline over the feed, with causal scores and the event rules) and one
delivery worker per target. Updating texts, rules or options restarts only the detection: the
source stays connected; events still open then close."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from dataclasses import replace
from pathlib import Path

from anyanomaly.v1 import events_pb2, monitors_pb2, monitors_pb2_grpc
from services.common.errors import DependencyUnavailable, InvalidInput, NotFound, Overloaded, ServiceError, echo
from services.common.interceptors import current_caller
from services.common.server import RpcContext
from services.common.urls import redact
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.live.access import LiveAccess
from services.orchestrator.live.delivery import DeliveryWorker, check_targets
from services.orchestrator.live.events import EventEngine, rules_from_proto
from services.orchestrator.live.feed import FeedPlan, FeedState, LiveFeed, backoff
from services.orchestrator.live.notify import Changes
from services.orchestrator.live.recorder import EventRecorder, Owner, plain_events
from services.orchestrator.pipeline import Detector, SegmentOutcome, Summary
from services.orchestrator.requests import checked_texts, detect_params, frame_encoding, source_policy
from services.orchestrator.sources import open_source
from services.orchestrator.store.database import StoreUnavailable
from services.orchestrator.store.store import NewEvent, Store, now_ms

LOG = logging.getLogger(__name__)
MAX_SAMPLE_FPS = 240.0
MAX_TARGETS = 16
DELETE_DRAIN_SECONDS = 10.0
STATES = {FeedState.CONNECTING: monitors_pb2.MONITOR_STATE_CONNECTING, FeedState.LIVE: monitors_pb2.MONITOR_STATE_LIVE,
          FeedState.RECONNECTING: monitors_pb2.MONITOR_STATE_RECONNECTING,
          FeedState.FAILED: monitors_pb2.MONITOR_STATE_FAILED, FeedState.STOPPED: monitors_pb2.MONITOR_STATE_PAUSED}


def public_spec(spec: monitors_pb2.MonitorSpec) -> monitors_pb2.MonitorSpec:
    """The spec without secrets (webhook keys are write-only, URL passwords, the camera's too, are masked)."""
    shown = monitors_pb2.MonitorSpec()
    shown.CopyFrom(spec)
    shown.source.uri = redact(shown.source.uri)
    for target in shown.targets:
        if target.HasField("webhook"):
            target.webhook.secret = ""
            target.webhook.url = redact(target.webhook.url)
        if target.HasField("mqtt"):
            target.mqtt.url = redact(target.mqtt.url)
    return shown


class MonitorRunner:
    def __init__(self, monitor_id: str, spec: monitors_pb2.MonitorSpec, paused: bool, created_ms: int,
                 updated_ms: int, services: MonitorRunners, owner: str = "") -> None:
        self.monitor_id = monitor_id
        self.spec = spec
        self.paused = paused
        self.owner = owner
        self.created_ms, self.updated_ms = created_ms, updated_ms
        self._services = services
        self._feed: LiveFeed | None = None
        self._detection: asyncio.Task[None] | None = None
        self._deliveries: list[tuple[DeliveryWorker, asyncio.Task[None]]] = []
        self._failure = ""  # FAILED: why (the detection stopped for good)
        self._problem = ""  # a passing trouble of the detection (a service down), shown while it lasts
        self._engine: EventEngine | None = None
        self._segments_scored = 0
        self._last_segment_wall_ms = 0
        self._lag_seconds = 0.0

    # Life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Deliver the monitor's events and, unless it is paused, read and score its source."""
        await self._start_deliveries()
        if not self.paused:
            self.start_reading()

    def start_reading(self) -> None:
        settings = self._services.settings
        source = self.spec.source
        plan = FeedPlan(
            segment_length=detect_params(self.spec.options, settings).segment_length,
            sample_fps=self.spec.sample_fps, max_waiting=settings.max_lag_segments, loop=not source.uri,
            reconnect_min_seconds=settings.reconnect_min_seconds, reconnect_max_seconds=settings.reconnect_max_seconds,
        )
        opener = functools.partial(open_source, source.path, source.frame_folder, source.uri,
                                   frame_encoding(settings), source_policy(settings), settings.stream_timeout_seconds)
        self._feed = LiveFeed(opener, plan, redact(source.uri) or source.path or source.frame_folder)
        self._failure = ""
        self._start_detection()

    async def _start_deliveries(self) -> None:
        services, settings = self._services, self._services.settings
        texts = checked_texts(self.spec.texts, self.spec.options, settings.max_texts)  # as detected: split
        workers = [DeliveryWorker(services.store, services.changes, self.snapshot(), texts, target,
                                  settings.webhook_attempts, settings.webhook_backoff_seconds,
                                  settings.webhook_timeout_seconds) for target in self.spec.targets]
        for worker in workers:  # before any event of this detection can be stored
            await worker.start_cursor()
        self._deliveries = [(worker, asyncio.create_task(worker.run())) for worker in workers]

    def _start_detection(self) -> None:
        self._detection = asyncio.create_task(self._detect_forever(), name=f"monitor {self.monitor_id}")

    async def stop_reading(self) -> None:
        """Stop reading and scoring (open events close); deliveries go on."""
        if self._feed is not None:
            self._feed.close()
        await self._stop_detection()
        self._feed = None

    async def _stop_deliveries(self, drain_seconds: float = 0.0) -> None:
        """Stop the delivery workers, after up to `drain_seconds` to deliver what is stored."""
        tasks = [task for _, task in self._deliveries]
        if drain_seconds and tasks:
            for worker, _ in self._deliveries:
                worker.finish()
            self._services.changes.notify()
            await asyncio.wait(tasks, timeout=drain_seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._deliveries = []

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop everything (the monitor is deleted, or the orchestrator stops: a restart resumes
        deliveries from their stored cursors)."""
        await self.stop_reading()
        await self._stop_deliveries(drain_seconds)

    async def _stop_detection(self) -> None:
        if self._detection is not None:
            self._detection.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._detection
            self._detection = None
        await self._close_open_events()

    async def reconfigure(self, spec: monitors_pb2.MonitorSpec) -> None:
        """New texts, rules, options or targets; the source stays connected."""
        # Sinks announce the texts (MQTT discovery), so new texts restart them too; each resumes
        # from its stored cursor.
        targets_changed = list(spec.targets) != list(self.spec.targets) or list(spec.texts) != list(self.spec.texts)
        self.spec = spec
        if targets_changed:
            await self._stop_deliveries()
            await self._start_deliveries()
        if self.paused or self._feed is None:
            return
        length = detect_params(spec.options, self._services.settings).segment_length
        if length != self._feed.plan.segment_length or spec.sample_fps != self._feed.plan.sample_fps:
            await self.stop_reading()  # a new cut of the source: connect again
            self.start_reading()
            return
        await self._stop_detection()
        self._failure = ""
        self._start_detection()

    # Detection --------------------------------------------------------------------------------

    async def _detect_forever(self) -> None:
        """The pipeline over the feed; a service that is down is waited for, with backoff."""
        attempt = 0
        while True:
            try:
                await self._detect()
                return
            except (DependencyUnavailable, StoreUnavailable) as exc:
                self._problem = f"waiting for a service: {exc}"
            except ServiceError as exc:  # e.g. a frame above the size limit: retrying will not help
                self._failure = str(exc)
                LOG.error("monitor %s failed: %s", self.monitor_id, exc)
                if self._feed is not None:
                    self._feed.close()
                return
            except Exception as exc:
                self._failure = f"internal error: {type(exc).__name__}: {exc}"
                LOG.exception("monitor %s failed", self.monitor_id)
                if self._feed is not None:
                    self._feed.close()
                return
            await asyncio.sleep(backoff(attempt, self._services.settings.reconnect_min_seconds,
                                        self._services.settings.reconnect_max_seconds))
            attempt += 1

    async def _detect(self) -> None:
        services, settings = self._services, self._services.settings
        assert self._feed is not None
        texts = checked_texts(self.spec.texts, self.spec.options, settings.max_texts)
        params = replace(detect_params(self.spec.options, settings), keep_images=True)
        if self._engine is None:
            self._engine = EventEngine(rules_from_proto(self.spec.rules, texts))
        engine = self._engine
        budget = (self.spec.evidence_budget_bytes or settings.evidence_budget_mb << 20)
        owner = Owner(monitor_id=self.monitor_id, run=uuid.uuid4().hex[:8])
        recorder = EventRecorder(services.store, owner, budget, self.spec.evidence_days or settings.evidence_days)
        async for update in services.detector.detect(self._feed, texts, params, live=True):
            if isinstance(update, SegmentOutcome):
                self._problem = ""
                self._segments_scored += 1
                self._last_segment_wall_ms = update.wall_ms
                self._lag_seconds = max(0.0, time.time() - update.wall_ms / 1000)
                events = await recorder.record(engine, update, engine.observe(update))
                if events:  # stored even when a pause cancels this detection now: no CLOSE without its OPEN
                    await asyncio.shield(services.store.add_events(events))
                    services.changes.notify()
            elif isinstance(update, Summary):
                return

    async def _close_open_events(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        closing = engine.finish()
        if closing:
            events = plain_events(closing, Owner(monitor_id=self.monitor_id), self._segments_scored)
            await asyncio.shield(self._services.store.add_events(events))
            self._services.changes.notify()

    def fail(self, reason: str) -> None:
        self._failure = reason

    # Reporting --------------------------------------------------------------------------------

    def snapshot(self) -> monitors_pb2.Monitor:
        feed = self._feed
        if self.paused:
            state, reason = monitors_pb2.MONITOR_STATE_PAUSED, ""
        elif self._failure:
            state, reason = monitors_pb2.MONITOR_STATE_FAILED, self._failure
        elif feed is None:
            state, reason = monitors_pb2.MONITOR_STATE_CONNECTING, ""
        else:
            state, reason = STATES[feed.status.state], feed.status.reason or self._problem
        status = feed.status if feed is not None else None
        return monitors_pb2.Monitor(
            monitor_id=self.monitor_id, spec=public_spec(self.spec), state=state, state_reason=reason,
            frames_read=status.frames_read if status else 0, frames_dropped=status.frames_dropped if status else 0,
            segments_dropped=status.segments_dropped if status else 0, segments_scored=self._segments_scored,
            last_segment_wall_ms=self._last_segment_wall_ms, lag_seconds=self._lag_seconds,
            created_ms=self.created_ms, updated_ms=self.updated_ms,
        )


class MonitorRunners:
    """The monitors of this orchestrator, kept in the store and run here."""

    def __init__(self, store: Store, detector: Detector, settings: OrchestratorSettings, changes: Changes) -> None:
        self.store, self.detector, self.settings, self.changes = store, detector, settings, changes
        self._runners: dict[str, MonitorRunner] = {}
        self._lock = asyncio.Lock()  # one change to the set of monitors at a time

    async def resume(self) -> None:
        """Start the stored monitors; events a crash left open close first."""
        for stored in await self.store.monitors():
            monitor_id = stored.monitor_id
            unclosed = await self.store.unclosed_events(monitor_id)
            if unclosed:
                await self.store.add_events([closed_after_restart(event) for event in unclosed])
            runner = MonitorRunner(monitor_id, stored.spec, stored.paused, stored.created_ms, stored.updated_ms, self,
                                   stored.owner)
            self._runners[monitor_id] = runner
            try:
                await runner.start()
            except Exception:  # one broken monitor must not keep the orchestrator from starting
                LOG.exception("monitor %s could not start", monitor_id)
                runner.fail("could not start; see the orchestrator's log")

    async def close(self) -> None:
        await asyncio.gather(*(runner.stop() for runner in self._runners.values()))
        self._runners.clear()

    def evidence_budget(self, owner: str) -> int:
        """A monitor's own evidence budget in bytes; 0 for the default (or not a monitor)."""
        runner = self._runners.get(owner)
        return runner.spec.evidence_budget_bytes if runner is not None else 0

    def evidence_days(self, owner: str) -> float:
        runner = self._runners.get(owner)
        return runner.spec.evidence_days if runner is not None else 0.0

    def get(self, monitor_id: str) -> MonitorRunner:
        runner = self._runners.get(monitor_id)
        if runner is None:
            raise NotFound(f"no monitor {echo(monitor_id)}")
        return runner

    def all(self) -> list[MonitorRunner]:
        return sorted(self._runners.values(), key=lambda r: (r.created_ms, r.monitor_id))

    def check(self, spec: monitors_pb2.MonitorSpec) -> None:
        source = spec.source
        given = [s for s in (source.path, source.frame_folder, source.uri) if s]
        if len(given) != 1:
            raise InvalidInput("a monitor watches one source: set source.uri (a stream) or source.path / "
                               "source.frame_folder (played in a loop)")
        if len(spec.name) > 200:
            raise InvalidInput(f"the monitor name has {len(spec.name)} characters; at most 200")
        texts = checked_texts(spec.texts, spec.options, self.settings.max_texts)
        detect_params(spec.options, self.settings)
        rules_from_proto(spec.rules, texts)
        if not (math.isfinite(spec.sample_fps) and 0 <= spec.sample_fps <= MAX_SAMPLE_FPS):
            raise InvalidInput(f"sample_fps must be 0 (every frame) to {MAX_SAMPLE_FPS:g}, got "
                               f"{echo(spec.sample_fps, 20)}")
        if spec.evidence_budget_bytes < 0 or not (math.isfinite(spec.evidence_days) and spec.evidence_days >= 0):
            raise InvalidInput("evidence_budget_bytes and evidence_days must be 0 (the service's defaults) or more")
        if len(spec.targets) > MAX_TARGETS:
            raise InvalidInput(f"{len(spec.targets)} delivery targets; at most {MAX_TARGETS}")
        check_targets(list(spec.targets), Path(self.store.data_dir))

    async def create(self, spec: monitors_pb2.MonitorSpec) -> monitors_pb2.Monitor:
        self.check(spec)
        if spec.source.uri:  # the URL must be a stream from an allowed host (its name is resolved)
            await asyncio.to_thread(source_policy(self.settings).check_stream, spec.source.uri)
        else:  # a file or folder must exist and lie under the media roots now
            location = spec.source.path or spec.source.frame_folder
            await asyncio.to_thread(lambda: open_source(spec.source.path, spec.source.frame_folder, "",
                                                        frame_encoding(self.settings),
                                                        source_policy(self.settings)).close())
            LOG.info("monitor source %s checked", location)
        async with self._lock:
            owner = current_caller()
            owned = sum(runner.owner == owner for runner in self._runners.values())
            if owned >= self.settings.max_monitors_per_token:
                who = f"{owner!r} has" if owner else "callers have"
                raise Overloaded(f"{who} {owned} monitors, the most --max-monitors-per-token allows; "
                                        "delete one first", reason="MONITOR_QUOTA", retry_after=0.0)
            monitor_id = uuid.uuid4().hex
            created = now_ms()
            await self.store.save_monitor(monitor_id, spec, False, created, owner)
            runner = MonitorRunner(monitor_id, spec, False, created, created, self, owner)
            self._runners[monitor_id] = runner
            await runner.start()
            return runner.snapshot()

    async def update(self, monitor_id: str, spec: monitors_pb2.MonitorSpec) -> monitors_pb2.Monitor:
        async with self._lock:
            runner = self.get(monitor_id)
            if spec.source.uri and spec.source.uri == redact(runner.spec.source.uri):  # as shown, password masked
                spec = _copy(spec)
                spec.source.uri = runner.spec.source.uri
            if spec.source != runner.spec.source:
                raise InvalidInput("a monitor's source cannot change; create a new monitor for another source")
            self.check(spec)
            merged = _keep_secrets(spec, runner.spec)
            await self.store.save_monitor(monitor_id, merged, runner.paused, runner.created_ms, runner.owner)
            runner.updated_ms = now_ms()
            await runner.reconfigure(merged)
            return runner.snapshot()

    async def set_paused(self, monitor_id: str, paused: bool) -> monitors_pb2.Monitor:
        async with self._lock:
            runner = self.get(monitor_id)
            if runner.paused != paused:
                await self.store.save_monitor(monitor_id, runner.spec, paused, runner.created_ms, runner.owner)
                runner.updated_ms = now_ms()
                runner.paused = paused
                if paused:
                    await runner.stop_reading()
                else:
                    runner.start_reading()
            return runner.snapshot()

    async def delete(self, monitor_id: str) -> monitors_pb2.Monitor:
        async with self._lock:
            runner = self.get(monitor_id)
            await runner.stop(DELETE_DRAIN_SECONDS)  # its last events (the closes) still go out
            await self.store.delete_monitor(monitor_id)
            await self.store.expire_evidence(monitor_id, 0, now_ms() + 1)  # all of its pictures
            del self._runners[monitor_id]
            shown = runner.snapshot()
            shown.state = monitors_pb2.MONITOR_STATE_PAUSED
            return shown


def closed_after_restart(event: events_pb2.Event) -> NewEvent:
    """The CLOSE of an event that was open when the orchestrator stopped without closing it."""
    closed = events_pb2.Event()
    closed.CopyFrom(event)
    closed.phase, closed.cursor, closed.has_evidence = events_pb2.EVENT_PHASE_CLOSE, 0, False
    closed.created_ms = now_ms()
    return NewEvent(closed, 0)


def _copy(spec: monitors_pb2.MonitorSpec) -> monitors_pb2.MonitorSpec:
    copied = monitors_pb2.MonitorSpec()
    copied.CopyFrom(spec)
    return copied


def _keep_secrets(new: monitors_pb2.MonitorSpec, old: monitors_pb2.MonitorSpec) -> monitors_pb2.MonitorSpec:
    """An update that leaves a webhook's secret empty keeps the one stored for the same URL (the
    client never saw it: secrets are write-only), and a target URL sent back as it was shown
    (password masked) keeps the stored one."""
    merged = monitors_pb2.MonitorSpec()
    merged.CopyFrom(new)
    stored = {redact(url): url for t in old.targets for url in (t.webhook.url, t.mqtt.url) if url}
    for target in merged.targets:
        if target.HasField("webhook") and target.webhook.url in stored:
            target.webhook.url = stored[target.webhook.url]
        if target.HasField("mqtt") and target.mqtt.url in stored:
            target.mqtt.url = stored[target.mqtt.url]
    secrets = {t.webhook.url: t.webhook.secret for t in old.targets if t.HasField("webhook")}
    for target in merged.targets:
        if target.HasField("webhook") and not target.webhook.secret:
            target.webhook.secret = secrets.get(target.webhook.url, "")
    return merged


class MonitorsServicer(monitors_pb2_grpc.MonitorsServicer):
    def __init__(self, live: LiveAccess) -> None:
        self._live = live

    def _monitors(self) -> MonitorRunners:
        return self._live.require().monitors

    async def CreateMonitor(self, request: monitors_pb2.CreateMonitorRequest, context: RpcContext
                            ) -> monitors_pb2.Monitor:
        return await self._monitors().create(request.spec)

    async def GetMonitor(self, request: monitors_pb2.GetMonitorRequest, context: RpcContext) -> monitors_pb2.Monitor:
        return self._monitors().get(request.monitor_id).snapshot()

    async def ListMonitors(self, request: monitors_pb2.ListMonitorsRequest, context: RpcContext
                           ) -> monitors_pb2.ListMonitorsResponse:
        if not 0 <= request.page_size <= 1000:
            raise InvalidInput(f"page_size must be 0 (100) to 1000, got {request.page_size}")
        size = request.page_size or 100
        runners = self._monitors().all()
        start = 0
        if request.page_token:
            ids = [r.monitor_id for r in runners]
            if request.page_token not in ids:
                raise InvalidInput(f"page_token {echo(request.page_token)} is not one this service returned")
            start = ids.index(request.page_token) + 1
        page = runners[start:start + size]
        token = page[-1].monitor_id if start + size < len(runners) else ""
        return monitors_pb2.ListMonitorsResponse(monitors=[r.snapshot() for r in page], next_page_token=token)

    async def UpdateMonitor(self, request: monitors_pb2.UpdateMonitorRequest, context: RpcContext
                            ) -> monitors_pb2.Monitor:
        return await self._monitors().update(request.monitor_id, request.spec)

    async def DeleteMonitor(self, request: monitors_pb2.DeleteMonitorRequest, context: RpcContext
                            ) -> monitors_pb2.Monitor:
        return await self._monitors().delete(request.monitor_id)

    async def PauseMonitor(self, request: monitors_pb2.PauseMonitorRequest, context: RpcContext
                           ) -> monitors_pb2.Monitor:
        return await self._monitors().set_paused(request.monitor_id, True)

    async def ResumeMonitor(self, request: monitors_pb2.ResumeMonitorRequest, context: RpcContext
                            ) -> monitors_pb2.Monitor:
        return await self._monitors().set_paused(request.monitor_id, False)
