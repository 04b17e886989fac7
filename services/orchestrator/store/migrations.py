"""The schema, as numbered migrations. A database records the versions applied; opening it
applies the missing ones in order, each in its own transaction. Never edit a released
migration: add the next one."""

from __future__ import annotations

import time

from services.orchestrator.store.database import Database, Transaction

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "jobs, monitors, events, evidence, dead letters", [
        """CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY, name TEXT NOT NULL, state INTEGER NOT NULL, error TEXT NOT NULL,
            request {blob} NOT NULL, started {blob}, summary {blob}, segments_done INTEGER NOT NULL,
            num_frames INTEGER NOT NULL, segment_length INTEGER NOT NULL, restarts INTEGER NOT NULL,
            created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)""",
        "CREATE INDEX jobs_by_state ON jobs (state, created_ms)",
        """CREATE TABLE job_segments (
            job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE, segment INTEGER NOT NULL,
            body {blob} NOT NULL, PRIMARY KEY (job_id, segment))""",
        """CREATE TABLE monitors (
            monitor_id TEXT PRIMARY KEY, spec {blob} NOT NULL, paused INTEGER NOT NULL,
            created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)""",
        """CREATE TABLE evidence (
            evidence_id TEXT PRIMARY KEY, owner TEXT NOT NULL, directory TEXT NOT NULL, bytes BIGINT NOT NULL,
            start_seconds DOUBLE PRECISION NOT NULL, end_seconds DOUBLE PRECISION NOT NULL,
            created_ms BIGINT NOT NULL)""",
        "CREATE INDEX evidence_by_owner ON evidence (owner, created_ms)",
        """CREATE TABLE events (
            cursor {serial}, event_id TEXT NOT NULL, phase INTEGER NOT NULL, monitor_id TEXT NOT NULL,
            job_id TEXT NOT NULL, text TEXT NOT NULL, segment INTEGER NOT NULL, evidence_id TEXT NOT NULL,
            created_ms BIGINT NOT NULL, body {blob} NOT NULL)""",
        "CREATE INDEX events_by_monitor ON events (monitor_id, cursor)",
        "CREATE INDEX events_by_job ON events (job_id, segment, cursor)",
        "CREATE INDEX events_by_id ON events (event_id, cursor)",
        "CREATE INDEX events_by_time ON events (created_ms)",
        """CREATE TABLE dead_letters (
            letter_id {serial}, event_id TEXT NOT NULL, target TEXT NOT NULL, attempts INTEGER NOT NULL,
            error TEXT NOT NULL, body {blob} NOT NULL, created_ms BIGINT NOT NULL)""",
    ]),
    (2, "delivery cursors: where each delivery target of a monitor has got to in the event log", [
        "CREATE TABLE delivery_cursors (target_key TEXT PRIMARY KEY, cursor BIGINT NOT NULL)",
    ]),
    (3, "owners: the caller (token or certificate name) that made each job and monitor, for per-caller limits", [
        "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX jobs_by_owner ON jobs (owner, state)",
        "ALTER TABLE monitors ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
    ]),
]


def applied_versions(transaction: Transaction) -> set[int]:
    transaction.execute("CREATE TABLE IF NOT EXISTS schema_versions (version INTEGER PRIMARY KEY, "
                        "description TEXT NOT NULL, applied_ms BIGINT NOT NULL)")
    return {row[0] for row in transaction.all("SELECT version FROM schema_versions")}


def migrate(database: Database) -> list[int]:
    """Apply the missing migrations; the versions applied now."""
    done = database.call(applied_versions)
    newest = max(version for version, _, _ in MIGRATIONS)
    if done and max(done) > newest:
        raise RuntimeError(f"the database at {database.where} has schema version {max(done)}, newer than this "
                           f"orchestrator's {newest}: upgrade the orchestrator")
    applied = []
    for version, description, statements in MIGRATIONS:
        if version in done:
            continue

        def apply(transaction: Transaction, version: int = version, description: str = description,
                  statements: list[str] = statements) -> None:
            transaction.lock("schema_versions")  # two replicas starting at once: one migrates
            if transaction.one("SELECT 1 FROM schema_versions WHERE version = ?", (version,)):
                return
            for statement in statements:
                transaction.execute(statement)
            transaction.execute("INSERT INTO schema_versions VALUES (?, ?, ?)",
                                (version, description, int(time.time() * 1000)))

        database.call(apply)
        applied.append(version)
    return applied
