"""Event rules: when a text's (causally smoothed) score opens, updates and closes an event.

Per text, segment by segment, in media time:
- an event opens once the score has stayed at or above `threshold` for `min_duration` seconds
  (OPEN, starting when it first reached the threshold);
- while open, a higher score is a new peak (UPDATE, with the reason at the peak);
- it closes when the score falls below `release` (hysteresis: release <= threshold), or when
  the source ends (CLOSE);
- after a close no new event opens for `cooldown` seconds, and at most `max_per_hour` events
  open per hour of media (alert fatigue): crossings then are counted as suppressed.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from services.common.errors import InvalidInput, echo

DEFAULT_THRESHOLD = 0.5
MAX_SECONDS = 7 * 24 * 3600.0  # a week: longer durations and cooldowns are certainly mistakes


@dataclass(frozen=True)
class Rule:
    threshold: float = DEFAULT_THRESHOLD
    release: float = DEFAULT_THRESHOLD
    min_duration: float = 0.0
    cooldown: float = 0.0
    max_per_hour: int = 0  # 0: no limit


def make_rule(threshold: float, release: float | None, min_duration: float, cooldown: float, max_per_hour: int,
              what: str = "rule") -> Rule:
    """A checked rule (threshold 0 means the default; release unset means the threshold)."""
    threshold = threshold or DEFAULT_THRESHOLD
    release = threshold if release is None else release
    if not 0 < threshold <= 1:
        raise InvalidInput(f"{what}: threshold must be above 0 and at most 1, got {echo(threshold, 20)}")
    if not 0 <= release <= threshold:
        raise InvalidInput(f"{what}: release must be 0..threshold ({threshold:g}), got {echo(release, 20)}")
    for name, value in (("min_duration_seconds", min_duration), ("cooldown_seconds", cooldown)):
        if not 0 <= value <= MAX_SECONDS:
            raise InvalidInput(f"{what}: {name} must be 0..{MAX_SECONDS:g}, got {echo(value, 20)}")
    if not 0 <= max_per_hour <= 3600:
        raise InvalidInput(f"{what}: max_per_hour must be 0 (no limit) to 3600, got {max_per_hour}")
    return Rule(threshold, release, min_duration, cooldown, max_per_hour)


class Phase(enum.Enum):
    OPEN = "open"
    UPDATE = "update"
    CLOSE = "close"


@dataclass(frozen=True)
class Observation:
    """One segment's score for one text."""

    score: float  # smoothed
    start_seconds: float
    end_seconds: float
    wall_ms: int = 0  # live sources: when the segment's last frame was read
    reason: str = ""
    segment: int = 0  # the segment index (its evidence)


@dataclass(frozen=True)
class EventChange:
    event_id: str
    phase: Phase
    text: str
    start_seconds: float
    end_seconds: float
    start_wall_ms: int
    end_wall_ms: int
    peak: Observation


class _State(enum.Enum):
    IDLE = "idle"
    PENDING = "pending"  # above the threshold, not yet for min_duration
    OPEN = "open"


class EventTracker:
    """The rule's state machine for one text."""

    def __init__(self, text: str, rule: Rule, new_id: Callable[[], str]) -> None:
        self.text = text
        self.rule = rule
        self.suppressed = 0  # crossings kept from opening by the cooldown or max_per_hour
        self._new_id = new_id
        self._state = _State.IDLE
        self._event: EventChange | None = None  # the pending or open event
        self._cooldown_until = float("-inf")
        self._opened: deque[float] = deque()  # media times events opened, within the last hour

    @property
    def open(self) -> bool:
        return self._state is _State.OPEN

    @property
    def active(self) -> bool:
        """An event is pending (not yet min_duration) or open."""
        return self._state is not _State.IDLE

    def observe(self, seen: Observation) -> list[EventChange]:
        if self._state is _State.OPEN:
            return self._while_open(seen)
        if seen.score < self.rule.threshold:
            self._state, self._event = _State.IDLE, None
            return []
        if self._state is _State.IDLE:
            if not self._may_open(seen.start_seconds):
                self.suppressed += 1
                return []
            self._state = _State.PENDING
            self._event = EventChange(self._new_id(), Phase.OPEN, self.text, seen.start_seconds, seen.end_seconds,
                                      seen.wall_ms, seen.wall_ms, seen)
        assert self._event is not None
        event = self._event
        peak = seen if seen.score > event.peak.score else event.peak
        self._event = replace(event, end_seconds=seen.end_seconds, end_wall_ms=seen.wall_ms, peak=peak)
        if seen.end_seconds - event.start_seconds + 1e-9 < self.rule.min_duration:
            return []
        self._state = _State.OPEN
        self._opened.append(event.start_seconds)
        return [self._event]

    def _while_open(self, seen: Observation) -> list[EventChange]:
        assert self._event is not None
        if seen.score < self.rule.release:
            return [self._close(seen.start_seconds, seen.wall_ms)]
        grew = seen.score > self._event.peak.score
        self._event = replace(self._event, end_seconds=seen.end_seconds, end_wall_ms=seen.wall_ms,
                              peak=seen if grew else self._event.peak)
        return [replace(self._event, phase=Phase.UPDATE)] if grew else []

    def finish(self, end_seconds: float, wall_ms: int = 0) -> list[EventChange]:
        """The source ended: an open event closes there."""
        if self._state is _State.OPEN:
            return [self._close(end_seconds, wall_ms)]
        self._state, self._event = _State.IDLE, None
        return []

    def _close(self, end_seconds: float, wall_ms: int) -> EventChange:
        assert self._event is not None
        closed = replace(self._event, phase=Phase.CLOSE, end_seconds=end_seconds,
                         end_wall_ms=wall_ms or self._event.end_wall_ms)
        self._state, self._event = _State.IDLE, None
        self._cooldown_until = end_seconds + self.rule.cooldown
        return closed

    def _may_open(self, at: float) -> bool:
        if at < self._cooldown_until:
            return False
        while self._opened and self._opened[0] <= at - 3600:
            self._opened.popleft()
        return not self.rule.max_per_hour or len(self._opened) < self.rule.max_per_hour


def rules_for(texts: Sequence[str], rules: dict[str, Rule]) -> dict[str, Rule]:
    """Each text's rule: its own, else the default rule ("" in `rules`)."""
    unknown = [t for t in rules if t and t not in texts]
    if unknown:
        raise InvalidInput(f"event rules for texts that are not detected: {', '.join(echo(t) for t in unknown)}")
    return {text: rules[text] for text in texts if text in rules} | (
        {text: rules[""] for text in texts if text not in rules} if "" in rules else {})
