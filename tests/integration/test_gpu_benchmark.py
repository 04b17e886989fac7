"""benchmarks/gpu.sh, the GPU column's script, as far as a machine without a GPU allows: its
syntax, its refusal without CUDA, and the Python it runs (benchmarks.gpu) on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks/gpu.sh"


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_script_says_so() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 1
    assert "torch sees no CUDA device" in done.stderr and "--device cpu" in done.stderr


@pytest.mark.slow
def test_the_gpu_benchmark_prints_its_table_on_the_cpu(tmp_path: Path) -> None:
    output = tmp_path / "gpu.md"
    subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--quick", "--output", str(output)],
                   cwd=ROOT, check=True, timeout=600, capture_output=True, env={**os.environ, "LVLM_MODEL": ""})
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in output.read_text().splitlines()[2:]}
    assert rows["clip_service, model alone, batch 16"].endswith("images/s")
    assert float(rows["clip_service, model alone, batch 16"].split()[0].replace(",", "")) > 0
    crops = [figure for what, figure in rows.items() if what.startswith("CLIP side per segment") and "crops" in what]
    dense = [figure for what, figure in rows.items() if what.startswith("CLIP side per segment") and "dense" in what]
    assert len(crops) == 2 and all(figure.endswith("contexts same") for figure in crops)
    assert len(dense) == 2 and all("vs the reference:" in figure and " grid, PC " in figure for figure in dense)
    assert rows["LVLM calls/s per mode"].startswith("skipped: no --lvlm-model")
