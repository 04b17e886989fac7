"""A Python client for Orchestrator.Detect that builds the result JSON document.

    result = await detect_document(address, request)        # with a progress bar on stderr
    async for update in detect_stream(address, request): ...  # or the raw stream
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

from tqdm import tqdm

from anyanomaly.client import best_reason
from anyanomaly.pictures import EvidenceKeeper
from anyanomaly.v1 import common_pb2, context_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from services.common.clients import open_channel
from services.common.enums import (
    KEY_FRAME_STRATEGY,
    MULTI_TEXT_FUSION,
    PROFILE,
    SCORE_MODE,
    TAIL_POLICY,
    TEMPORAL_SELECTION,
    WINDOW_FEATURES,
)
from services.common.tls import ClientTls
from services.common.urls import redact

STREAMS = ("frame", "position", "temporal")  # the stream fields of TextSegmentScore
RANDOM_WEIGHTS_WARNING = "tiny random-weight models were used: these scores are meaningless (smoke run)"


async def detect_stream(
    address: str, request: orchestrator_pb2.DetectRequest, timeout_seconds: float = 24 * 3600.0,
    tls: ClientTls | None = None, token: str = "",
) -> AsyncIterator[orchestrator_pb2.DetectUpdate]:
    async with open_channel(address, default_timeout=timeout_seconds, tls=tls, token=token) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorStub(channel)
        async for update in stub.Detect(request, timeout=timeout_seconds):
            yield update


def _model(info: common_pb2.ModelInfo) -> dict[str, Any]:
    model = {"name": info.name, "weights": info.weights, "device": info.device, "backend": info.backend,
             "random_weights": info.random_weights}
    if info.max_image_pixels:  # the LVLM: what every image was downscaled to, the default answer length
        model.update(max_image_pixels=info.max_image_pixels, max_tokens=info.max_tokens)
    return model


def _round(value: float) -> float:
    return round(float(value), 6)


def scoring_config(options: orchestrator_pb2.DetectOptions) -> dict[str, Any]:
    """How the scores were asked to be made (what a cached result must match to be reused)."""
    nested = options.advanced.scoring if options.advanced.HasField("scoring") else options.scoring  # as the server
    context = options.advanced.context if options.advanced.HasField("context") else options.context
    return {
        "mode": SCORE_MODE.name(options.scoring_mode or nested.mode, "standard"),
        "multi_text": options.multi_text or nested.multi_text,
        "gate_threshold": _round(options.gate_threshold) if options.HasField("gate_threshold") else None,
        "cascade_threshold": _round(options.cascade_threshold) if options.HasField("cascade_threshold") else None,
        "window_features": WINDOW_FEATURES.name(options.window_features or context.window_features, "crops"),
    }


class ResultBuilder:
    """Collects a Detect stream into the documented result JSON."""

    def __init__(self, request: orchestrator_pb2.DetectRequest, keeper: EvidenceKeeper | None = None) -> None:
        self.request = request
        self.keeper = keeper  # keeps the images of segments that may become evidence
        self.source = request.source.path or request.source.frame_folder or redact(request.source.uri)
        self.started: orchestrator_pb2.DetectStarted | None = None
        self.segments: list[dict[str, Any]] = []
        self.summary: orchestrator_pb2.Summary | None = None

    def add(self, update: orchestrator_pb2.DetectUpdate) -> None:
        kind = update.WhichOneof("update")
        if kind == "started":
            self.started = update.started
        elif kind == "segment":
            self.segments.append(self._segment(update.segment))
            if self.keeper is not None:
                self.keeper.add(update.segment.index, update.segment.score, {
                    s.text: {"key_frame": s.images.key_frame.data, "position_context": s.images.position_context.data,
                             "temporal_context": s.images.temporal_context.data}
                    for s in update.segment.scores if s.HasField("images")})
        elif kind == "summary":
            self.summary = update.summary

    @staticmethod
    def _segment(segment: orchestrator_pb2.SegmentResult) -> dict[str, Any]:
        scores: dict[str, Any] = {}
        failures: list[dict[str, str]] = []
        for s in segment.scores:
            scores[s.text] = {
                "frame": _round(s.frame.score), "position": _round(s.position.score),
                "temporal": _round(s.temporal.score), "fused": _round(s.fused), "reason": best_reason(s),
                "reasons": {name: getattr(s, name).reason for name in STREAMS},
            }
            if s.screened_out:
                scores[s.text]["screened_out"] = True
            failures += [{"text": s.text, "stream": name, "error": getattr(s, name).error}
                         for name in STREAMS if not getattr(s, name).parsed]
        document: dict[str, Any] = {
            "index": segment.index, "start_frame": segment.start_frame, "end_frame": segment.end_frame,
            "key_frames": {s.text: list(s.key_frames) for s in segment.scores},
            "representative": {s.text: s.representative for s in segment.scores},
            "scores": scores, "max_fused": _round(segment.max_fused),
            "max_then_fuse": _round(segment.max_then_fuse), "score": _round(segment.score),
            "best_similarity": _round(segment.best_similarity), "lvlm_calls": segment.lvlm_usage.calls,
        }
        if segment.gated:
            document["gated"] = True
        if failures:
            document["parse_failures"] = failures
        return document

    def document(self) -> dict[str, Any]:
        if self.started is None or self.summary is None:
            raise RuntimeError("the detection stream ended before its summary")
        summary = self.summary
        models: dict[str, Any] = {"clip": _model(summary.clip_model), "lvlm": _model(summary.lvlm_model)}
        random = summary.clip_model.random_weights or summary.lvlm_model.random_weights
        if random:
            models["warning"] = RANDOM_WEIGHTS_WARNING
        usage = summary.lvlm_usage
        timings = summary.timings
        options = self.request.options
        context = context_pb2.ContextOptions(  # the public fields, else an older client's nested ones
            half_stride=options.half_stride or options.advanced.context.half_stride or options.context.half_stride,
            temporal_selection=(options.temporal_selection or options.advanced.context.temporal_selection
                                or options.context.temporal_selection))
        return {
            "source": self.source,
            "complete": True,
            "texts": list(self.started.texts),
            "models": models,
            "fps": summary.fps,
            "num_frames": summary.num_frames,
            "segment_length": self.started.segment_length,
            "tail_policy": TAIL_POLICY.name(summary.tail_policy, "score"),
            "multi_text_fusion": MULTI_TEXT_FUSION.name(summary.multi_text_fusion, "fuse_then_max"),
            "profile": PROFILE.name(summary.profile, "default"),
            "preset": summary.preset,
            "strategy": KEY_FRAME_STRATEGY.name(summary.strategy, "clip_then_grouping"),
            "context_options": {"half_stride": context.half_stride,
                                "temporal_selection": TEMPORAL_SELECTION.name(context.temporal_selection,
                                                                              "max_window")},
            "scoring": scoring_config(options),
            "fusion_weights": [_round(w) for w in summary.fusion_weights],
            "sigma": _round(summary.sigma),
            "segments": self.segments,
            "frame_scores": [_round(v) for v in summary.frame_scores],
            "scored_frames": summary.scored_frames,
            "parse_failures": summary.parse_failures,
            "gated_segments": summary.gated_segments,
            "screened_out": summary.screened_out,
            "lvlm_usage": {"calls": usage.calls, "prompt_tokens": usage.prompt_tokens,
                           "completion_tokens": usage.completion_tokens, "images": usage.images,
                           "retries": usage.retries, "failures": usage.failures,
                           "queue_seconds": round(usage.queue_seconds, 3),
                           "engine_seconds": round(usage.engine_seconds, 3)},
            "timings": {"total_seconds": round(timings.total_seconds, 3),
                        "decode_seconds": round(timings.decode_seconds, 3),
                        "key_frames_seconds": round(timings.key_frames_seconds, 3),
                        "contexts_seconds": round(timings.contexts_seconds, 3),
                        "scoring_seconds": round(timings.scoring_seconds, 3)},
        }


    def partial(self, error: dict[str, str]) -> dict[str, Any]:
        """What arrived before the detection failed, with the error: the segments scored so far
        (complete in themselves) but no per-frame scores, which need the whole video."""
        started = self.started
        return {
            "source": self.source,
            "complete": False,
            "error": error,
            "texts": list(started.texts) if started else list(self.request.texts),
            "fps": started.fps if started else 0.0,
            "num_frames": started.num_frames if started else 0,
            "segment_length": started.segment_length if started else 0,
            "segments": self.segments,
        }


async def detect_into(builder: ResultBuilder, address: str, progress: str | None = "detect", leave: bool = True,
                      tls: ClientTls | None = None, token: str = "") -> None:
    """Run the builder's detection, adding each update to it as it arrives (so that what came
    before a failure is kept); a progress bar labelled `progress` (None: none) counts frames on
    stderr."""
    bar: Any = None
    try:
        async for update in detect_stream(address, builder.request, tls=tls, token=token):
            builder.add(update)
            kind = update.WhichOneof("update")
            if kind == "started" and progress is not None:
                bar = tqdm(total=update.started.num_frames or None, unit="frame", desc=progress, leave=leave,
                           file=sys.stderr)
            elif kind == "segment" and bar is not None:
                bar.update(update.segment.end_frame - update.segment.start_frame)
    finally:
        if bar is not None:
            bar.close()


async def detect_document(
    address: str, request: orchestrator_pb2.DetectRequest, progress: str | None = "detect", leave: bool = True
) -> dict[str, Any]:
    """Run a detection and return the result JSON document."""
    builder = ResultBuilder(request)
    await detect_into(builder, address, progress, leave)
    return builder.document()
