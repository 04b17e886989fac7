"""Orchestrator servicer: protobuf <-> the detection pipeline, nothing else."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
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

from services.common.errors import InvalidInput, echo
from services.common.server import RpcContext, ServiceSpec
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
from services.orchestrator.requests import checked_texts, detect_params, frame_encoding, media_roots
from services.orchestrator.service_clients import ServiceClients
from services.orchestrator.sources import PushedSource, open_threaded
from services.orchestrator.store.store import Store

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name
SERVICE_NAMES = [SERVICE_NAME, jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
                 monitors_pb2.DESCRIPTOR.services_by_name["Monitors"].full_name,
                 events_pb2.DESCRIPTOR.services_by_name["Events"].full_name]
MAX_STREAM_FPS = 240.0


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, settings: OrchestratorSettings, detector: Detector) -> None:
        self._settings = settings
        self._detector = detector

    async def Detect(
        self, request: orchestrator_pb2.DetectRequest, context: RpcContext
    ) -> AsyncIterator[orchestrator_pb2.DetectUpdate]:
        texts = checked_texts(request.texts, request.options, self._settings.max_texts)
        params = detect_params(request.options, self._settings)
        source = await open_threaded(request.source.path, request.source.frame_folder, request.source.uri,
                                     frame_encoding(self._settings), media_roots(self._settings),
                                     self._settings.stream_timeout_seconds)
        try:
            async for update in self._detector.detect(source, texts, params):
                yield to_proto(update)
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
        async for update in self._detector.detect(source, texts, params):
            changes = events.finish() if isinstance(update, Summary) else []
            for change in changes:  # events still open close before the summary
                yield orchestrator_pb2.DetectUpdate(event=event_proto(change, next(cursor)))
            yield to_proto(update)
            for change in events.observe(update) if isinstance(update, SegmentOutcome) else []:
                yield orchestrator_pb2.DetectUpdate(event=event_proto(change, next(cursor)))


async def start_live(settings: OrchestratorSettings, detector: Detector) -> Live:
    """Open the store, then resume the jobs and monitors it holds."""
    store = await asyncio.to_thread(Store.open, Path(settings.data_dir).expanduser(), settings.database_url)
    changes = Changes(settings.event_poll_seconds)
    live = Live(store, changes, JobRunner(store, detector, settings, changes),
                MonitorRunners(store, detector, settings, changes))
    await live.jobs.resume()
    await live.monitors.resume()
    return live


async def stop_live(live: Live) -> None:
    await live.monitors.close()
    await live.jobs.close()
    await asyncio.to_thread(live.store.close)


def build_service(settings: OrchestratorSettings) -> ServiceSpec:
    detector = Detector()
    access = LiveAccess("this orchestrator keeps no jobs, monitors or events: start it with --data-dir"
                        if not settings.data_dir else "the orchestrator is starting; retry shortly")

    async def start() -> None:  # channels belong to the running event loop
        detector.attach(ServiceClients(settings.clip_address, settings.context_address, settings.lvlm_address,
                                       settings.rpc_timeout_seconds, settings.max_message_mb,
                                       settings.keepalive_seconds))
        if settings.data_dir:
            access.live = await start_live(settings, detector)

    async def stop() -> None:
        if access.live is not None:
            live, access.live = access.live, None
            await stop_live(live)
        await detector.close()

    def register(server: grpc.aio.Server) -> None:
        orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(OrchestratorServicer(settings, detector), server)
        jobs_pb2_grpc.add_JobsServicer_to_server(JobsServicer(access), server)
        monitors_pb2_grpc.add_MonitorsServicer_to_server(MonitorsServicer(access), server)
        events_pb2_grpc.add_EventsServicer_to_server(EventsServicer(access), server)

    return ServiceSpec(name="orchestrator", service_names=SERVICE_NAMES, register=register, start=start, stop=stop)
