"""The detection pipeline: decode once, cut segments, per segment key frames ->
contexts -> LVLM scores, fuse, stream results in order with a bounded number of
segments in flight, then smooth the per-frame scores of the whole video."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from anyanomaly.v1 import common_pb2, context_pb2, lvlm_pb2
from services.common.errors import InvalidInput, NotReady
from services.common.fusion import (
    DEFAULT_SIGMA,
    DEFAULT_WEIGHTS,
    expand_to_frames,
    fuse,
    max_over_texts,
    max_then_fuse,
    smooth,
)
from services.common.presets import get_preset
from services.common.smoothing import CausalSmoother
from services.orchestrator.service_clients import KeyFrameChoice, ServiceClients, StreamScore, TextContexts
from services.orchestrator.sources import DEFAULT_FPS, AsyncFrameSource, Frame

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
    max_frames: int = 1_000_000  # refuse sources longer than this
    keep_images: bool = False  # results carry each text's three LVLM images (evidence of events)
    multi_text: bool = False  # one joint key-frame choice and three LVLM calls per segment
    reason_threshold: float | None = None  # fast mode: reasons for texts whose fused score reaches this
    gate_threshold: float | None = None  # skip the LVLM when the best CLIP similarity is below this
    cascade_threshold: float | None = None  # full scoring only for texts whose screening score reaches this
    context_options: context_pb2.ContextOptions = field(default_factory=context_pb2.ContextOptions)
    score_options: lvlm_pb2.ScoreOptions = field(default_factory=lvlm_pb2.ScoreOptions)


@dataclass(frozen=True)
class Started:
    texts: list[str]
    fps: float
    num_frames: int
    segment_length: int


@dataclass(frozen=True)
class EvidenceImages:
    """What the LVLM saw for a text: the key frame, the position and the temporal context (empty
    for a text the cascade screened out)."""

    key_frame: bytes
    position: bytes
    temporal: bytes


@dataclass(frozen=True)
class TextResult:
    text: str
    representative: int  # frame index in the video
    key_frames: tuple[int, ...]  # frame indices in the video
    frame: StreamScore
    position: StreamScore
    temporal: StreamScore
    fused: float
    causal: float = 0.0  # `fused` smoothed causally (see services/common/smoothing.py)
    images: EvidenceImages | None = None  # with DetectParams.keep_images
    screened_out: bool = False  # below the cascade's threshold: the streams carry the screening score


    def reason(self) -> str:
        """The reason of the stream with the highest score (the key frame's on ties)."""
        streams = (self.frame, self.position, self.temporal)
        best = max(streams, key=lambda s: s.score)
        return best.reason or next((s.reason for s in streams if s.reason), "")


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
    start_seconds: float = 0.0  # media time of the first frame
    end_seconds: float = 0.0  # media time just after the last frame
    wall_ms: int = 0  # live sources: when the last frame was read
    causal_score: float = 0.0  # `score` smoothed causally
    gated: bool = False  # skipped by the CLIP gate
    best_similarity: float = 0.0


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
    segments: int = 0
    gated_segments: int = 0
    screened_out: int = 0


Update = Started | SegmentOutcome | Summary


def add_usage(parts: Sequence[lvlm_pb2.Usage]) -> lvlm_pb2.Usage:
    """The field-by-field sum of LVLM usage records."""
    total = lvlm_pb2.Usage()
    for part in parts:
        for descriptor in lvlm_pb2.Usage.DESCRIPTOR.fields:
            setattr(total, descriptor.name, getattr(total, descriptor.name) + getattr(part, descriptor.name))
    return total


@dataclass
class _Segment:
    index: int
    start: int
    frames: list[Frame]
    fps: float  # for the media time just after the last frame

    @property
    def images(self) -> list[bytes]:
        return [frame.data for frame in self.frames]


def as_reported(score: float) -> float:
    """`score` as the contract carries it (float32). Scores are rounded once, where they are made,
    so what a caller sees, what the summary smooths and what a resumed job reads back agree."""
    return float(np.float32(score))


def without_images(outcome: SegmentOutcome) -> SegmentOutcome:
    if all(r.images is None for r in outcome.results):
        return outcome
    return replace(outcome, results=[replace(r, images=None) for r in outcome.results])


def _passing(choices: list[KeyFrameChoice], screening: dict[str, StreamScore], threshold: float
             ) -> list[KeyFrameChoice]:
    """The choices narrowed to the texts the screening lets through: a score that reaches the
    threshold (compared as reported, in float32), or no readable score at all (never dropped
    unseen)."""
    def passes(text: str) -> bool:
        score = screening.get(text)
        return score is None or not score.parsed or bool(np.float32(score.score) >= np.float32(threshold))

    narrowed = []
    for choice in choices:
        texts = [t for t in choice.texts if passes(t)]
        if texts:
            narrowed.append(replace(choice, text=texts[0], more_texts=tuple(texts[1:])))
    return narrowed


def _classes(preset: str, texts: Sequence[str]) -> list[str]:
    """The class list context_service uses for all `texts`, stated: the position context weighs
    a text against the other classes, so a text that passes the cascade gets the contexts it
    would get without it, whichever others were screened out."""
    classes = list(get_preset(preset).class_names)
    return classes + [t for t in dict.fromkeys(texts) if t not in classes]


class _CausalScores:
    """Each text's fused score and the segment score, smoothed causally in segment order."""

    def __init__(self, texts: Sequence[str], sigma: float) -> None:
        self._texts = {text: CausalSmoother(sigma) for text in texts}
        self._segment = CausalSmoother(sigma)

    def add(self, outcome: SegmentOutcome) -> SegmentOutcome:
        frames = outcome.end - outcome.start
        results = [replace(r, causal=as_reported(self._texts[r.text].update(r.fused, frames)))
                   for r in outcome.results]
        return replace(outcome, results=results,
                       causal_score=as_reported(self._segment.update(outcome.score, frames)))


class Detector:
    def __init__(self, clients: ServiceClients | None = None) -> None:
        self._client_set = clients

    def attach(self, clients: ServiceClients) -> None:
        self._client_set = clients

    async def close(self) -> None:
        if self._client_set is not None:
            await self._client_set.close()

    @property
    def clients(self) -> ServiceClients:
        if self._client_set is None:
            raise NotReady("the orchestrator is starting; retry shortly")
        return self._client_set

    async def _process(self, segment: _Segment, texts: list[str], params: DetectParams, timings: Timings
                       ) -> SegmentOutcome:
        started = time.perf_counter()
        selected_frames = await self.clients.select_key_frames(
            segment.images, texts, params.strategy, seed=segment.index, joint=params.multi_text)
        timings.key_frames += time.perf_counter() - started
        best = selected_frames.best_similarity
        if params.gate_threshold is not None and best < params.gate_threshold:
            return self._gated(segment, selected_frames.choices, best, params)
        # Per text, or one joint choice whose three images carry every text.
        choices = [selected_frames.joint] if selected_frames.joint is not None else selected_frames.choices
        choice_of = {t: c for c in choices for t in c.texts}
        usage_parts: list[lvlm_pb2.Usage] = []
        screening: dict[str, StreamScore] = {}
        if params.cascade_threshold is not None:
            screened_at = time.perf_counter()
            screening, screening_usage = await self._screen(segment, choices, params)
            timings.scoring += time.perf_counter() - screened_at
            usage_parts.append(screening_usage)
            choices = _passing(choices, screening, params.cascade_threshold)
        streams: dict[str, dict[str, StreamScore]] = {}
        contexts_of: dict[str, TextContexts] = {}
        if choices:
            # In the fast mode the screening call was the key-frame call itself: its score is kept.
            known = screening if params.score_options.mode == lvlm_pb2.SCORE_MODE_FAST else {}
            streams, contexts_of, scoring_usage = await self._full_scoring(segment, choices, texts, params, timings,
                                                                           known)
            usage_parts.append(scoring_usage)
        results = []
        for text in texts:
            choice = choice_of[text]
            screened_out = text not in streams
            if screened_out:  # the screening score stands for all three streams
                score = screening[text]
                frame = position = temporal = StreamScore(score.score, "", score.parsed, score.error)
            else:
                frame, position, temporal = (streams[text].get(s, MISSING) for s in ("frame", "position", "temporal"))
            context = contexts_of.get(text)
            key_frame = segment.images[choice.representative]
            # A text screened out was judged on its key frame alone: that is its evidence.
            images = (EvidenceImages(key_frame, context.position, context.temporal) if context is not None
                      else EvidenceImages(key_frame, b"", b"")) if params.keep_images else None
            results.append(TextResult(
                text=text,
                representative=segment.start + choice.representative,
                key_frames=tuple(segment.start + k for k in choice.key_frames),
                frame=frame, position=position, temporal=temporal,
                fused=as_reported(fuse(frame.score, position.score, temporal.score, params.weights)), images=images,
                screened_out=screened_out,
            ))
        usage = add_usage(usage_parts)
        if params.score_options.mode == lvlm_pb2.SCORE_MODE_FAST and params.reason_threshold is not None:
            results, usage = await self._add_reasons(segment, results, usage, params)
        return self._outcome(segment, results, usage, params, best)

    async def _full_scoring(self, segment: _Segment, choices: list[KeyFrameChoice], texts: list[str],
                            params: DetectParams, timings: Timings, known_frames: dict[str, StreamScore]
                            ) -> tuple[dict[str, dict[str, StreamScore]], dict[str, TextContexts], lvlm_pb2.Usage]:
        """Contexts, then the three streams of each choice's texts: ({text: {stream: score}},
        {text: its contexts}, usage). `known_frames`: key-frame scores already in hand."""
        built_at = time.perf_counter()
        # The cascade may leave out texts: the class list of them all keeps the others' contexts.
        classes = _classes(params.context_options.preset, texts) if params.cascade_threshold is not None else []
        contexts = await self.clients.build_contexts(segment.images, choices, params.context_options, classes)
        scored_at = time.perf_counter()
        timings.contexts += scored_at - built_at
        streams, usage = await self.clients.score(segment.images, choices, contexts, params.score_options,
                                                  known_frames)
        timings.scoring += time.perf_counter() - scored_at
        for text, score in known_frames.items():
            if text in streams:
                streams[text]["frame"] = score
        return streams, {t: context for c, context in zip(choices, contexts, strict=True) for t in c.texts}, usage

    async def _add_reasons(self, segment: _Segment, results: list[TextResult], usage: lvlm_pb2.Usage,
                           params: DetectParams) -> tuple[list[TextResult], lvlm_pb2.Usage]:
        """Fast mode scores without reasons; the texts that reach the threshold get their key
        frame's reason from one standard-mode call each."""
        assert params.reason_threshold is not None
        # Compared as the caller sees the scores (float32 on the wire), so a text whose reported
        # score equals the threshold gets its reason.
        wanted = [(r.text, r.representative - segment.start) for r in results
                  if np.float32(r.fused) >= np.float32(params.reason_threshold)]
        if not wanted:
            return results, usage
        options = lvlm_pb2.ScoreOptions()
        options.CopyFrom(params.score_options)
        options.mode, options.multi_text = lvlm_pb2.SCORE_MODE_STANDARD, False
        answers, extra = await self.clients.key_frame_scores(segment.images, wanted, options)
        reasons = {text: answer.reason for text, answer in answers.items()}
        updated = [replace(r, frame=replace(r.frame, reason=reasons.get(r.text, r.frame.reason))) for r in results]
        return updated, add_usage([usage, extra])

    async def _screen(self, segment: _Segment, choices: list[KeyFrameChoice], params: DetectParams
                      ) -> tuple[dict[str, StreamScore], lvlm_pb2.Usage]:
        """The cascade's screening: each text's key frame, one fast-mode (log-probability) call."""
        options = lvlm_pb2.ScoreOptions()
        options.CopyFrom(params.score_options)
        options.mode, options.multi_text = lvlm_pb2.SCORE_MODE_FAST, False
        wanted = [(text, choice.representative) for choice in choices for text in choice.texts]
        return await self.clients.key_frame_scores(segment.images, wanted, options)

    def _gated(self, segment: _Segment, choices: list[KeyFrameChoice], best: float, params: DetectParams
               ) -> SegmentOutcome:
        """Below the CLIP gate: no context, no LVLM call, every score 0."""
        zero = StreamScore(0.0, "", True, "")
        results = [TextResult(c.text, segment.start + c.representative,
                              tuple(segment.start + k for k in c.key_frames), zero, zero, zero, 0.0)
                   for c in choices]
        return self._outcome(segment, results, lvlm_pb2.Usage(), params, best, gated=True)

    @staticmethod
    def _outcome(segment: _Segment, results: list[TextResult], usage: lvlm_pb2.Usage, params: DetectParams,
                 best_similarity: float, gated: bool = False) -> SegmentOutcome:
        best_text = as_reported(max_over_texts([r.fused for r in results]))
        best_streams = as_reported(max_then_fuse([(r.frame.score, r.position.score, r.temporal.score)
                                                  for r in results], params.weights))
        first, last = segment.frames[0], segment.frames[-1]
        return SegmentOutcome(
            segment.index, segment.start, segment.start + len(segment.frames), results, best_text, best_streams,
            best_streams if params.multi_text_fusion == "max_then_fuse" else best_text, usage,
            start_seconds=first.seconds, end_seconds=last.seconds + 1 / (segment.fps or DEFAULT_FPS),
            wall_ms=last.wall_ms, gated=gated, best_similarity=best_similarity,
        )

    async def detect(self, source: AsyncFrameSource, texts: list[str], params: DetectParams,
                     done: Sequence[SegmentOutcome] = (), live: bool = False) -> AsyncIterator[Update]:
        """Started, each segment's outcome in order, then the summary.

        `done`: the first segments' outcomes, stored by an earlier run of the same request: their
        frames are read past, not scored again, and they count in the summary (a resumed job).
        `live`: an endless source; outcomes are not kept for a summary of the whole video."""
        clock = time.perf_counter()
        timings = Timings()
        clip_info, lvlm_info = await self.clients.model_infos()
        yield Started(texts, source.info.fps, source.info.num_frames, params.segment_length)
        pending: deque[asyncio.Task[SegmentOutcome]] = deque()
        outcomes: list[SegmentOutcome] = []
        causal = _CausalScores(texts, params.sigma)
        frames_read = await self._read_past(source, done, params.segment_length)
        for outcome in done:
            outcomes.append(causal.add(outcome))
        tail_extension: tuple[int, int] | None = None  # frames too few to score, given the last score

        def finished(outcome: SegmentOutcome) -> SegmentOutcome:
            outcome = causal.add(outcome)
            if not live:
                outcomes.append(without_images(outcome))
            return outcome

        reading: asyncio.Future[list[Frame]] | None = None
        try:
            while True:
                # Results that finish while the next segment is still being read go out at once
                # (a live source delivers a segment only every segment's length).
                reading = asyncio.ensure_future(self._timed_read(source, params.segment_length, timings))
                while pending and not reading.done():
                    await asyncio.wait({reading, pending[0]}, return_when=asyncio.FIRST_COMPLETED)
                    while pending and pending[0].done():
                        yield finished(await pending.popleft())
                frames = await reading
                if not frames:
                    break
                start, frames_read = frames_read, frames_read + len(frames)
                if frames_read > params.max_frames and not live:
                    raise InvalidInput(f"the source has more than {params.max_frames} frames; cut the video or "
                                       "raise the orchestrator's --max-frames")
                is_tail = len(frames) < params.segment_length
                if is_tail and (params.tail_policy == "drop" or len(frames) < MIN_SEGMENT_FRAMES):
                    if params.tail_policy == "score":
                        tail_extension = (start, frames_read)
                    break
                segment = _Segment(start // params.segment_length, start, frames, source.info.fps)
                pending.append(asyncio.create_task(self._process(segment, texts, params, timings)))
                while len(pending) >= params.max_in_flight:
                    yield finished(await pending.popleft())
                if is_tail:
                    break
            while pending:
                yield finished(await pending.popleft())
        finally:
            for task in pending:
                task.cancel()
            if reading is not None:
                reading.cancel()
        if params.tail_policy == "score" and not outcomes and frames_read and not live:
            raise InvalidInput(f"the video has {frames_read} frames; at least {MIN_SEGMENT_FRAMES} are needed to "
                               "score it")
        timings.total = time.perf_counter() - clock
        yield self._summary(source, outcomes, frames_read, tail_extension, params, timings, clip_info, lvlm_info)

    @staticmethod
    async def _timed_read(source: AsyncFrameSource, count: int, timings: Timings) -> list[Frame]:
        started = time.perf_counter()
        try:
            return await source.read(count)
        finally:
            timings.decode += time.perf_counter() - started

    @staticmethod
    async def _read_past(source: AsyncFrameSource, done: Sequence[SegmentOutcome], segment_length: int) -> int:
        """Read the frames of the segments already scored; how many."""
        frames_read = 0
        for outcome in done:
            if outcome.start != frames_read or outcome.index * segment_length != outcome.start:
                raise ValueError(f"stored segment {outcome.index} does not follow the one before it")
            frames = await source.read(outcome.end - outcome.start)
            frames_read += len(frames)
            if frames_read != outcome.end:
                raise InvalidInput(f"the source has changed since this job started: segment {outcome.index} "
                                   f"ended at frame {outcome.end}, the source now ends at frame {frames_read}")
        return frames_read

    @staticmethod
    def _summary(
        source: AsyncFrameSource, outcomes: list[SegmentOutcome], frames_read: int,
        tail_extension: tuple[int, int] | None, params: DetectParams, timings: Timings,
        clip_info: common_pb2.ModelInfo, lvlm_info: common_pb2.ModelInfo,
    ) -> Summary:
        spans = [(o.start, o.end, o.score) for o in outcomes]
        if tail_extension and outcomes:  # a tail of 1-3 frames takes the last segment's score
            spans.append((*tail_extension, outcomes[-1].score))
        scored = max((end for _, end, _ in spans), default=0)
        frame_scores = expand_to_frames(spans, frames_read)
        frame_scores[:scored] = smooth(frame_scores[:scored], params.sigma)
        usage = add_usage([o.usage for o in outcomes])
        failures = sum(not s.parsed for o in outcomes for r in o.results for s in (r.frame, r.position, r.temporal))
        return Summary(
            num_frames=frames_read, fps=source.info.fps, frame_scores=[float(v) for v in frame_scores],
            scored_frames=scored, tail_policy=params.tail_policy, multi_text_fusion=params.multi_text_fusion,
            profile=params.profile, preset=params.context_options.preset, strategy=params.strategy,
            weights=params.weights, sigma=params.sigma,
            timings=timings, clip_model=clip_info, lvlm_model=lvlm_info, lvlm_usage=usage, parse_failures=failures,
            segments=len(outcomes), gated_segments=sum(o.gated for o in outcomes),
            screened_out=sum(r.screened_out for o in outcomes for r in o.results),
        )
