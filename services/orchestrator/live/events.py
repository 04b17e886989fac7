"""Event rules applied to a detection's segments as they arrive, and events as protobuf."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

from anyanomaly.v1 import events_pb2
from services.common.errors import InvalidInput, echo
from services.orchestrator.live.rules import EventChange, EventTracker, Observation, Phase, Rule, make_rule, rules_for
from services.orchestrator.pipeline import SegmentOutcome

MAX_RULES = 64
PHASES = {Phase.OPEN: events_pb2.EVENT_PHASE_OPEN, Phase.UPDATE: events_pb2.EVENT_PHASE_UPDATE,
          Phase.CLOSE: events_pb2.EVENT_PHASE_CLOSE}


def rules_from_proto(rules: Sequence[events_pb2.EventRule], texts: Sequence[str]) -> dict[str, Rule]:
    """Each text's checked rule ("" in a rule's text: every text without its own)."""
    if len(rules) > MAX_RULES:
        raise InvalidInput(f"{len(rules)} event rules; at most {MAX_RULES}")
    checked: dict[str, Rule] = {}
    for position, rule in enumerate(rules):
        if rule.text in checked:
            raise InvalidInput(f"rules[{position}]: a second rule for {echo(rule.text) if rule.text else 'every text'}")
        checked[rule.text] = make_rule(rule.threshold, rule.release if rule.HasField("release") else None,
                                       rule.min_duration_seconds, rule.cooldown_seconds, rule.max_per_hour,
                                       f"rules[{position}]")
    return rules_for(texts, checked)


class EventEngine:
    """One tracker per text with a rule, fed each segment's causal scores in order."""

    def __init__(self, rules: dict[str, Rule], new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self._trackers = {text: EventTracker(text, rule, new_id) for text, rule in rules.items()}
        self._last: SegmentOutcome | None = None

    @property
    def rules(self) -> dict[str, Rule]:
        return {text: tracker.rule for text, tracker in self._trackers.items()}

    def active(self, text: str) -> bool:
        tracker = self._trackers.get(text)
        return tracker is not None and tracker.active

    def observe(self, outcome: SegmentOutcome) -> list[EventChange]:
        self._last = outcome
        changes: list[EventChange] = []
        for result in outcome.results:
            tracker = self._trackers.get(result.text)
            if tracker is not None:
                changes += tracker.observe(Observation(
                    result.causal, outcome.start_seconds, outcome.end_seconds, outcome.wall_ms,
                    result.reason(), outcome.index))
        return changes

    def finish(self) -> list[EventChange]:
        """The source ended: open events close at its last segment's end."""
        if self._last is None:
            return []
        return [change for tracker in self._trackers.values()
                for change in tracker.finish(self._last.end_seconds, self._last.wall_ms)]


def to_proto(change: EventChange, cursor: int, monitor_id: str = "", job_id: str = "",
             has_evidence: bool = False, created_ms: int = 0) -> events_pb2.Event:
    return events_pb2.Event(
        event_id=change.event_id, cursor=cursor, phase=PHASES[change.phase], monitor_id=monitor_id, job_id=job_id,
        text=change.text, start_seconds=change.start_seconds, end_seconds=change.end_seconds,
        start_wall_ms=change.start_wall_ms, end_wall_ms=change.end_wall_ms, peak_score=change.peak.score,
        peak_seconds=change.peak.start_seconds, reason=change.peak.reason, has_evidence=has_evidence,
        created_ms=created_ms or int(time.time() * 1000),
    )
