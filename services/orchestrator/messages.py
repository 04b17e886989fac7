"""Pipeline results <-> protobuf messages."""

from __future__ import annotations

from anyanomaly.v1 import common_pb2, orchestrator_pb2
from services.common.enums import MULTI_TEXT_FUSION, PROFILE, TAIL_POLICY
from services.orchestrator.pipeline import SegmentOutcome, Started, Summary, TextResult, Update
from services.orchestrator.service_clients import StreamScore


def _stream(score: StreamScore) -> orchestrator_pb2.StreamScore:
    return orchestrator_pb2.StreamScore(score=score.score, reason=score.reason, parsed=score.parsed, error=score.error)


def _images(result: TextResult) -> orchestrator_pb2.ContextImages | None:
    if result.images is None:
        return None
    return orchestrator_pb2.ContextImages(key_frame=common_pb2.Image(data=result.images.key_frame),
                                          position_context=common_pb2.Image(data=result.images.position),
                                          temporal_context=common_pb2.Image(data=result.images.temporal))


def to_proto(update: Update, with_images: bool = False) -> orchestrator_pb2.DetectUpdate:
    """`with_images`: each text's ContextImages, when the results kept them (not for storage)."""
    if isinstance(update, Started):
        return orchestrator_pb2.DetectUpdate(started=orchestrator_pb2.DetectStarted(
            texts=update.texts, fps=update.fps, num_frames=update.num_frames, segment_length=update.segment_length))
    if isinstance(update, SegmentOutcome):
        return orchestrator_pb2.DetectUpdate(segment=orchestrator_pb2.SegmentResult(
            index=update.index, start_frame=update.start, end_frame=update.end, max_fused=update.max_fused,
            max_then_fuse=update.max_then_fuse, score=update.score, gated=update.gated,
            best_similarity=update.best_similarity, lvlm_usage=update.usage, start_seconds=update.start_seconds,
            end_seconds=update.end_seconds, wall_time_ms=update.wall_ms, causal_score=update.causal_score,
            scores=[
                orchestrator_pb2.TextSegmentScore(
                    text=r.text, frame=_stream(r.frame), position=_stream(r.position), temporal=_stream(r.temporal),
                    fused=r.fused, key_frames=list(r.key_frames), representative=r.representative, causal=r.causal,
                    screened_out=r.screened_out, images=_images(r) if with_images else None,
                )
                for r in update.results
            ],
        ))
    assert isinstance(update, Summary)
    t = update.timings
    return orchestrator_pb2.DetectUpdate(summary=orchestrator_pb2.Summary(
        num_frames=update.num_frames, fps=update.fps, frame_scores=update.frame_scores,
        tail_policy=TAIL_POLICY.value(update.tail_policy), fusion_weights=list(update.weights), sigma=update.sigma,
        multi_text_fusion=MULTI_TEXT_FUSION.value(update.multi_text_fusion), profile=PROFILE.value(update.profile),
        preset=update.preset, strategy=update.strategy, segments=update.segments,
        gated_segments=update.gated_segments, screened_out=update.screened_out,
        timings=orchestrator_pb2.Timings(total_seconds=t.total, decode_seconds=t.decode,
                                         key_frames_seconds=t.key_frames, contexts_seconds=t.contexts,
                                         scoring_seconds=t.scoring),
        clip_model=update.clip_model, lvlm_model=update.lvlm_model, scored_frames=update.scored_frames,
        lvlm_usage=update.lvlm_usage,
        parse_failures=update.parse_failures,
    ))


def _score(message: orchestrator_pb2.StreamScore) -> StreamScore:
    return StreamScore(message.score, message.reason, message.parsed, message.error)


def outcome_from_proto(segment: orchestrator_pb2.SegmentResult) -> SegmentOutcome:
    """The outcome a stored segment result was made from (a resumed job's scored segments)."""
    return SegmentOutcome(
        index=segment.index, start=segment.start_frame, end=segment.end_frame,
        results=[TextResult(r.text, r.representative, tuple(r.key_frames), _score(r.frame), _score(r.position),
                            _score(r.temporal), r.fused, r.causal, screened_out=r.screened_out)
                 for r in segment.scores],
        max_fused=segment.max_fused, max_then_fuse=segment.max_then_fuse, score=segment.score,
        usage=segment.lvlm_usage, start_seconds=segment.start_seconds, end_seconds=segment.end_seconds,
        wall_ms=segment.wall_time_ms, causal_score=segment.causal_score, gated=segment.gated,
        best_similarity=segment.best_similarity,
    )
