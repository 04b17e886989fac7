"""The LVLM benchmark's result file plans a site: what `bench_lvlm --json` writes is what
`anyanomaly plan --from-benchmark` reads, and the call time it finds is the engine's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anyanomaly.cli import main
from tests.helpers.fixtures import REPO_ROOT
from tests.helpers.processes import die_with_this_process

LATENCY_MS = 50


def test_a_benchmark_run_plans_a_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = tmp_path / "lvlm.json"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_lvlm", "--latency-ms", str(LATENCY_MS), "--segments", "1",
                    "--json", str(result)], cwd=REPO_ROOT, check=True, capture_output=True, timeout=300,
                   preexec_fn=die_with_this_process)
    rows = json.loads(result.read_text())["rows"]
    assert {(r["texts"], r["mode"]) for r in rows} == {
        (k, m) for k in (1, 5, 11) for m in ("standard", "reason_first", "fast", "multi_text")}
    assert main(["plan", "--cameras", "8", "--texts", "5", "--from-benchmark", str(result), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["plan"]["calls_per_segment"] == 15  # measured: 3 calls per text
    # One wave of 15 calls (all in flight, 16 allowed): the engine's latency plus our overhead
    # (bounded loosely: on a busy machine the overhead alone can pass 100 ms).
    assert LATENCY_MS / 1000 <= printed["site"]["seconds_per_call"] < 10 * LATENCY_MS / 1000
    assert printed["site"]["concurrency"] == 15
