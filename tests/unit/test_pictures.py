"""`anyanomaly detect --plot`: the spans above the threshold, and the figure drawn from a result."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anyanomaly.pictures import EvidenceKeeper, Span, plot_detection, spans_above


def test_spans_are_the_runs_at_or_above_the_threshold_with_their_peaks() -> None:
    scores = [0.1, 0.5, 0.7, 0.4, 0.2, 0.9, 0.95, 0.5]
    assert spans_above(scores, 0.5) == [Span(1, 3, 2, 0.7), Span(5, 8, 6, 0.95)]
    assert spans_above(scores, 0.96) == []
    assert spans_above([0.6] * 4, 0.5) == [Span(0, 4, 0, 0.6)]
    assert spans_above([], 0.5) == []


def test_the_plot_draws_each_text_the_frame_score_and_the_spans(tmp_path: Path) -> None:
    texts = ["bicycle", "person running"]
    fused = {"bicycle": [0.1, 0.9, 0.2], "person running": [0.3, 0.3, 0.6]}
    segments = [{"index": i, "start_frame": 24 * i, "end_frame": 24 * (i + 1),
                 "scores": {t: {"fused": fused[t][i]} for t in texts}} for i in range(3)]
    frame_scores = list(np.repeat([0.2, 0.9, 0.6], 24).astype(float))
    document = {"source": "/videos/lobby.mp4", "texts": texts, "num_frames": 72, "segments": segments,
                "frame_scores": frame_scores, "sigma": 15.0, "models": {}}
    path = tmp_path / "plot.png"
    spans = plot_detection(document, path, threshold=0.5)
    assert spans == [Span(24, 72, 24, 0.9)]
    image = cv2.imread(str(path))
    assert image is not None and image.shape[1] > 900 and image.shape[0] > 300
    # The span is shaded (salmon, not the white background) over the right two thirds only.
    salmon = np.all(np.abs(image.astype(int) - [196, 211, 250]) < 40, axis=2)  # BGR of salmon at 30 % alpha
    shaded = salmon.sum(axis=0) > 50
    runs = np.split(np.flatnonzero(shaded), np.flatnonzero(np.diff(np.flatnonzero(shaded)) > 1) + 1)
    widest = max(runs, key=len)  # the span's band (a few single columns elsewhere: legend, tick marks)
    assert len(widest) > image.shape[1] * 0.4 and widest[0] > image.shape[1] * 0.3


def test_the_keeper_holds_the_best_segments_and_those_above_the_threshold() -> None:
    keeper = EvidenceKeeper(threshold=0.8, top=2)
    for index, score in enumerate([0.1, 0.5, 0.9, 0.3, 0.6, 0.85, 0.2]):
        keeper.add(index, score, {"t": {"key_frame": b"x"}})
    # 0.9 and 0.85 are above the threshold; the best two below it so far are 0.6 and 0.5, but the
    # two best overall (0.9, 0.85) fill the top, so nothing below the threshold stays.
    assert sorted(keeper.kept) == [2, 5]
    low = EvidenceKeeper(threshold=0.95, top=2)
    for index, score in enumerate([0.1, 0.5, 0.9, 0.3]):
        low.add(index, score, {})
    assert sorted(low.kept) == [1, 2]
