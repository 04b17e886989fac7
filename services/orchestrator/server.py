"""Orchestrator servicer: protobuf <-> the detection pipeline, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import Counter, Gauge

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
from services.common.auth import TokenFile
from services.common.errors import InvalidInput, NotReady, Overloaded, ServiceError, StartupError, echo
from services.common.server import RpcContext, ServiceSpec
from services.common.tls import ClientTls
from services.common.urls import is_loopback_host
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.live.access import Live, LiveAccess
from services.orchestrator.live.events import EventEngine, rules_from_proto
from services.orchestrator.live.events import to_proto as event_proto
from services.orchestrator.live.events_service import EventsServicer
from services.orchestrator.live.jobs import JobRunner, JobsServicer
from services.orchestrator.live.monitors import MonitorRunners, MonitorsServicer
from services.orchestrator.live.notify import Changes
from services.orchestrator.messages import to_proto
from services.orchestrator.pipeline import Detector, SegmentOutcome, Summary
from services.orchestrator.requests import checked_texts, detect_params, frame_encoding, source_policy
from services.orchestrator.service_clients import ServiceClients
from services.orchestrator.sources import PushedSource, open_threaded
from services.orchestrator.store.holder import Holder
from services.orchestrator.store.store import Store

log = logging.getLogger(__name__)
SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name
SERVICE_NAMES = [SERVICE_NAME, jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
                 monitors_pb2.DESCRIPTOR.services_by_name["Monitors"].full_name,
                 events_pb2.DESCRIPTOR.services_by_name["Events"].full_name]
MAX_STREAM_FPS = 240.0
DETECTIONS_RUNNING = Gauge("anyanomaly_detections_running", "Detect and DetectStream calls running")
DETECTIONS_REFUSED = Counter("anyanomaly_detections_refused_total", "detections refused at --max-detections")


class Admission:
    """At most `limit` detections at once: one more is refused at once (RESOURCE_EXHAUSTED), not
    queued into timeouts. A detection's slot is freed when it ends, however it ends (a client that
    goes away cancels it, and with it the calls it has in flight downstream)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.running = limit, 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.running >= self.limit:
            DETECTIONS_REFUSED.inc()
            raise Overloaded(f"{self.running} detections are running, the most this orchestrator takes "
                             f"(--max-detections); retry later, or add orchestrator replicas and LVLM capacity",
                             reason="DETECTIONS_AT_CAPACITY")
        self.running += 1
        DETECTIONS_RUNNING.inc()
        try:
            yield
        finally:
            self.running -= 1
            DETECTIONS_RUNNING.dec()


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, settings: OrchestratorSettings, detector: Detector) -> None:
        self._settings = settings
        self._detector = detector
        self.admission = Admission(settings.max_detections)

    async def Detect(
        self, request: orchestrator_pb2.DetectRequest, context: RpcContext
    ) -> AsyncIterator[orchestrator_pb2.DetectUpdate]:
        texts = checked_texts(request.texts, request.options, self._settings.max_texts)
        params = detect_params(request.options, self._settings)
        with self.admission.slot():
            source = await open_threaded(request.source.path, request.source.frame_folder, request.source.uri,
                                         frame_encoding(self._settings), source_policy(self._settings),
                                         self._settings.stream_timeout_seconds)
            try:
                async for update in self._detector.detect(source, texts, params):
                    yield to_proto(update, with_images=params.keep_images)
            finally:
                source.close()

    async def DetectStream(
        self, requests: AsyncIterator[orchestrator_pb2.DetectStreamRequest], context: RpcContext
    ) -> AsyncIterator[orchestrator_pb2.DetectUpdate]:
        first = await anext(aiter(requests), None)
        if first is None or not first.HasField("config"):
            raise InvalidInput("DetectStream starts with a config message (texts and options), then the frames")
        config = first.config
        if not (math.isfinite(config.fps) and 0 <= config.fps <= MAX_STREAM_FPS):
            raise InvalidInput(f"fps must be 0 (25) to {MAX_STREAM_FPS:g}, got {echo(config.fps, 20)}")
        texts = checked_texts(config.texts, config.options, self._settings.max_texts)
        params = detect_params(config.options, self._settings)
        events = EventEngine(rules_from_proto(config.rules, texts))
        cursor = itertools.count(1)
        source = PushedSource(requests, config.fps, self._settings.max_image_pixels)
        with self.admission.slot():
            async for update in self._detector.detect(source, texts, params):
                changes = events.finish() if isinstance(update, Summary) else []
                for change in changes:  # events still open close before the summary
                    yield orchestrator_pb2.DetectUpdate(event=event_proto(change, next(cursor)))
                yield to_proto(update, with_images=params.keep_images)
                for change in events.observe(update) if isinstance(update, SegmentOutcome) else []:
                    yield orchestrator_pb2.DetectUpdate(event=event_proto(change, next(cursor)))


async def start_live(settings: OrchestratorSettings, detector: Detector) -> Live:
    """Open the store, then resume the jobs and monitors it holds (call once holding it)."""
    store = await asyncio.to_thread(Store.open, Path(settings.data_dir).expanduser(), settings.database_url)
    changes = Changes(settings.event_poll_seconds)
    live = Live(store, changes, JobRunner(store, detector, settings, changes),
                MonitorRunners(store, detector, settings, changes))
    await live.jobs.resume()
    await live.monitors.resume()
    live.background.append(asyncio.create_task(sweep_forever(live, settings)))
    return live


async def sweep_forever(live: Live, settings: OrchestratorSettings) -> None:
    """Remove old evidence (of every owner, active or not), events and dead letters."""
    while True:
        try:
            now = int(time.time() * 1000)
            for owner in await live.store.evidence_owners():
                budget = live.monitors.evidence_budget(owner) or settings.evidence_budget_mb << 20
                days = live.monitors.evidence_days(owner) or settings.evidence_days
                await live.store.expire_evidence(owner, budget, now - int(days * 86_400_000))
            await live.store.forget_before(now - int(settings.event_days * 86_400_000))
        except ServiceError as exc:
            log.warning("retention sweep failed: %s", exc)
        await asyncio.sleep(settings.retention_sweep_seconds)


async def drain_live(live: Live) -> None:
    """Before in-flight RPCs get their grace: watchers end, monitors and jobs stop where they are
    (open events close; a restart resumes jobs and monitors)."""
    live.changes.close()
    for task in live.background:
        task.cancel()
    await asyncio.gather(*live.background, return_exceptions=True)
    await live.monitors.close()
    await live.jobs.close()


async def stop_live(live: Live) -> None:
    await drain_live(live)
    await asyncio.to_thread(live.store.close)


def build_service(settings: OrchestratorSettings, detector: Detector | None = None) -> ServiceSpec:
    """`detector`: a test's own, to look at the endpoints it calls."""
    detector = detector or Detector()
    access = LiveAccess("this orchestrator keeps no jobs, monitors or events: start it with --data-dir"
                        if not settings.data_dir else "the orchestrator is starting; retry shortly")

    holder = Holder(Path(settings.data_dir).expanduser(), settings.database_url)
    waiting: list[asyncio.Task[None]] = []
    tokens: list[TokenFile] = []  # loaded at start (a bad file stops start-up with one line)
    grpc_port: list[int] = []  # this server's, once bound: where the console's gateway calls
    consoles: list[Any] = []  # the web console, with --http-port

    def authorize(method: str, context: Any) -> str:
        if not tokens:
            raise NotReady("the orchestrator is starting; retry shortly")
        return tokens[0].authorize(method, context)

    async def take_over_when_free() -> None:
        while not await asyncio.to_thread(holder.try_hold):
            await asyncio.sleep(settings.holder_retry_seconds)  # passive: another orchestrator is active
        access.live = await start_live(settings, detector)
        log.info("running the jobs and monitors of the data dir")

    async def start() -> None:  # channels belong to the running event loop
        if settings.http_port and settings.tls_cert:
            raise StartupError("--http-port: the console calls the orchestrator in plaintext, so it is not offered "
                               "with --tls-cert; serve it from an orchestrator without TLS on 127.0.0.1 behind your "
                               "own HTTPS proxy, or leave --http-port unset")
        if settings.auth_tokens_file:
            tokens.append(TokenFile(settings.auth_tokens_file, certificates_verified=bool(settings.tls_client_ca)))
        elif not is_loopback_host(settings.host) and not settings.tls_client_ca:
            log.warning("serving WITHOUT TOKENS on %s: anyone who reaches this port may run detections and manage "
                        "monitors and jobs; set --auth-tokens-file (anyanomaly token new)", settings.host)
        tls = ClientTls.from_settings(settings.tls_ca, settings.tls_client_cert,
                                      settings.tls_client_key)
        detector.attach(await ServiceClients.open(
            settings.clip_address, settings.context_address, settings.lvlm_address, settings.rpc_timeout_seconds,
            settings.max_message_mb, settings.keepalive_seconds, tls))
        if settings.data_dir:
            if await asyncio.to_thread(holder.try_hold):
                access.live = await start_live(settings, detector)
            else:
                access.missing_reason = ("another orchestrator runs the jobs, monitors and events of this data "
                                         "dir / database; this one takes over when it stops")
                log.warning("standing by: %s", access.missing_reason)
                waiting.append(asyncio.create_task(take_over_when_free()))
        if settings.http_port:
            await start_console()

    async def start_console() -> None:
        from services.orchestrator.console.gateway import Console, HttpCaller  # aiohttp only when asked for

        def authorize_http(method: str, authorization: str) -> None:
            tokens[0].authorize(method, HttpCaller(authorization))

        roots = [Path(r.strip()).expanduser() for r in settings.media_roots.split(",") if r.strip()]
        # The console calls this orchestrator's own gRPC port: on its host, or on loopback for a wildcard bind.
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        target = f"[{host}]:{grpc_port[0]}" if ":" in host else f"{host}:{grpc_port[0]}"
        console = Console(settings.host, settings.http_port, target, roots,
                          authorize_http if settings.auth_tokens_file else None, settings.max_message_mb)
        await console.start()
        consoles.append(console)

    async def drain() -> None:
        if access.live is not None:
            await drain_live(access.live)

    async def stop() -> None:
        for console in consoles:
            await console.stop()
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        if access.live is not None:
            live, access.live = access.live, None
            await stop_live(live)
        await asyncio.to_thread(holder.release)
        await detector.close()

    def register(server: grpc.aio.Server) -> None:
        orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(OrchestratorServicer(settings, detector), server)
        jobs_pb2_grpc.add_JobsServicer_to_server(JobsServicer(access), server)
        monitors_pb2_grpc.add_MonitorsServicer_to_server(MonitorsServicer(access), server)
        events_pb2_grpc.add_EventsServicer_to_server(EventsServicer(access), server)

    return ServiceSpec(name="orchestrator", service_names=SERVICE_NAMES, register=register, start=start, stop=stop,
                       drain=drain, authorize=authorize if settings.auth_tokens_file else None,
                       bound=grpc_port.append)
