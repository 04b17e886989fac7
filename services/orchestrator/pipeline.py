"""The detection pipeline: decode once, cut segments, per segment key frames ->
contexts -> LVLM scores, fuse, stream results in order with a bounded number of
segments in flight, then smooth the per-frame scores of the whole video."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from anyanomaly.v1 import common_pb2, context_pb2, lvlm_pb2

from services.common.errors import InvalidInput, NotReady
from services.orchestrator.fusion import (
    DEFAULT_SIGMA,
    DEFAULT_WEIGHTS,
    expand_to_frames,
    fuse,
    max_over_texts,
    max_then_fuse,
    smooth,
)
from services.orchestrator.service_clients import ServiceClients, StreamScore
from services.orchestrator.sources import FrameSource

MIN_SEGMENT_FRAMES = 4  # the key-frame rule picks one frame in each quarter
MISSING = StreamScore(0.0, "", False, "no answer for this stream")


@dataclass(frozen=True)
class DetectParams:
    profile: str = "default"  # "default" | "parity"
    segment_length: int = 24
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS
    sigma: float = DEFAULT_SIGMA
    tail_policy: str = "score"  # "score": score a last partial segment of >= 4 frames; "drop": the reference
    multi_text_fusion: str = "fuse_then_max"  # or "max_then_fuse" (the reference)
    strategy: common_pb2.KeyFrameStrategy.ValueType = common_pb2.KEY_FRAME_STRATEGY_CLIP_THEN_GROUPING
    max_in_flight: int = 2
    context_options: context_pb2.ContextOptions = field(default_factory=context_pb2.ContextOptions)
    score_options: lvlm_pb2.ScoreOptions = field(default_factory=lvlm_pb2.ScoreOptions)


@dataclass(frozen=True)
class Started:
    texts: list[str]
    fps: float
    num_frames: int
    segment_length: int


@dataclass(frozen=True)
class TextResult:
    text: str
    representative: int  # frame index in the video
    key_frames: tuple[int, ...]  # frame indices in the video
    frame: StreamScore
    position: StreamScore
    temporal: StreamScore
    fused: float


@dataclass(frozen=True)
class SegmentOutcome:
    index: int
    start: int  # first frame, inclusive
    end: int  # exclusive
    results: list[TextResult]
    max_fused: float  # fuse then max
    max_then_fuse: float  # the reference's rule
    score: float  # under the request's rule
    usage: lvlm_pb2.Usage


@dataclass
class Timings:
    decode: float = 0.0
    key_frames: float = 0.0
    contexts: float = 0.0
    scoring: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class Summary:
    num_frames: int
    fps: float
    frame_scores: list[float]
    scored_frames: int
    tail_policy: str
    multi_text_fusion: str
    profile: str
    preset: str
    strategy: common_pb2.KeyFrameStrategy.ValueType
    weights: tuple[float, float, float]
    sigma: float
    timings: Timings
    clip_model: common_pb2.ModelInfo
    lvlm_model: common_pb2.ModelInfo
    lvlm_usage: lvlm_pb2.Usage
    parse_failures: int


Update = Started | SegmentOutcome | Summary


@dataclass
class _Segment:
    index: int
    start: int
    frames: list[bytes]


class Detector:
    def __init__(self, clients: ServiceClients | None = None) -> None:
        self._client_set = clients

    def attach(self, clients: ServiceClients) -> None:
        self._client_set = clients

    async def close(self) -> None:
        if self._client_set is not None:
            await self._client_set.close()

    @property
    def _clients(self) -> ServiceClients:
        if self._client_set is None:
            raise NotReady("the orchestrator is starting; retry shortly")
        return self._client_set

    async def _process(self, segment: _Segment, texts: list[str], params: DetectParams, timings: Timings
                       ) -> SegmentOutcome:
        started = time.perf_counter()
        choices = await self._clients.select_key_frames(segment.frames, texts, params.strategy, seed=segment.index)
        selected = time.perf_counter()
        contexts = await self._clients.build_contexts(segment.frames, choices, params.context_options)
        built = time.perf_counter()
        streams, usage = await self._clients.score(segment.frames, choices, contexts, params.score_options)
        scored = time.perf_counter()
        timings.key_frames += selected - started
        timings.contexts += built - selected
        timings.scoring += scored - built
        results = []
        for choice, scores in zip(choices, streams, strict=True):
            frame, position, temporal = (scores.get(s, MISSING) for s in ("frame", "position", "temporal"))
            results.append(TextResult(
                text=choice.text,
                representative=segment.start + choice.representative,
                key_frames=tuple(segment.start + k for k in choice.key_frames),
                frame=frame, position=position, temporal=temporal,
                fused=fuse(frame.score, position.score, temporal.score, params.weights),
            ))
        best_text = max_over_texts([r.fused for r in results])
        best_streams = max_then_fuse([(r.frame.score, r.position.score, r.temporal.score) for r in results],
                                     params.weights)
        return SegmentOutcome(
            segment.index, segment.start, segment.start + len(segment.frames), results, best_text, best_streams,
            best_streams if params.multi_text_fusion == "max_then_fuse" else best_text, usage,
        )

    async def detect(self, source: FrameSource, texts: list[str], params: DetectParams) -> AsyncIterator[Update]:
        clock = time.perf_counter()
        timings = Timings()
        clip_info, lvlm_info = await self._clients.model_infos()
        yield Started(texts, source.info.fps, source.info.num_frames, params.segment_length)
        pending: deque[asyncio.Task[SegmentOutcome]] = deque()
        outcomes: list[SegmentOutcome] = []
        frames_read = 0
        tail_extension: tuple[int, int] | None = None  # frames too few to score, given the last score
        try:
            while True:
                decode_started = time.perf_counter()
                frames = await asyncio.to_thread(source.read, params.segment_length)
                timings.decode += time.perf_counter() - decode_started
                if not frames:
                    break
                start, frames_read = frames_read, frames_read + len(frames)
                is_tail = len(frames) < params.segment_length
                if is_tail and (params.tail_policy == "drop" or len(frames) < MIN_SEGMENT_FRAMES):
                    if params.tail_policy == "score":
                        tail_extension = (start, frames_read)
                    break
                segment = _Segment(start // params.segment_length, start, frames)
                pending.append(asyncio.create_task(self._process(segment, texts, params, timings)))
                while len(pending) >= params.max_in_flight:
                    outcomes.append(await pending.popleft())
                    yield outcomes[-1]
                if is_tail:
                    break
            while pending:
                outcomes.append(await pending.popleft())
                yield outcomes[-1]
        finally:
            for task in pending:
                task.cancel()
        if params.tail_policy == "score" and not outcomes and frames_read:
            raise InvalidInput(f"the video has {frames_read} frames; at least {MIN_SEGMENT_FRAMES} are needed to "
                               "score it")
        timings.total = time.perf_counter() - clock
        yield self._summary(source, outcomes, frames_read, tail_extension, params, timings, clip_info, lvlm_info)

    @staticmethod
    def _summary(
        source: FrameSource, outcomes: list[SegmentOutcome], frames_read: int, tail_extension: tuple[int, int] | None,
        params: DetectParams, timings: Timings, clip_info: common_pb2.ModelInfo, lvlm_info: common_pb2.ModelInfo,
    ) -> Summary:
        spans = [(o.start, o.end, o.score) for o in outcomes]
        if tail_extension and outcomes:  # a tail of 1-3 frames takes the last segment's score
            spans.append((*tail_extension, outcomes[-1].score))
        scored = max((end for _, end, _ in spans), default=0)
        frame_scores = expand_to_frames(spans, frames_read)
        frame_scores[:scored] = smooth(frame_scores[:scored], params.sigma)
        usage = lvlm_pb2.Usage()
        for outcome in outcomes:
            usage.calls += outcome.usage.calls
            usage.prompt_tokens += outcome.usage.prompt_tokens
            usage.completion_tokens += outcome.usage.completion_tokens
            usage.images += outcome.usage.images
            usage.queue_seconds += outcome.usage.queue_seconds
            usage.engine_seconds += outcome.usage.engine_seconds
        failures = sum(not s.parsed for o in outcomes for r in o.results for s in (r.frame, r.position, r.temporal))
        return Summary(
            num_frames=frames_read, fps=source.info.fps, frame_scores=[float(v) for v in frame_scores],
            scored_frames=scored, tail_policy=params.tail_policy, multi_text_fusion=params.multi_text_fusion,
            profile=params.profile, preset=params.context_options.preset, strategy=params.strategy,
            weights=params.weights, sigma=params.sigma,
            timings=timings, clip_model=clip_info, lvlm_model=lvlm_info, lvlm_usage=usage, parse_failures=failures,
        )
