"""What a detection's numbers must be, recomputed here with numpy and scipy from the per-stream
scores alone (never with the project's own fusion code), and checked against what was reported.

Works on the result JSON's segments (dicts), so the same checks serve Detect over gRPC
(converted by `segments_of`) and the `anyanomaly` command's output file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d

from anyanomaly.v1 import orchestrator_pb2

STREAMS = ("frame", "position", "temporal")
KINDS = {"frame": "P", "position": "P", "temporal": "P*"}  # the prompt each stream is asked with


def segments_of(results: Sequence[orchestrator_pb2.SegmentResult]) -> list[dict[str, Any]]:
    """Segment results as the result JSON writes them (the fields the checks read)."""
    return [{
        "start_frame": s.start_frame, "end_frame": s.end_frame, "score": s.score, "max_fused": s.max_fused,
        "max_then_fuse": s.max_then_fuse, "gated": s.gated, "best_similarity": s.best_similarity,
        "start_seconds": s.start_seconds, "end_seconds": s.end_seconds, "causal_score": s.causal_score,
        "scores": {t.text: {"frame": t.frame.score, "position": t.position.score, "temporal": t.temporal.score,
                            "fused": t.fused, "causal": t.causal, "reason": t.frame.reason} for t in s.scores},
    } for s in results]


def streams(segment: dict[str, Any]) -> np.ndarray:
    """texts x (frame, position, temporal)."""
    return np.array([[scores[s] for s in STREAMS] for scores in segment["scores"].values()], dtype=np.float64)


def segment_score(segment: dict[str, Any], weights: Sequence[float], rule: str) -> float:
    """The reference's rule maxes each stream over the texts, then fuses; ours fuses each text,
    then takes the max."""
    matrix, g = streams(segment), np.asarray(weights, dtype=np.float64)
    if rule == "max_then_fuse":
        return float(matrix.max(axis=0) @ g)
    return float((matrix @ g).max())


def check_segments(segments: Sequence[dict[str, Any]], weights: Sequence[float], rule: str,
                   tolerance: float = 1e-5) -> list[float]:
    """Every fused, max and rule score as recomputed here; returns the segment scores."""
    g = np.asarray(weights, dtype=np.float64)
    scores = []
    for segment in segments:
        matrix = streams(segment)
        fused = [segment["scores"][t]["fused"] for t in segment["scores"]]
        np.testing.assert_allclose(fused, matrix @ g, atol=tolerance)
        assert abs(segment["max_fused"] - float((matrix @ g).max())) <= tolerance
        assert abs(segment["max_then_fuse"] - float(matrix.max(axis=0) @ g)) <= tolerance
        expected = segment_score(segment, weights, rule)
        assert abs(segment["score"] - expected) <= tolerance
        scores.append(expected)
    return scores


def frame_scores(segments: Sequence[dict[str, Any]], segment_scores: Sequence[float], num_frames: int,
                 sigma: float, tail_extension: int = 0) -> np.ndarray:
    """Segment scores copied to their frames (a short tail of `tail_extension` frames takes the
    last score), Gaussian-smoothed over the scored frames; unscored frames stay 0."""
    frames = np.zeros(num_frames)
    end = 0
    for segment, score in zip(segments, segment_scores, strict=True):
        frames[segment["start_frame"]:segment["end_frame"]] = score
        end = segment["end_frame"]
    if tail_extension:
        frames[end:end + tail_extension] = segment_scores[-1]
        end += tail_extension
    if sigma > 0 and end:
        frames[:end] = gaussian_filter1d(frames[:end], sigma)
    return frames


def answered(segments: Sequence[dict[str, Any]]) -> Counter[tuple[str, str, float]]:
    """(text, prompt kind, score) for every stream score reported, to compare with what the
    scripted LVLM answered (ScriptedLVLM.counts())."""
    return Counter((text, KINDS[s], round(scores[s], 1)) for segment in segments if not segment.get("gated")
                   for text, scores in segment["scores"].items() for s in STREAMS)


def distinct(values: Sequence[float]) -> int:
    return len({round(v, 6) for v in values})


def causal_by_text(segments: Sequence[dict[str, Any]], sigma: float) -> dict[str, np.ndarray]:
    """Each text's fused score smoothed causally, at each segment's last frame: an exponential
    moving average over the frames with time constant sigma (written out here, frame by frame)."""
    keep = float(np.exp(-1.0 / sigma)) if sigma > 0 else 0.0
    out: dict[str, np.ndarray] = {}
    for text in segments[0]["scores"]:
        state = float(segments[0]["scores"][text]["fused"])
        values = []
        for segment in segments:
            fused = segment["scores"][text]["fused"]
            for _ in range(segment["end_frame"] - segment["start_frame"]):
                state = keep * state + (1 - keep) * fused
            values.append(state)
        out[text] = np.array(values)
    return out
