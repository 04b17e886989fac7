"""benchmarks.clip_levers, the image encoder's speed levers, prints a row per lever with its speed
against fp32 and how far its embeddings move (the tiny CLIP here, to check the script)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_lever_gets_a_row_with_its_speed_and_cosine() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.clip_levers", "--models", "tiny", "--batch", "8",
                           "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    rows = {line[:40].strip(): line[40:].split() for line in done.stdout.splitlines()[2:] if line[40:].strip()}
    assert {"fp32, no_grad", "fp32, inference_mode (clip_service)", "bf16 weights (--precision bf16)"} <= set(rows)
    assert rows["fp32, no_grad"][1:] == ["1.00x", "1.000000"]  # the baseline against itself
    assert 0.99 < float(rows["bf16 weights (--precision bf16)"][2]) < 1.0
