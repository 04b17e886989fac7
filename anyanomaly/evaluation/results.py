"""Detection result JSONs (as `anyanomaly detect --output` writes them), read back with the
raw per-text stream scores of every segment, so they can be re-fused and re-scored."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import InvalidInput

Streams = tuple[float, float, float]  # frame, position, temporal


@dataclass(frozen=True)
class SegmentScores:
    start: int
    end: int
    streams: dict[str, Streams]  # text -> raw scores


@dataclass(frozen=True)
class VideoResult:
    path: Path
    num_frames: int
    scored_frames: int
    segment_length: int
    texts: tuple[str, ...]
    profile: str
    preset: str
    segments: tuple[SegmentScores, ...]
    scoring: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCORING))
    lvlm_calls: int = 0
    screened_out: int = 0


# What a result written before the scoring configuration was recorded was made with.
DEFAULT_SCORING: dict[str, Any] = {"mode": "standard", "multi_text": False, "gate_threshold": None,
                                   "cascade_threshold": None, "window_features": "crops"}


@dataclass(frozen=True)
class ResultConfig:
    """What a cached result must match to be reused."""

    segment_length: int
    texts: tuple[str, ...]
    profile: str
    preset: str
    scoring: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCORING))


def _segment(path: Path, raw: dict[str, Any]) -> SegmentScores:
    streams = {
        text: (float(s["frame"]), float(s["position"]), float(s["temporal"])) for text, s in raw["scores"].items()
    }
    return SegmentScores(int(raw["start_frame"]), int(raw["end_frame"]), streams)


def _scoring(raw: dict[str, Any]) -> dict[str, Any]:
    """The recorded scoring configuration; for a result written before it was recorded, the
    defaults, unless its gated segments show a CLIP gate of unknown threshold."""
    if "scoring" in raw:
        return {**DEFAULT_SCORING, **raw["scoring"]}
    return {**DEFAULT_SCORING, "gate_threshold": "unknown" if raw.get("gated_segments") else None}


def load_result(path: Path) -> VideoResult:
    try:
        raw = json.loads(path.read_text())
        return VideoResult(
            path=path,
            num_frames=int(raw["num_frames"]),
            scored_frames=int(raw.get("scored_frames", raw["num_frames"])),
            segment_length=int(raw["segment_length"]),
            texts=tuple(raw["texts"]),
            profile=str(raw.get("profile", "default")),
            preset=str(raw.get("preset", "")),
            segments=tuple(_segment(path, s) for s in raw["segments"]),
            scoring=_scoring(raw),
            lvlm_calls=int(raw.get("lvlm_usage", {}).get("calls", 0)),
            screened_out=int(raw.get("screened_out", 0)),
        )
    except FileNotFoundError as exc:
        raise InvalidInput(f"result file not found: {path}") from exc
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{path}: not a detection result written by `anyanomaly detect` ({exc!r})") from exc


def check_config(result: VideoResult, expected: ResultConfig) -> None:
    """Refuse a result made with another configuration, naming the file and the difference."""
    problems = []
    if result.segment_length != expected.segment_length:
        problems.append(f"segment length {result.segment_length}, expected {expected.segment_length}")
    missing = [t for t in expected.texts if t not in result.texts]
    if missing:
        problems.append(f"texts {list(result.texts)} lack {missing}")
    if expected.profile and result.profile != expected.profile:
        problems.append(f"profile {result.profile!r}, expected {expected.profile!r}")
    if expected.preset and result.preset and result.preset != expected.preset:
        problems.append(f"preset {result.preset!r}, expected {expected.preset!r}")
    problems += [f"{name} {result.scoring.get(name)!r}, expected {value!r}" for name, value in expected.scoring.items()
                 if result.scoring.get(name) != value]
    if problems:
        raise InvalidInput(f"{result.path} comes from another configuration: {'; '.join(problems)}. "
                           "Delete it (or use another --output-dir) to run the detection again")


def result_path(results_dir: Path, group: str, video: str) -> Path:
    """`<dir>/<group>/<video>.json`, or `<dir>/<video>.json` for a flat folder of detect outputs."""
    grouped = results_dir / group / f"{video}.json"
    flat = results_dir / f"{video}.json"
    return flat if not grouped.exists() and flat.exists() else grouped
