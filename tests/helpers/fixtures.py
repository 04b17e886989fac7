"""Locating and reading the real fixture clips in ../shared/fixtures/real."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES_ENV = "ANYANOMALY_FIXTURES"


def fixtures_root() -> Path:
    """The real fixtures: $ANYANOMALY_FIXTURES, else ../shared/fixtures/real beside the repository."""
    root = Path(os.environ.get(FIXTURES_ENV) or REPO_ROOT.parent / "shared" / "fixtures" / "real")
    if not (root / "avenue").is_dir():
        raise FileNotFoundError(
            f"real fixtures not found at {root}; lay shared/ beside the repository or set {FIXTURES_ENV}"
        )
    return root


def read_video_frames(path: Path, count: int | None = None, start: int = 0) -> list[np.ndarray]:
    """RGB uint8 frames [start, start + count) of a video, decoded with OpenCV."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise OSError(f"cannot open {path}")
    frames: list[np.ndarray] = []
    index = 0
    try:
        while count is None or len(frames) < count:
            ok, bgr = capture.read()
            if not ok:
                break
            if index >= start:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        capture.release()
    return frames


def avenue_clip(name: str = "21") -> Path:
    return fixtures_root() / "avenue" / "testing_videos" / f"{name}.avi"
