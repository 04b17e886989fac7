"""Capacity planning for a site: LVLM pods (GPUs) for C cameras and K texts.

Load: each camera yields `sample_fps / segment_length` segments a second; a segment costs
`calls_per_segment(mode, texts)` LVLM calls (times the share of segments that pass the CLIP
gate). Supply: an LVLM pod (one vLLM engine on one GPU) answers `concurrency` calls at once in
`seconds_per_call` each, and is planned to run at `utilization` at most, so queues stay short.
Latency from the first anomalous frame to the event: the segment must fill, then its calls run
in parallel (one call time), then the event rule's minimum duration."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CALLS_PER_TEXT = 3  # key frame, position context, temporal context


def calls_per_segment(mode: str, texts: int) -> int:
    """LVLM calls per segment: 3 per text, or 3 in all with multi_text (shared images)."""
    if mode == "multi_text":
        return CALLS_PER_TEXT
    if mode in ("standard", "fast", "reason_first"):
        return CALLS_PER_TEXT * texts
    raise ValueError(f"unknown mode {mode!r}: standard, fast, reason_first or multi_text")


@dataclass(frozen=True)
class Site:
    cameras: int
    texts: int
    seconds_per_call: float  # one call's time at the pod's concurrency (measure it: benchmarks/bench_lvlm)
    mode: str = "standard"
    sample_fps: float = 25.0
    segment_length: int = 24
    gate_pass: float = 1.0  # share of segments that pass the CLIP gate (1: no gate)
    concurrency: int = 16  # calls one pod answers at once
    utilization: float = 0.7
    gpus_per_pod: int = 1
    min_duration_seconds: float = 0.0
    measured_calls_per_segment: int = 0  # from a benchmark; 0: from the mode


@dataclass(frozen=True)
class Plan:
    segments_per_second: float
    calls_per_segment: int
    calls_per_second: float
    calls_per_second_per_pod: float  # at the planned utilization
    pods: int
    gpus: int
    latency_seconds: float  # first anomalous frame -> event, without queueing


def plan(site: Site) -> Plan:
    if site.cameras < 1 or site.texts < 1 or site.seconds_per_call <= 0 or site.sample_fps <= 0:
        raise ValueError("cameras and texts must be at least 1, seconds per call and fps above 0")
    if not 0 < site.utilization <= 1 or not 0 <= site.gate_pass <= 1:
        raise ValueError("utilization must be in (0, 1] and gate_pass in [0, 1]")
    segments = site.cameras * site.sample_fps / site.segment_length
    per_segment = site.measured_calls_per_segment or calls_per_segment(site.mode, site.texts)
    load = segments * per_segment * site.gate_pass
    per_pod = site.concurrency / site.seconds_per_call * site.utilization
    pods = max(1, math.ceil(load / per_pod - 1e-9))
    latency = site.segment_length / site.sample_fps + site.seconds_per_call + site.min_duration_seconds
    return Plan(segments, per_segment, load, per_pod, pods, pods * site.gpus_per_pod, latency)


@dataclass(frozen=True)
class Measured:
    seconds_per_call: float  # one call's time with `concurrency` in flight
    concurrency: int  # the calls that were in flight
    calls_per_segment: int
    source: str  # which measurement, for the printout


def from_benchmark(result: Mapping[str, Any], mode: str, texts: int) -> Measured:
    """Seconds per call from a `python -m benchmarks.bench_lvlm --json FILE` result: the row of
    `mode` with the number of texts nearest `texts`. The benchmark sends one segment at a time, so
    min(calls, concurrency) calls were in flight, in ceil(calls / in flight) waves; the plan then
    counts on that many calls at once per pod (on a batching GPU a pod may take more: measure with
    more texts, or give --concurrency-per-pod and --lvlm-seconds-per-call from the engine's own
    figures)."""
    try:
        concurrency = int(result["concurrency"])
        if concurrency < 1:
            raise ValueError(f"the benchmark result's concurrency is {concurrency}; it must be at least 1")
        rows = [r for r in result["rows"] if r["mode"] == mode]
        if not rows:
            raise ValueError(f"the benchmark result has no rows for mode {mode!r}")
        row = min(rows, key=lambda r: (abs(int(r["texts"]) - texts), -int(r["texts"])))
        calls, wall = int(row["calls"]), float(row["wall_seconds"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a benchmarks.bench_lvlm result ({exc!r} missing or malformed)") from None
    in_flight = max(1, min(calls, concurrency))
    seconds = wall / math.ceil(max(calls, 1) / in_flight)
    per_segment = calls if int(row["texts"]) == texts else calls_per_segment(mode, texts)
    return Measured(seconds, in_flight, per_segment,
                    f"{mode}, {row['texts']} texts: {calls} calls, {in_flight} at a time, in {wall:.3g} s")
