"""Re-fusion, smoothing and micro-AUROC over the frames of a run (METHOD.md sections 7, 9).

Scores are rebuilt from each segment's raw per-text stream scores, so other fusion
weights, another sigma or the other multi-text rule need no model at all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from anyanomaly.evaluation.datasets import Run
from anyanomaly.evaluation.results import SegmentScores, VideoResult
from services.common.errors import InvalidInput
from services.common.fusion import fuse, max_then_fuse, smooth
from services.common.smoothing import causal_smooth

ORACLE_SIGMAS = tuple(range(1, 30))  # the authors' search: 1..29


def oracle_weight_grid() -> list[tuple[float, float, float]]:
    """The authors' grid, float quirk included: g1, g2 in arange(0, 1.1, 0.1) and g3 = 1 - g1 - g2
    kept only when 0 <= g3 <= 1, which silently drops 6 points with g3 = 0 (e.g. 0.3/0.7/0)."""
    grid = []
    for g1 in np.arange(0, 1.1, 0.1):
        for g2 in np.arange(0, 1.1, 0.1):
            g3 = 1 - g1 - g2
            if 0 <= g3 <= 1:
                grid.append((float(g1), float(g2), float(g3)))
    return grid


@dataclass(frozen=True)
class Scoring:
    weights: tuple[float, float, float] = (0.6, 0.3, 0.1)
    sigma: float = 15.0
    rule: str = "fuse_then_max"  # or "max_then_fuse" (the reference)
    smoothing: str = "per_video"  # "concatenated" (the reference, evaluation only) or "causal" (live)


@dataclass(frozen=True)
class RunScores:
    run: Run
    scoring: Scoring
    auroc: float | None  # None: undefined (the labels are all one value)
    per_video: dict[str, float | None]
    videos: list[str]
    bounds: list[tuple[int, int]]  # each video's frames in the concatenation
    scores: np.ndarray
    labels: np.ndarray
    oracle: bool = False
    gaussian_auroc: float | None = None  # with causal smoothing: the per-video Gaussian's, to compare


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if labels.size == 0 or labels.min() == labels.max():
        return None
    from sklearn.metrics import roc_auc_score  # the eval extra; imported when first needed

    return float(roc_auc_score(labels, scores))


def segment_score(segment: SegmentScores, texts: Sequence[str], weights: tuple[float, float, float],
                  rule: str) -> float:
    streams = [segment.streams[t] for t in texts]
    if rule == "max_then_fuse":
        return max_then_fuse(streams, weights)
    return max(fuse(*s, weights) for s in streams)


def raw_scores(result: VideoResult, texts: Sequence[str], weights: tuple[float, float, float], rule: str
               ) -> np.ndarray:
    """Unsmoothed per-frame scores over the scored frames (segment scores copied to their frames;
    a tail too short to score takes the last segment's score, as `detect` does)."""
    frames = np.zeros(result.scored_frames, dtype=np.float64)
    last_end, last = 0, 0.0
    for segment in result.segments:
        missing = [t for t in texts if t not in segment.streams]
        if missing:
            raise InvalidInput(f"{result.path}: segment {segment.start}-{segment.end} has no scores for {missing}")
        last = segment_score(segment, texts, weights, rule)
        frames[segment.start : segment.end] = last
        last_end = segment.end
    frames[last_end:] = last
    return frames


def _aligned(run: Run, results: dict[str, VideoResult]) -> tuple[list[str], list[VideoResult], list[np.ndarray]]:
    videos = sorted(run.labels)
    missing = [v for v in videos if v not in results]
    if missing:
        raise InvalidInput(f"run {run.name!r}: no detection result for video(s) {', '.join(missing)}")
    chosen = [results[v] for v in videos]
    labels = []
    for video, result in zip(videos, chosen, strict=True):
        truth = run.labels[video]
        if result.num_frames != len(truth):
            raise InvalidInput(f"{result.path} has {result.num_frames} frames but the labels of video {video} have "
                               f"{len(truth)}: the result is for another video or another decoding")
        labels.append(truth[: result.scored_frames])  # frames a dropped tail left unscored are not evaluated
    return videos, chosen, labels


def _smoothed(raws: list[np.ndarray], scoring: Scoring) -> np.ndarray:
    if not raws:
        return np.zeros(0)
    if scoring.smoothing == "concatenated":  # the reference: one filter over all videos
        return smooth(np.concatenate(raws), scoring.sigma)
    if scoring.smoothing == "causal":  # what live monitors see: no look-ahead
        return np.concatenate([causal_smooth(r, scoring.sigma) for r in raws])
    return np.concatenate([smooth(r, scoring.sigma) for r in raws])


def _finish(run: Run, scoring: Scoring, videos: list[str], labels: list[np.ndarray], scores: np.ndarray,
            oracle: bool = False) -> RunScores:
    bounds, start = [], 0
    for truth in labels:
        bounds.append((start, start + len(truth)))
        start += len(truth)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int8)
    per_video = {v: auroc(all_labels[a:b], scores[a:b]) for v, (a, b) in zip(videos, bounds, strict=True)}
    return RunScores(run, scoring, auroc(all_labels, scores), per_video, videos, bounds, scores, all_labels, oracle)


def score_run(run: Run, results: dict[str, VideoResult], scoring: Scoring) -> RunScores:
    videos, chosen, labels = _aligned(run, results)
    raws = [raw_scores(r, run.texts, scoring.weights, scoring.rule) for r in chosen]
    scored = _finish(run, scoring, videos, labels, _smoothed(raws, scoring))
    if scoring.smoothing != "causal":
        return scored
    gaussian = _finish(run, replace(scoring, smoothing="per_video"), videos, labels,
                       _smoothed(raws, replace(scoring, smoothing="per_video")))
    return replace(scored, gaussian_auroc=gaussian.auroc)


def oracle_search(run: Run, results: dict[str, VideoResult], scoring: Scoring) -> RunScores:
    """The authors' search on the test labels: sigma 1..29 x their weight grid; the best AUROC
    wins (the first on ties). Reported as "oracle (tuned on test labels)"."""
    videos, chosen, labels = _aligned(run, results)
    all_labels = np.concatenate(labels) if labels else np.zeros(0)
    best: tuple[float, Scoring, np.ndarray] | None = None
    for weights in oracle_weight_grid():
        raws = [raw_scores(r, run.texts, weights, scoring.rule) for r in chosen]
        for sigma in ORACLE_SIGMAS:
            candidate = replace(scoring, weights=weights, sigma=float(sigma))
            scores = _smoothed(raws, candidate)
            value = auroc(all_labels, scores)
            if value is not None and (best is None or value > best[0]):
                best = (value, candidate, scores)
    if best is None:  # undefined for every setting: report the fixed one
        return replace(score_run(run, results, scoring), oracle=True)
    return _finish(run, best[1], videos, labels, best[2], oracle=True)
