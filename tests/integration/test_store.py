"""The store on both backends: SQLite in the data dir and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from anyanomaly.v1 import events_pb2, jobs_pb2, monitors_pb2, orchestrator_pb2
from services.common.urls import redact
from services.orchestrator.store.database import DuplicateKey, Transaction
from services.orchestrator.store.migrations import MIGRATIONS, migrate
from services.orchestrator.store.store import EventFilter, NewEvent, Store


def _event(event_id: str, phase: events_pb2.EventPhase.ValueType = events_pb2.EVENT_PHASE_OPEN,
           monitor: str = "", job: str = "", text: str = "bicycle", created_ms: int = 1000) -> NewEvent:
    return NewEvent(events_pb2.Event(event_id=event_id, phase=phase, monitor_id=monitor, job_id=job, text=text,
                                     created_ms=created_ms, peak_score=0.75))


def _job(job_id: str, created_ms: int) -> tuple[jobs_pb2.Job, jobs_pb2.SubmitJobRequest]:
    request = jobs_pb2.SubmitJobRequest(source=orchestrator_pb2.VideoSource(path=f"/videos/{job_id}.avi"),
                                        texts=["bicycle"], name=job_id)
    return jobs_pb2.Job(job_id=job_id, name=job_id, state=jobs_pb2.JOB_STATE_QUEUED, created_ms=created_ms,
                        updated_ms=created_ms), request


def _set_created(evidence_id: str, created_ms: int, transaction: Transaction) -> None:
    transaction.execute("UPDATE evidence SET created_ms = ? WHERE evidence_id = ?", (created_ms, evidence_id))


@pytest.fixture
def store(store_location: tuple[Path, str]) -> Iterator[Store]:
    opened = Store.open(*store_location)
    yield opened
    opened.close()


def test_migrations_apply_once_and_a_newer_schema_is_refused(store_location: tuple[Path, str]) -> None:
    first = Store.open(*store_location)
    try:
        assert migrate(first.database) == []  # Store.open applied them all
        versions = first.database.call(lambda t: t.all("SELECT version FROM schema_versions ORDER BY version"))
        assert [v for (v,) in versions] == [version for version, _, _ in MIGRATIONS]
        first.database.call(lambda t: t.execute("INSERT INTO schema_versions VALUES (999, 'future', 0)"))
    finally:
        first.close()
    with pytest.raises(RuntimeError, match="schema version 999, newer"):
        Store.open(*store_location)


async def test_jobs_are_stored_listed_by_state_and_paged(store: Store) -> None:
    for number in range(5):
        await store.add_job(*_job(f"job{number}", 1000 + number))
    await store.update_job("job3", state=jobs_pb2.JOB_STATE_RUNNING, num_frames=100, segment_length=24)
    job = await store.get_job("job3")
    assert job is not None and job.state == jobs_pb2.JOB_STATE_RUNNING and job.num_frames == 100
    assert job.source.path == "/videos/job3.avi" and list(job.texts) == ["bicycle"]
    assert await store.get_job("nope") is None
    queued = await store.list_jobs([jobs_pb2.JOB_STATE_QUEUED], None, 10)
    assert [j.job_id for j in queued] == ["job0", "job1", "job2", "job4"]
    first = await store.list_jobs([], None, 2)
    rest = await store.list_jobs([], (first[-1].created_ms, first[-1].job_id), 10)
    assert [j.job_id for j in first + rest] == [f"job{n}" for n in range(5)]


async def test_unfinished_jobs_are_counted_per_owner(store: Store) -> None:
    for number, owner in enumerate(("vms", "vms", "vms", "analyst", "")):
        await store.add_job(*_job(f"job{number}", 1000 + number), owner)
    await store.update_job("job0", state=jobs_pb2.JOB_STATE_RUNNING)
    await store.update_job("job1", state=jobs_pb2.JOB_STATE_SUCCEEDED)
    counts = [await store.unfinished_jobs(owner) for owner in ("vms", "analyst", "", "nobody")]
    assert counts == [2, 1, 1, 0]  # queued and running count; finished ones do not


async def test_a_segment_and_its_events_are_stored_together_or_not_at_all(store: Store) -> None:
    await store.add_job(*_job("job", 1))
    stored = await store.add_segment("job", 0, b"segment 0", [_event("e1", job="job")])
    assert [e.cursor for e in stored] == [1] and stored[0].job_id == "job"
    with pytest.raises(DuplicateKey):  # the same segment twice: nothing of the second attempt stays
        await store.add_segment("job", 0, b"again", [_event("e2", job="job")])
    assert [b for _, b in await store.job_segments("job", 0)] == [b"segment 0"]
    assert [e.event_id for e in await store.events_after(0, EventFilter(), 10)] == ["e1"]
    job = await store.get_job("job")
    assert job is not None and job.segments_done == 1
    await store.add_segment("job", 1, b"segment 1", [])
    assert [i for i, _ in await store.job_segments("job", 1)] == [1]


async def test_events_come_in_cursor_order_filtered_and_by_time(store: Store) -> None:
    await store.add_events([_event("a", monitor="m1", created_ms=100), _event("b", monitor="m2", created_ms=200)])
    await store.add_events([_event("c", monitor="m1", text="fall", created_ms=300),
                            _event("a", events_pb2.EVENT_PHASE_CLOSE, monitor="m1", created_ms=400)])
    everything = await store.events_after(0, EventFilter(), 100)
    assert [(e.event_id, e.cursor) for e in everything] == [("a", 1), ("b", 2), ("c", 3), ("a", 4)]
    assert [e.cursor for e in await store.events_after(2, EventFilter(), 100)] == [3, 4]
    assert [e.cursor for e in await store.events_after(0, EventFilter(monitor_id="m1"), 100)] == [1, 3, 4]
    assert [e.cursor for e in await store.events_after(0, EventFilter(monitor_id="m1", text="fall"), 100)] == [3]
    assert [e.cursor for e in await store.list_events(EventFilter(), 200, 400, 0, 100)] == [2, 3]
    assert [e.cursor for e in await store.list_events(EventFilter(), 0, 0, 1, 2)] == [2, 3]
    assert await store.last_cursor() == 4


async def test_concurrent_writers_get_distinct_increasing_cursors(store: Store) -> None:
    batches = await asyncio.gather(*(store.add_events([_event(f"{n}-{i}") for i in range(3)]) for n in range(8)))
    cursors = sorted(e.cursor for batch in batches for e in batch)
    assert cursors == list(range(1, 25))
    for batch in batches:  # one call's events are consecutive
        assert [e.cursor for e in batch] == list(range(batch[0].cursor, batch[0].cursor + 3))


async def test_evidence_is_kept_within_its_budget_and_age_oldest_first(store: Store) -> None:
    for number in range(4):
        await store.add_evidence(f"m1:{number}", "m1", {"key_frame.jpg": b"x" * 100}, number, number + 1)
        await store.database.run(functools.partial(_set_created, f"m1:{number}", 1000 + number))
    await store.add_evidence("m2:0", "m2", {"key_frame.jpg": b"y" * 100}, 0, 1)
    stored = await store.add_events([NewEvent(events_pb2.Event(event_id="e", monitor_id="m1"), 0, "m1:0"),
                                     NewEvent(events_pb2.Event(event_id="f", monitor_id="m1"), 3, "m1:3")])
    assert [e.has_evidence for e in stored] == [True, True]
    assert await store.expire_evidence("m1", 250, 0) == 200  # the two oldest go
    assert await store.evidence_bytes("m1") == 200 and await store.evidence_bytes("m2") == 100
    assert not (store.evidence_dir / "m1" / "m1-0").exists() and (store.evidence_dir / "m1" / "m1-3").exists()
    exists, evidence = await store.event_evidence("e")
    assert exists and evidence is None
    assert [e.has_evidence for e in await store.events_after(0, EventFilter(), 10)] == [False, True]
    exists, evidence = await store.event_evidence("f")
    assert evidence is not None and (evidence.directory / "key_frame.jpg").read_bytes() == b"x" * 100
    assert await store.expire_evidence("m1", 0, 1003) == 100  # older than the cut-off
    assert await store.event_evidence("nope") == (False, None)


async def test_monitors_and_dead_letters_round_trip(store: Store) -> None:
    spec = monitors_pb2.MonitorSpec(name="gate", texts=["bicycle"], source=orchestrator_pb2.VideoSource(
        uri="rtsp://camera/1"))
    await store.save_monitor("m1", spec, False, 5)
    await store.save_monitor("m1", spec, True, 5, "vms")  # saved again: replaced, not doubled
    [stored] = await store.monitors()
    assert (stored.monitor_id, stored.spec, stored.paused, stored.created_ms, stored.owner) == (
        "m1", spec, True, 5, "vms")
    await store.delete_monitor("m1")
    assert await store.monitors() == []
    await store.add_dead_letter(events_pb2.Event(event_id="e"), "webhook http://x", 5, "HTTP 500")
    assert [(t, a, e.event_id) for t, a, _, e in await store.dead_letters()] == [("webhook http://x", 5, "e")]


def test_database_urls_are_shown_without_passwords() -> None:
    assert redact("postgresql://user:secret@db:5432/x") == "postgresql://user:***@db:5432/x"
    assert redact("postgresql://db/x") == "postgresql://db/x"
