"""Event rules on scripted score curves (one-second segments), and the causal smoother."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from services.common.errors import InvalidInput
from services.common.smoothing import CausalSmoother, causal_smooth
from services.orchestrator.live.rules import EventChange, EventTracker, Observation, Phase, Rule, make_rule, rules_for


def run(scores: list[float], rule: Rule, seconds: float = 1.0) -> list[tuple[str, float, float, float]]:
    """(phase, start, end, peak) of every change, feeding segment i = [i, i + 1) * seconds."""
    ids = itertools.count()
    tracker = EventTracker("running", rule, lambda: f"e{next(ids)}")
    changes: list[EventChange] = []
    for index, score in enumerate(scores):
        changes += tracker.observe(Observation(score, index * seconds, (index + 1) * seconds,
                                               reason=f"reason {index}", segment=index))
    changes += tracker.finish(len(scores) * seconds)
    return [(c.phase.value, c.start_seconds, c.end_seconds, c.peak.score) for c in changes]


def test_hysteresis_keeps_an_event_open_between_release_and_threshold() -> None:
    scores = [0.2, 0.6, 0.45, 0.45, 0.3, 0.6]
    assert run(scores, Rule(threshold=0.5, release=0.4)) == [
        ("open", 1.0, 2.0, 0.6), ("close", 1.0, 4.0, 0.6), ("open", 5.0, 6.0, 0.6), ("close", 5.0, 6.0, 0.6)]
    assert run(scores, Rule(threshold=0.5, release=0.5)) == [  # no hysteresis: it flickers closed at 0.45
        ("open", 1.0, 2.0, 0.6), ("close", 1.0, 2.0, 0.6), ("open", 5.0, 6.0, 0.6), ("close", 5.0, 6.0, 0.6)]


def test_min_duration_ignores_short_spikes_and_opens_from_the_first_crossing() -> None:
    rule = Rule(threshold=0.5, release=0.5, min_duration=2.0)
    assert run([0.6, 0.2, 0.7, 0.2], rule) == []  # one-second spikes
    assert run([0.2, 0.6, 0.7, 0.2, 0.6, 0.6, 0.6], rule) == [
        ("open", 1.0, 3.0, 0.7), ("close", 1.0, 3.0, 0.7), ("open", 4.0, 6.0, 0.6), ("close", 4.0, 7.0, 0.6)]


def test_cooldown_suppresses_crossings_right_after_a_close() -> None:
    rule = Rule(threshold=0.5, release=0.5, cooldown=3.0)
    ids = itertools.count()
    tracker = EventTracker("running", rule, lambda: f"e{next(ids)}")
    phases = []
    for index, score in enumerate([0.6, 0.2, 0.6, 0.2, 0.2, 0.6, 0.2]):
        phases += [(c.phase.value, c.start_seconds) for c in tracker.observe(Observation(score, index, index + 1))]
    assert phases == [("open", 0.0), ("close", 0.0), ("open", 5.0), ("close", 5.0)]  # closed at 1: quiet until 4
    assert tracker.suppressed == 1


def test_at_most_max_per_hour_events_open_per_hour_of_media() -> None:
    rule = Rule(threshold=0.5, release=0.5, max_per_hour=2)
    ten_minutes = [0.6] + [0.1] * 599  # a one-second crossing every 600 s
    opened = [c for c in run(ten_minutes * 8, rule) if c[0] == "open"]
    # Opened at 0 and 600; 1200..3000 suppressed; 3600 and 4200 once the first two are an hour old.
    assert [c[1] for c in opened] == [0.0, 600.0, 3600.0, 4200.0]


def test_updates_carry_each_new_peak_and_its_reason() -> None:
    ids = itertools.count()
    tracker = EventTracker("running", Rule(threshold=0.5, release=0.3), lambda: f"e{next(ids)}")
    changes = []
    for index, score in enumerate([0.6, 0.8, 0.7, 0.9, 0.2]):
        changes += tracker.observe(Observation(score, index, index + 1, reason=f"reason {index}", segment=index))
    assert [(c.phase, c.peak.score, c.peak.reason, c.peak.segment) for c in changes] == [
        (Phase.OPEN, 0.6, "reason 0", 0), (Phase.UPDATE, 0.8, "reason 1", 1), (Phase.UPDATE, 0.9, "reason 3", 3),
        (Phase.CLOSE, 0.9, "reason 3", 3)]
    assert len({c.event_id for c in changes}) == 1  # one event, one stable id
    assert changes[-1].end_seconds == 4.0  # closed when the score fell below the release


def test_rules_are_checked_and_given_to_each_text() -> None:
    assert make_rule(0, None, 0, 0, 0) == Rule(0.5, 0.5)
    for args, message in [((1.5, None, 0, 0, 0), "threshold must be above 0 and at most 1"),
                          ((0.5, 0.7, 0, 0, 0), "release must be 0..threshold"),
                          ((0.5, None, -1, 0, 0), "min_duration_seconds must be"),
                          ((0.5, None, 0, math.inf, 0), "cooldown_seconds must be"),
                          ((0.5, None, 0, 0, -2), "max_per_hour must be")]:
        with pytest.raises(InvalidInput, match=message):
            make_rule(*args)
    special, default = Rule(0.8, 0.6), Rule(0.4, 0.4)
    assert rules_for(["car", "bicycle"], {"car": special, "": default}) == {"car": special, "bicycle": default}
    assert rules_for(["car"], {"car": special}) == {"car": special}
    with pytest.raises(InvalidInput, match="rules for texts that are not detected: 'boat'"):
        rules_for(["car"], {"boat": special})


def test_causal_smoothing_never_looks_ahead_and_lags_by_its_time_constant() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    smoothed = causal_smooth(scores, 15.0)
    changed = scores.copy()
    changed[120:] = 1 - changed[120:]
    np.testing.assert_array_equal(causal_smooth(changed, 15.0)[:120], smoothed[:120])  # the past stays put
    step = causal_smooth(np.r_[np.zeros(10), np.ones(100)], 15.0)
    assert step[10 + 15 - 1] == pytest.approx(1 - math.exp(-1), abs=1e-12)  # 63 % after tau frames
    np.testing.assert_array_equal(causal_smooth(scores, 0.0), scores)


def test_segment_smoother_equals_the_frame_filter_on_segment_scores() -> None:
    segment_scores = [0.1, 0.9, 0.4, 0.4, 0.8, 0.0]
    frames = np.repeat(segment_scores, 24)
    by_frame = causal_smooth(frames, 15.0)
    smoother = CausalSmoother(15.0)
    by_segment = [smoother.update(score, 24) for score in segment_scores]
    np.testing.assert_allclose(by_segment, by_frame[23::24], atol=1e-12)
