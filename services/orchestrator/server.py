"""Orchestrator servicer: protobuf <-> the detection pipeline, nothing else."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from anyanomaly.v1 import orchestrator_pb2, orchestrator_pb2_grpc

from services.common.errors import InvalidInput, echo
from services.common.server import RpcContext, ServiceSpec
from services.common.validation import validate_texts
from services.orchestrator import options as detect_options
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.fusion import split_texts
from services.orchestrator.live.events import EventEngine, rules_from_proto
from services.orchestrator.live.events import to_proto as event_proto
from services.orchestrator.messages import to_proto
from services.orchestrator.pipeline import Detector, DetectParams, SegmentOutcome, Summary
from services.orchestrator.service_clients import ServiceClients
from services.orchestrator.sources import FrameEncoding, PushedSource, open_threaded

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name
MAX_STREAM_FPS = 240.0


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, settings: OrchestratorSettings, detector: Detector) -> None:
        self._settings = settings
        self._detector = detector

    def _texts(self, requested: Sequence[str], options: orchestrator_pb2.DetectOptions) -> list[str]:
        validate_texts(list(requested))
        texts = split_texts(requested, split_hyphens=not options.keep_hyphenated_texts)
        validate_texts(texts)
        if len(texts) > self._settings.max_texts:
            raise InvalidInput(f"{len(texts)} texts after splitting; the limit is {self._settings.max_texts}")
        return texts

    def _params(self, options: orchestrator_pb2.DetectOptions) -> DetectParams:
        return replace(detect_options.resolve(options, self._settings.max_segments_in_flight, self._settings.profile),
                       max_frames=self._settings.max_frames)

    async def Detect(
        self, request: orchestrator_pb2.DetectRequest, context: RpcContext
    ) -> AsyncIterator[orchestrator_pb2.DetectUpdate]:
        texts = self._texts(request.texts, request.options)
        params = self._params(request.options)
        encoding = FrameEncoding(self._settings.frame_format, self._settings.jpeg_quality,
                                 self._settings.max_image_pixels)
        roots = [r for r in self._settings.media_roots.split(",") if r.strip()]
        source = await open_threaded(request.source.path, request.source.frame_folder, request.source.uri, encoding,
                                     roots, self._settings.stream_timeout_seconds)
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
        texts = self._texts(config.texts, config.options)
        params = self._params(config.options)
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


def build_service(settings: OrchestratorSettings) -> ServiceSpec:
    detector = Detector()

    async def connect() -> None:  # channels belong to the running event loop
        detector.attach(ServiceClients(settings.clip_address, settings.context_address, settings.lvlm_address,
                                       settings.rpc_timeout_seconds, settings.max_message_mb,
                                       settings.keepalive_seconds))

    return ServiceSpec(
        name="orchestrator",
        service_names=[SERVICE_NAME],
        register=lambda server: orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(
            OrchestratorServicer(settings, detector), server),
        start=connect,
        stop=detector.close,
    )
