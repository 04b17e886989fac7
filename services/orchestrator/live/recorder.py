"""Turning a detection's event changes into stored events with their evidence.

The evidence of an event is the peak segment's three LVLM images (key frame, position context,
temporal context), written once per segment and referenced by every phase of the event that
peaks there. Only the best segment of a pending or open event keeps its images in memory."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from anyanomaly.v1 import events_pb2
from services.common.images import image_format
from services.orchestrator.live.events import EventEngine, to_proto
from services.orchestrator.live.rules import EventChange
from services.orchestrator.pipeline import EvidenceImages, SegmentOutcome
from services.orchestrator.store.store import NewEvent, Store, now_ms

LOG = logging.getLogger(__name__)
EVIDENCE_FILES = ("key_frame", "position_context", "temporal_context")


@dataclass(frozen=True)
class Owner:
    monitor_id: str = ""
    job_id: str = ""
    run: str = ""  # a monitor's detection run: its segment numbers start again at 0

    @property
    def key(self) -> str:
        return self.monitor_id or self.job_id


@dataclass
class _Candidate:
    segment: int
    score: float
    images: EvidenceImages
    start_seconds: float
    end_seconds: float


def evidence_files(images: EvidenceImages) -> dict[str, bytes]:
    """The pictures to keep; a text the cascade screened out has its key frame only."""
    return {f"{name}.{'png' if image_format(data) == 'png' else 'jpg'}": data
            for name, data in zip(EVIDENCE_FILES, (images.key_frame, images.position, images.temporal), strict=True)
            if data}


def _event(change: EventChange, owner: Owner) -> events_pb2.Event:
    return to_proto(change, 0, owner.monitor_id, owner.job_id, created_ms=now_ms())


def evidence_id(owner: Owner, change: EventChange) -> str:
    """The id of the evidence of `change`'s peak (the peak segment's images for its text)."""
    text_key = hashlib.sha256(change.text.encode()).hexdigest()[:12]
    return f"{owner.key}:{owner.run}:{change.peak.segment}:{text_key}" if owner.run else \
        f"{owner.key}:{change.peak.segment}:{text_key}"


def plain_events(changes: list[EventChange], owner: Owner, segment: int) -> list[NewEvent]:
    """Events that bring no new evidence (closes when a source ends): they refer to their peak's."""
    return [NewEvent(_event(change, owner), segment, evidence_id(owner, change)) for change in changes]


class EventRecorder:
    def __init__(self, store: Store, owner: Owner, budget_bytes: int, keep_days: float) -> None:
        self._store = store
        self._owner = owner
        self._budget = budget_bytes
        self._keep_ms = int(keep_days * 86_400_000)
        self._candidates: dict[str, _Candidate] = {}  # per text: the best segment while an event is active

    def _event(self, change: EventChange) -> events_pb2.Event:
        return _event(change, self._owner)

    async def record(self, engine: EventEngine, outcome: SegmentOutcome, changes: list[EventChange]
                     ) -> list[NewEvent]:
        """The events of `changes` (from engine.observe(outcome)) with their evidence written."""
        for result in outcome.results:
            candidate = self._candidates.get(result.text)
            if not engine.active(result.text):
                self._candidates.pop(result.text, None)
            elif result.images is not None and (candidate is None or result.causal > candidate.score):
                self._candidates[result.text] = _Candidate(outcome.index, result.causal, result.images,
                                                           outcome.start_seconds, outcome.end_seconds)
        events = []
        for change in changes:
            evidence_id = await self._evidence(change)
            events.append(NewEvent(self._event(change), outcome.index, evidence_id))
        return events

    async def _evidence(self, change: EventChange) -> str:
        """The evidence id of the change's peak, written first if this segment brought it."""
        peak_evidence = evidence_id(self._owner, change)
        candidate = self._candidates.get(change.text)
        if candidate is not None and candidate.segment == change.peak.segment and \
                not await self._store.has_evidence(peak_evidence):
            try:
                await self._store.add_evidence(peak_evidence, self._owner.key, evidence_files(candidate.images),
                                               candidate.start_seconds, candidate.end_seconds)
            except OSError as exc:  # a full disk loses the pictures, not the event
                LOG.error("cannot write the evidence of %s: %s", peak_evidence, exc)
            await self._store.expire_evidence(self._owner.key, self._budget, now_ms() - self._keep_ms)
        return peak_evidence
