"""Pictures of a detection, from its result JSON:

- `anyanomaly detect --plot`: each text's fused score per segment, the smoothed frame score, the
  threshold, the spans above it (events) and the segment boundaries, like the paper's Figure S3
  (matplotlib, the `eval` extra);
- `--evidence DIR`: for the best segments and each span's best segment, the key frame, the attention
  heatmap over it and the temporal grid, with the text, score and reason written under them
  (OpenCV; the images come with DetectOptions.include_images);
- `--report FILE.html`: both in one self-contained page (anyanomaly/report.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Span:
    """Frames [start, end) whose smoothed score is at or above the threshold, and its peak."""

    start: int
    end: int
    peak_frame: int
    peak_score: float


def spans_above(frame_scores: list[float], threshold: float) -> list[Span]:
    """The runs of frames at or above `threshold`, in order."""
    scores = np.asarray(frame_scores, dtype=np.float64)
    above = np.concatenate([[False], scores >= threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    spans = []
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        peak = int(start + np.argmax(scores[start:end]))
        spans.append(Span(int(start), int(end), peak, float(scores[peak])))
    return spans


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("pictures need matplotlib: pip install 'anyanomaly[eval]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def plot_detection(document: dict[str, Any], path: Path, threshold: float = DEFAULT_THRESHOLD) -> list[Span]:
    """Write the score figure of a result document to `path` (PNG); return the spans drawn."""
    plt = _pyplot()
    segments = document["segments"]
    frames = int(document["num_frames"]) or max((s["end_frame"] for s in segments), default=0)
    frame_scores = list(document.get("frame_scores") or [])
    figure, axis = plt.subplots(figsize=(11, 3.6))
    spans = spans_above(frame_scores, threshold) if frame_scores else []
    for span in spans:
        axis.axvspan(span.start, span.end, color="salmon", alpha=0.3, linewidth=0)
    for segment in segments:
        axis.axvline(segment["start_frame"], color="0.85", linewidth=0.6, zorder=0)
    for text in document["texts"]:
        edges = [s["start_frame"] for s in segments] + [segments[-1]["end_frame"]] if segments else []
        fused = [s["scores"][text]["fused"] for s in segments if text in s.get("scores", {})]
        if len(fused) == len(segments) and segments:
            axis.stairs(fused, edges, baseline=None, label=f"{text} (fused)", linewidth=1.2)
    if frame_scores:
        axis.plot(np.arange(len(frame_scores)), frame_scores, color="black", linewidth=1.6,
                  label=f"frame score (smoothed, sigma {document.get('sigma', '')})")
    axis.axhline(threshold, color="firebrick", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axis.set(xlim=(0, max(frames, 1)), ylim=(-0.02, 1.05), xlabel="frame", ylabel="score",
             title=f"{Path(str(document['source'])).name}: {', '.join(document['texts'])}"
                   f" ({len(spans)} span{'s' if len(spans) != 1 else ''} above the threshold)")
    if document.get("models", {}).get("warning"):
        axis.text(0.01, 0.97, "tiny random models: meaningless scores", transform=axis.transAxes, fontsize=7,
                  va="top", color="0.4")
    axis.legend(fontsize="small", loc="upper right", ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return spans


class EvidenceKeeper:
    """The images of the segments that may become evidence, kept while a detection streams in:
    the `top` best-scoring segments so far, and the segments at or above the threshold (at most
    `limit` of them, the best). Others' images are dropped as they arrive."""

    def __init__(self, threshold: float, top: int = 5, limit: int = 200) -> None:
        self.threshold, self.top, self.limit = threshold, top, limit
        self.kept: dict[int, tuple[float, dict[str, Any]]] = {}  # segment index -> (score, {text: images})

    def add(self, index: int, score: float, images: dict[str, Any]) -> None:
        self.kept[index] = (score, images)
        if len(self.kept) > self.limit:  # a long video above the threshold: memory stays bounded
            del self.kept[min(self.kept, key=lambda i: self.kept[i][0])]
        below = sorted((s, i) for i, (s, _) in self.kept.items() if s < self.threshold)
        ranked = sorted((s for s, _ in self.kept.values()), reverse=True)
        cutoff = ranked[self.top - 1] if len(ranked) >= self.top else float("-inf")
        for kept_score, kept_index in below:
            if kept_score < cutoff:
                del self.kept[kept_index]


@dataclass(frozen=True)
class EvidencePicture:
    path: Path
    kind: str  # "top" (one of the best segments) or "event" (the peak of a span above the threshold)
    segment: int
    text: str
    score: float


def _mask(key_frame: np.ndarray, position: np.ndarray) -> np.ndarray:
    """The attention map the position context was made with, recovered as context / frame (the
    position context is the 224x224 key frame weighted by the map); 0..1."""
    import cv2

    base = cv2.resize(key_frame, (position.shape[1], position.shape[0]), interpolation=cv2.INTER_LINEAR)
    ratio = position.astype(np.float32).sum(axis=2) / np.maximum(base.astype(np.float32).sum(axis=2), 1.0)
    return np.clip(cv2.GaussianBlur(ratio, (9, 9), 0), 0.0, 1.0)


def _panel(key_frame_bytes: bytes, position_bytes: bytes, temporal_bytes: bytes, caption: list[str]) -> np.ndarray:
    """One picture: the key frame, the attention heatmap over it, the temporal grid, and the caption."""
    import cv2

    def decode(data: bytes) -> np.ndarray | None:
        if not data:
            return None
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return image if image is not None else None

    height = 224
    frame = decode(key_frame_bytes)
    assert frame is not None, "a kept text always has its key frame"
    scaled = cv2.resize(frame, (max(1, round(frame.shape[1] * height / frame.shape[0])), height))
    panels = [scaled]
    position, temporal = decode(position_bytes), decode(temporal_bytes)
    if position is not None:
        mask = cv2.resize(_mask(frame, position), (scaled.shape[1], height))
        heat = cv2.applyColorMap((mask * 255).astype(np.uint8), cv2.COLORMAP_JET)
        panels.append(cv2.addWeighted(scaled, 0.55, heat, 0.45, 0))
    if temporal is not None:
        panels.append(cv2.resize(temporal, (height, height)))
    gap = np.full((height, 6, 3), 255, np.uint8)
    row = np.hstack([part for panel in panels for part in (panel, gap)][:-1])
    strip = np.full((22 * len(caption) + 10, row.shape[1], 3), 255, np.uint8)
    for line, text in enumerate(caption):
        cv2.putText(strip, text, (6, 22 * line + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    return np.vstack([row, strip])


def _ascii(text: str, limit: int) -> str:
    """OpenCV draws ASCII only; a long reason is cut."""
    plain = text.encode("ascii", "replace").decode().replace("\n", " ")
    return plain if len(plain) <= limit else plain[: limit - 3] + "..."


def write_evidence(document: dict[str, Any], keeper: EvidenceKeeper, folder: Path,
                   threshold: float = DEFAULT_THRESHOLD, top: int = 3) -> list[EvidencePicture]:
    """One JPEG per chosen segment (its best text): the `top` best segments and the best segment of
    every span at or above `threshold`, each with the text, score and reason written under it."""
    import cv2

    segments = {s["index"]: s for s in document["segments"]}
    chosen: dict[int, str] = {}
    for segment in sorted(document["segments"], key=lambda s: s["score"], reverse=True)[:top]:
        chosen[segment["index"]] = "top"
    for span in spans_above(list(document.get("frame_scores") or []), threshold):
        # The event's picture: its best segment whose images were kept (smoothing can put the span's
        # peak frame in a neighbour of the segment that made it).
        inside = [s for s in document["segments"] if s["start_frame"] < span.end and s["end_frame"] > span.start]
        kept = [s for s in inside if s["index"] in keeper.kept]
        if kept:
            chosen[max(kept, key=lambda s: s["score"])["index"]] = "event"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, kind in sorted(chosen.items()):
        if index not in keeper.kept:
            continue
        segment = segments[index]
        text, score = max(segment["scores"].items(), key=lambda item: item[1]["fused"])
        images = keeper.kept[index][1].get(text)
        if images is None or not images["key_frame"]:
            continue
        fps = float(document.get("fps") or 0)
        when = f", {segment['start_frame'] / fps:.1f}-{segment['end_frame'] / fps:.1f} s" if fps else ""
        caption = [_ascii(f"{kind}: frames {segment['start_frame']}-{segment['end_frame'] - 1}{when} | {text} | "
                          f"fused {score['fused']:.2f} (frame {score['frame']:.2f}, position {score['position']:.2f}, "
                          f"temporal {score['temporal']:.2f})", 150),
                   _ascii(f"reason: {score['reason'] or '-'}", 150)]
        picture = _panel(images["key_frame"], images["position_context"], images["temporal_context"], caption)
        path = folder / f"segment-{index:05d}-{re.sub(r'[^A-Za-z0-9]+', '_', text)[:40]}.jpg"
        cv2.imwrite(str(path), picture, [cv2.IMWRITE_JPEG_QUALITY, 90])  # photos: a fifth of a PNG
        written.append(EvidencePicture(path, kind, index, text, float(score["fused"])))
    return written
