"""`anyanomaly plan` against cases computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anyanomaly.cli import main
from anyanomaly.planning import Site, calls_per_segment, from_benchmark, plan


def test_ten_cameras_two_texts_standard() -> None:
    # 10 x 25 / 24 = 10.4167 segments/s; x 6 calls = 62.5 calls/s; a pod: 16 / 0.5 x 0.7 = 22.4 calls/s
    # -> 62.5 / 22.4 = 2.79 -> 3 pods; latency 24 / 25 + 0.5 = 1.46 s.
    result = plan(Site(cameras=10, texts=2, seconds_per_call=0.5))
    assert result.segments_per_second == pytest.approx(10.416667, rel=1e-6)
    assert result.calls_per_segment == 6 and result.calls_per_second == pytest.approx(62.5)
    assert result.calls_per_second_per_pod == pytest.approx(22.4)
    assert (result.pods, result.gpus) == (3, 3)
    assert result.latency_seconds == pytest.approx(1.46)


def test_multi_text_sampling_and_the_gate_cut_the_load() -> None:
    # 40 cameras at 5 fps: 40 x 5 / 24 = 8.333 segments/s; multi_text: 3 calls; half pass the gate:
    # 12.5 calls/s; a pod: 8 / 1.2 x 0.7 = 4.667 calls/s -> 2.68 -> 3 pods of 2 GPUs = 6 GPUs;
    # latency 24 / 5 + 1.2 + 2 = 8.0 s.
    result = plan(Site(cameras=40, texts=5, seconds_per_call=1.2, mode="multi_text", sample_fps=5, gate_pass=0.5,
                       concurrency=8, gpus_per_pod=2, min_duration_seconds=2))
    assert result.calls_per_second == pytest.approx(12.5)
    assert (result.pods, result.gpus) == (3, 6)
    assert result.latency_seconds == pytest.approx(8.0)


def test_an_exact_fit_needs_no_extra_pod_and_one_pod_is_the_least() -> None:
    # 24 cameras at 24 fps with 24-frame segments: 24 segments/s x 3 calls = 72 calls/s = 2 pods of 36.
    assert plan(Site(cameras=24, texts=1, seconds_per_call=0.25, sample_fps=24, concurrency=9,
                     utilization=1.0)).pods == 2
    assert plan(Site(cameras=1, texts=1, seconds_per_call=0.01)).pods == 1


def test_the_command_prints_the_plan_and_refuses_a_bad_site(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--cameras", "10", "--texts", "2", "--lvlm-seconds-per-call", "0.5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["plan"]["pods"], printed["plan"]["gpus"]) == (3, 3)
    assert main(["plan", "--cameras", "10", "--texts", "2", "--lvlm-seconds-per-call", "0.5"]) == 0
    assert "LVLM pods: 3 (3 GPUs)" in capsys.readouterr().out
    assert main(["plan", "--cameras", "0", "--texts", "2", "--lvlm-seconds-per-call", "0.5"]) == 2
    assert "cameras and texts must be at least 1" in capsys.readouterr().err


def test_calls_per_segment_by_mode_and_bad_plans() -> None:
    assert [calls_per_segment(m, 4) for m in ("standard", "fast", "reason_first", "multi_text")] == [12, 12, 12, 3]
    with pytest.raises(ValueError, match="unknown mode"):
        calls_per_segment("cheap", 1)
    with pytest.raises(ValueError, match="utilization"):
        plan(Site(cameras=1, texts=1, seconds_per_call=1, utilization=1.5))


BENCHMARK = {"benchmark": "bench_lvlm", "concurrency": 8, "rows": [
    {"texts": 1, "mode": "standard", "calls": 3, "wall_seconds": 0.4},
    {"texts": 5, "mode": "standard", "calls": 15, "wall_seconds": 0.9},  # 2 waves of 8: 0.45 s a call
    {"texts": 5, "mode": "multi_text", "calls": 3, "wall_seconds": 0.6},
]}


def test_call_times_come_from_the_benchmark_row_nearest_the_site() -> None:
    # 4 texts, standard: nearest row is 5 texts (15 calls at 8 in flight: 2 waves) -> 0.9 / 2 = 0.45 s;
    # calls per segment from the mode, 12, since the row measured 5 texts.
    measured = from_benchmark(BENCHMARK, "standard", 4)
    assert measured.seconds_per_call == pytest.approx(0.45) and measured.concurrency == 8
    assert measured.calls_per_segment == 12
    assert from_benchmark(BENCHMARK, "multi_text", 5).calls_per_segment == 3  # measured exactly
    nearest = from_benchmark(BENCHMARK, "standard", 2)  # 1 text is nearer than 5
    assert nearest.seconds_per_call == pytest.approx(0.4) and nearest.concurrency == 3  # 3 calls were in flight
    with pytest.raises(ValueError, match="no rows for mode 'fast'"):
        from_benchmark(BENCHMARK, "fast", 1)
    with pytest.raises(ValueError, match=r"not a benchmarks\.bench_lvlm result"):
        from_benchmark({"rows": []}, "standard", 1)


def test_the_command_plans_from_a_benchmark_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 12 cameras x 25 / 24 = 12.5 segments/s x 15 calls = 187.5 calls/s; a pod: 8 / 0.45 x 0.7 = 12.44
    # calls/s -> 15.07 -> 16 pods; latency 0.96 + 0.45 = 1.41 s.
    result = tmp_path / "bench.json"
    result.write_text(json.dumps(BENCHMARK))
    assert main(["plan", "--cameras", "12", "--texts", "5", "--from-benchmark", str(result), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["site"]["concurrency"] == 8 and printed["plan"]["calls_per_segment"] == 15
    assert printed["plan"]["pods"] == 16 and printed["plan"]["latency_seconds"] == pytest.approx(1.41)
    assert main(["plan", "--cameras", "12", "--texts", "5", "--from-benchmark", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # one of the two sources is needed
        main(["plan", "--cameras", "1", "--texts", "1"])
    assert refused.value.code == 2 and "--from-benchmark" in capsys.readouterr().err
