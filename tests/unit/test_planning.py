"""`anyanomaly plan` against cases computed by hand."""

from __future__ import annotations

import json

import pytest

from services.orchestrator.cli import main
from services.orchestrator.planning import Site, calls_per_segment, plan


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
