"""Writes the smoke-run clip the README times: 795 frames of 768x576 at 25 fps, made from the
real Avenue test video 20 (looped and resized), as MPEG-4.

    python -m benchmarks.smoke_clip out/smoke.mp4
    time make detect VIDEO=out/smoke.mp4 TEXT=running MODELS=tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

SOURCE = Path(__file__).resolve().parents[1].parent / "shared/fixtures/real/avenue/testing_videos/20.avi"
FRAMES, SIZE, FPS = 795, (768, 576), 25.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--source", type=Path, default=SOURCE)
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(args.output), cv2.VideoWriter.fourcc(*"mp4v"), FPS, SIZE)
    written = 0
    while written < FRAMES:
        capture = cv2.VideoCapture(str(args.source))
        ok, frame = capture.read()
        if not ok:
            raise SystemExit(f"cannot read {args.source}")
        while ok and written < FRAMES:
            writer.write(cv2.resize(frame, SIZE))
            written += 1
            ok, frame = capture.read()
        capture.release()
    writer.release()
    print(f"{args.output}: {written} frames of {SIZE[0]}x{SIZE[1]} at {FPS:g} fps")


if __name__ == "__main__":
    main()
