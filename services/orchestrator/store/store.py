"""The orchestrator's records, as protobuf messages kept in SQL rows: what each RPC reads and
writes, each call one transaction."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyanomaly.v1 import events_pb2, jobs_pb2, monitors_pb2
from services.orchestrator.store.database import Database, Transaction, open_postgres, open_sqlite
from services.orchestrator.store.migrations import migrate

SQLITE_FILE = "anyanomaly.db"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class EventFilter:
    monitor_id: str = ""
    job_id: str = ""
    text: str = ""

    def where(self, params: list[Any]) -> str:
        clauses = []
        for column in ("monitor_id", "job_id", "text"):
            value = getattr(self, column)
            if value:
                clauses.append(f"events.{column} = ?")
                params.append(value)
        return "".join(f" AND {clause}" for clause in clauses)


@dataclass(frozen=True)
class NewEvent:
    event: events_pb2.Event  # without cursor and has_evidence
    segment: int = 0
    evidence_id: str = ""


@dataclass(frozen=True)
class EvidenceRecord:
    evidence_id: str
    directory: Path
    start_seconds: float
    end_seconds: float


@dataclass(frozen=True)
class StoredMonitor:
    monitor_id: str
    spec: monitors_pb2.MonitorSpec  # with its secrets
    paused: bool
    created_ms: int
    updated_ms: int
    owner: str  # the caller that created it ("" where no credentials are asked)


_EVENT_COLUMNS = ("SELECT events.cursor, events.body, evidence.evidence_id IS NOT NULL FROM events "
                  "LEFT JOIN evidence ON evidence.evidence_id = events.evidence_id")


def _event(row: Sequence[Any]) -> events_pb2.Event:
    event = events_pb2.Event.FromString(bytes(row[1]))
    event.cursor, event.has_evidence = int(row[0]), bool(row[2])
    return event


_JOB_COLUMNS = "SELECT job_id, name, state, error, request, segments_done, num_frames, segment_length, " \
               "restarts, created_ms, updated_ms FROM jobs"


def _job(row: Sequence[Any]) -> jobs_pb2.Job:
    request = jobs_pb2.SubmitJobRequest.FromString(bytes(row[4]))
    return jobs_pb2.Job(job_id=row[0], name=row[1], state=row[2], error=row[3], source=request.source,
                        texts=request.texts, segments_done=row[5], num_frames=row[6], segment_length=row[7],
                        restarts=row[8], created_ms=row[9], updated_ms=row[10])


class Store:
    def __init__(self, database: Database, data_dir: Path) -> None:
        self.database = database
        self.data_dir = data_dir
        self.evidence_dir = data_dir / "evidence"

    @classmethod
    def open(cls, data_dir: Path, database_url: str = "") -> Store:
        """The store of `data_dir` (SQLite there unless `database_url` names a PostgreSQL database),
        migrated to this version's schema."""
        database = open_postgres(database_url) if database_url else open_sqlite(data_dir / SQLITE_FILE)
        migrate(database)
        return cls(database, data_dir)

    def close(self) -> None:
        self.database.close()

    # Jobs -------------------------------------------------------------------------------------

    async def add_job(self, job: jobs_pb2.Job, request: jobs_pb2.SubmitJobRequest, owner: str = "") -> None:
        await self.database.run(lambda t: t.execute(
            "INSERT INTO jobs (job_id, name, state, error, request, started, summary, segments_done, num_frames, "
            "segment_length, restarts, created_ms, updated_ms, owner) "
            "VALUES (?, ?, ?, ?, ?, NULL, NULL, 0, 0, 0, 0, ?, ?, ?)",
            (job.job_id, job.name, job.state, "", request.SerializeToString(), job.created_ms, job.updated_ms,
             owner)))

    async def unfinished_jobs(self, owner: str) -> int:
        """How many of `owner`'s jobs are queued or running."""
        row = await self.database.run(lambda t: t.one(
            f"SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN ({jobs_pb2.JOB_STATE_QUEUED}, "
            f"{jobs_pb2.JOB_STATE_RUNNING})", (owner,)))
        return int(row[0]) if row else 0

    async def get_job(self, job_id: str) -> jobs_pb2.Job | None:
        row = await self.database.run(lambda t: t.one(f"{_JOB_COLUMNS} WHERE job_id = ?", (job_id,)))
        return None if row is None else _job(row)

    async def job_request(self, job_id: str) -> jobs_pb2.SubmitJobRequest:
        row = await self.database.run(lambda t: t.one("SELECT request FROM jobs WHERE job_id = ?", (job_id,)))
        assert row is not None
        return jobs_pb2.SubmitJobRequest.FromString(bytes(row[0]))

    async def list_jobs(self, states: Sequence[int], after: tuple[int, str] | None, limit: int
                        ) -> list[jobs_pb2.Job]:
        """Jobs oldest first, after the (created_ms, job_id) key of the previous page."""
        params: list[Any] = list(states)
        where = f"state IN ({', '.join('?' * len(states))})" if states else "1 = 1"
        if after is not None:
            where += " AND (created_ms > ? OR (created_ms = ? AND job_id > ?))"
            params += [after[0], after[0], after[1]]
        rows = await self.database.run(lambda t: t.all(
            f"{_JOB_COLUMNS} WHERE {where} ORDER BY created_ms, job_id LIMIT ?", (*params, limit)))
        return [_job(row) for row in rows]

    async def update_job(self, job_id: str, unfinished_only: bool = False, **fields: Any) -> None:
        """Set columns (state, error, num_frames, segment_length, restarts, started, summary);
        `unfinished_only`: only while the job is queued or running (a cancel never overwrites an end)."""
        assignments = ", ".join(f"{name} = ?" for name in fields)
        condition = f" AND state IN ({jobs_pb2.JOB_STATE_QUEUED}, {jobs_pb2.JOB_STATE_RUNNING})" \
            if unfinished_only else ""
        await self.database.run(lambda t: t.execute(
            f"UPDATE jobs SET {assignments}, updated_ms = ? WHERE job_id = ?{condition}",
            (*fields.values(), now_ms(), job_id)))

    async def finish_job(self, job_id: str, summary: bytes, events: Sequence[NewEvent]) -> None:
        """The closing events and the summary together: a crash between them would store the
        closes twice when the job resumes."""
        def work(t: Transaction) -> None:
            self._insert_events(t, events)
            t.execute("UPDATE jobs SET summary = ?, state = ?, error = '', updated_ms = ? WHERE job_id = ?",
                      (summary, jobs_pb2.JOB_STATE_SUCCEEDED, now_ms(), job_id))
        await self.database.run(work)

    async def job_blobs(self, job_id: str) -> tuple[bytes | None, bytes | None]:
        """The job's stored Started and Summary updates."""
        row = await self.database.run(lambda t: t.one("SELECT started, summary FROM jobs WHERE job_id = ?",
                                                      (job_id,)))
        assert row is not None
        return (None if row[0] is None else bytes(row[0])), (None if row[1] is None else bytes(row[1]))

    async def add_segment(self, job_id: str, segment: int, body: bytes, events: Sequence[NewEvent]
                          ) -> list[events_pb2.Event]:
        """Store a finished segment with the events it caused, atomically (a job resumed after a
        crash finds both or neither); segments are stored in order."""
        def work(t: Transaction) -> list[events_pb2.Event]:
            t.execute("INSERT INTO job_segments VALUES (?, ?, ?)", (job_id, segment, body))
            t.execute("UPDATE jobs SET segments_done = ?, updated_ms = ? WHERE job_id = ?",
                      (segment + 1, now_ms(), job_id))
            return self._insert_events(t, events)
        return await self.database.run(work)

    async def job_segments(self, job_id: str, first: int, limit: int = 1000) -> list[tuple[int, bytes]]:
        rows = await self.database.run(lambda t: t.all(
            "SELECT segment, body FROM job_segments WHERE job_id = ? AND segment >= ? ORDER BY segment LIMIT ?",
            (job_id, first, limit)))
        return [(int(row[0]), bytes(row[1])) for row in rows]

    # Monitors ---------------------------------------------------------------------------------

    async def save_monitor(self, monitor_id: str, spec: monitors_pb2.MonitorSpec, paused: bool,
                           created_ms: int, owner: str = "") -> None:
        def work(t: Transaction) -> None:
            t.execute("DELETE FROM monitors WHERE monitor_id = ?", (monitor_id,))
            t.execute("INSERT INTO monitors (monitor_id, spec, paused, created_ms, updated_ms, owner) "
                      "VALUES (?, ?, ?, ?, ?, ?)",
                      (monitor_id, spec.SerializeToString(), int(paused), created_ms, now_ms(), owner))
        await self.database.run(work)

    async def monitors(self) -> list[StoredMonitor]:
        """Every monitor (spec with secrets), oldest first."""
        rows = await self.database.run(lambda t: t.all(
            "SELECT monitor_id, spec, paused, created_ms, updated_ms, owner FROM monitors "
            "ORDER BY created_ms, monitor_id"))
        return [StoredMonitor(r[0], monitors_pb2.MonitorSpec.FromString(bytes(r[1])), bool(r[2]), r[3], r[4], r[5])
                for r in rows]

    async def delete_monitor(self, monitor_id: str) -> None:
        await self.database.run(lambda t: t.execute("DELETE FROM monitors WHERE monitor_id = ?", (monitor_id,)))

    # Events -----------------------------------------------------------------------------------

    def _insert_events(self, t: Transaction, events: Sequence[NewEvent]) -> list[events_pb2.Event]:
        # One writer at a time, so cursors become visible in order: a watcher that read cursor n
        # never later finds a smaller one committed.
        t.lock("events")
        stored = []
        for new in events:
            event = new.event
            cursor = t.insert(
                "INSERT INTO events (event_id, phase, monitor_id, job_id, text, segment, evidence_id, created_ms, "
                "body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event.event_id, event.phase, event.monitor_id, event.job_id, event.text, new.segment,
                 new.evidence_id, event.created_ms, event.SerializeToString()), "cursor")
            copy = events_pb2.Event()
            copy.CopyFrom(event)
            copy.cursor = cursor
            copy.has_evidence = bool(new.evidence_id) and t.one(
                "SELECT 1 FROM evidence WHERE evidence_id = ?", (new.evidence_id,)) is not None
            stored.append(copy)
        return stored

    async def add_events(self, events: Sequence[NewEvent]) -> list[events_pb2.Event]:
        return await self.database.run(lambda t: self._insert_events(t, events))

    async def events_after(self, cursor: int, where: EventFilter, limit: int) -> list[events_pb2.Event]:
        params: list[Any] = [cursor]
        condition = where.where(params)
        rows = await self.database.run(lambda t: t.all(
            f"{_EVENT_COLUMNS} WHERE events.cursor > ?{condition} ORDER BY events.cursor LIMIT ?", (*params, limit)))
        return [_event(row) for row in rows]

    async def list_events(self, where: EventFilter, since_ms: int, until_ms: int, after_cursor: int, limit: int
                          ) -> list[events_pb2.Event]:
        params: list[Any] = [after_cursor]
        condition = where.where(params)
        if since_ms:
            condition += " AND events.created_ms >= ?"
            params.append(since_ms)
        if until_ms:
            condition += " AND events.created_ms < ?"
            params.append(until_ms)
        rows = await self.database.run(lambda t: t.all(
            f"{_EVENT_COLUMNS} WHERE events.cursor > ?{condition} ORDER BY events.cursor LIMIT ?", (*params, limit)))
        return [_event(row) for row in rows]

    async def job_events(self, job_id: str, first_segment: int) -> list[tuple[int, events_pb2.Event]]:
        rows = await self.database.run(lambda t: t.all(
            "SELECT events.segment, events.cursor, events.body, evidence.evidence_id IS NOT NULL FROM events "
            "LEFT JOIN evidence ON evidence.evidence_id = events.evidence_id "
            "WHERE events.job_id = ? AND events.segment >= ? ORDER BY events.cursor", (job_id, first_segment)))
        return [(int(row[0]), _event(row[1:])) for row in rows]

    async def unclosed_events(self, monitor_id: str) -> list[events_pb2.Event]:
        """The latest phase of each of the monitor's events that never closed (a crash)."""
        def work(t: Transaction) -> list[Any]:
            return t.all(f"{_EVENT_COLUMNS} WHERE events.monitor_id = ? AND events.cursor IN (SELECT MAX(cursor) "
                         "FROM events WHERE monitor_id = ? GROUP BY event_id) AND events.phase != ? "
                         "ORDER BY events.cursor", (monitor_id, monitor_id, events_pb2.EVENT_PHASE_CLOSE))
        return [_event(row) for row in await self.database.run(work)]

    async def last_cursor(self) -> int:
        row = await self.database.run(lambda t: t.one("SELECT MAX(cursor) FROM events"))
        return int(row[0]) if row and row[0] is not None else 0

    async def event_evidence(self, event_id: str) -> tuple[bool, EvidenceRecord | None]:
        """(whether the event exists, the evidence of its latest peak if still kept)."""
        def work(t: Transaction) -> tuple[bool, EvidenceRecord | None]:
            row = t.one("SELECT events.evidence_id, evidence.directory, evidence.start_seconds, evidence.end_seconds "
                        "FROM events LEFT JOIN evidence ON evidence.evidence_id = events.evidence_id "
                        "WHERE events.event_id = ? ORDER BY events.cursor DESC LIMIT 1", (event_id,))
            if row is None:
                return False, None
            if row[1] is None:
                return True, None
            return True, EvidenceRecord(row[0], self.evidence_dir / row[1], float(row[2]), float(row[3]))
        return await self.database.run(work)

    # Evidence ---------------------------------------------------------------------------------

    async def has_evidence(self, evidence_id: str) -> bool:
        row = await self.database.run(lambda t: t.one("SELECT 1 FROM evidence WHERE evidence_id = ?",
                                                      (evidence_id,)))
        return row is not None

    async def add_evidence(self, evidence_id: str, owner: str, images: dict[str, bytes], start_seconds: float,
                           end_seconds: float) -> None:
        """Write an evidence folder (the files first, then the row that makes them visible)."""
        relative = f"{owner}/{evidence_id.replace(':', '-')}"
        directory = self.evidence_dir / relative

        def write() -> None:  # off the event loop: the evidence volume may be slow
            directory.mkdir(parents=True, exist_ok=True)
            for name, data in images.items():
                (directory / name).write_bytes(data)

        await asyncio.to_thread(write)
        size = sum(len(data) for data in images.values())
        await self.database.run(lambda t: t.execute(
            "INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?)",
            (evidence_id, owner, relative, size, start_seconds, end_seconds, now_ms())))

    async def expire_evidence(self, owner: str, budget_bytes: int, older_than_ms: int) -> int:
        """Remove `owner`'s evidence older than `older_than_ms` and, oldest first, whatever
        exceeds `budget_bytes`; the bytes removed."""
        def work(t: Transaction) -> list[tuple[str, str, int]]:
            rows = t.all("SELECT evidence_id, directory, bytes, created_ms FROM evidence WHERE owner = ? "
                         "ORDER BY created_ms DESC, evidence_id DESC", (owner,))
            kept, doomed = 0, []
            for evidence_id, directory, size, created in rows:
                if created < older_than_ms or (budget_bytes and kept + size > budget_bytes):
                    doomed.append((evidence_id, directory, size))
                else:
                    kept += size
            for evidence_id, _, _ in doomed:
                t.execute("DELETE FROM evidence WHERE evidence_id = ?", (evidence_id,))
            return doomed
        doomed = await self.database.run(work)
        # Rows first: a reader never finds a row without its files.
        def remove() -> None:
            for _, directory, _ in doomed:
                shutil.rmtree(self.evidence_dir / directory, ignore_errors=True)

        await asyncio.to_thread(remove)
        return sum(size for _, _, size in doomed)

    async def evidence_owners(self) -> list[str]:
        return [row[0] for row in await self.database.run(lambda t: t.all("SELECT DISTINCT owner FROM evidence"))]

    async def forget_before(self, before_ms: int) -> int:
        """Remove events and dead letters stored before `before_ms`; how many events."""
        def work(t: Transaction) -> int:
            row = t.one("SELECT COUNT(*) FROM events WHERE created_ms < ?", (before_ms,))
            t.execute("DELETE FROM events WHERE created_ms < ?", (before_ms,))
            t.execute("DELETE FROM dead_letters WHERE created_ms < ?", (before_ms,))
            return int(row[0]) if row else 0
        return await self.database.run(work)

    async def evidence_bytes(self, owner: str) -> int:
        row = await self.database.run(lambda t: t.one("SELECT SUM(bytes) FROM evidence WHERE owner = ?", (owner,)))
        return int(row[0]) if row and row[0] is not None else 0

    # Delivery -------------------------------------------------------------------------------

    async def delivery_cursor(self, target_key: str, start: int) -> int:
        """The last cursor delivered to `target_key`; a new target starts at `start`."""
        def work(t: Transaction) -> int:
            row = t.one("SELECT cursor FROM delivery_cursors WHERE target_key = ?", (target_key,))
            if row is not None:
                return int(row[0])
            t.execute("INSERT INTO delivery_cursors VALUES (?, ?)", (target_key, start))
            return start
        return await self.database.run(work)

    async def set_delivery_cursor(self, target_key: str, cursor: int) -> None:
        await self.database.run(lambda t: t.execute(
            "UPDATE delivery_cursors SET cursor = ? WHERE target_key = ?", (cursor, target_key)))

    # Dead letters -----------------------------------------------------------------------------

    async def add_dead_letter(self, event: events_pb2.Event, target: str, attempts: int, error: str) -> None:
        await self.database.run(lambda t: t.execute(
            "INSERT INTO dead_letters (event_id, target, attempts, error, body, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
            (event.event_id, target, attempts, error, event.SerializeToString(), now_ms())))

    async def dead_letters(self) -> list[tuple[str, int, str, events_pb2.Event]]:
        rows = await self.database.run(lambda t: t.all(
            "SELECT target, attempts, error, body FROM dead_letters ORDER BY letter_id"))
        return [(r[0], int(r[1]), r[2], events_pb2.Event.FromString(bytes(r[3]))) for r in rows]
