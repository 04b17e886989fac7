"""Which orchestrator runs the jobs and monitors of a store: exactly one at a time.

Two orchestrators on one database would both resume every job and run every monitor. The
first to start holds the store; others wait (active/passive) and take over when it goes. The
hold ends when its process does, even by SIGKILL: a `flock` on a file in the data dir for
SQLite, a PostgreSQL advisory lock on a connection of its own otherwise."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any

LOCK_FILE = "orchestrator.lock"
ADVISORY_KEY = 0x616E79616E6F6D  # "anyanom"


class Holder:
    def __init__(self, data_dir: Path, database_url: str = "") -> None:
        self._data_dir = data_dir
        self._url = database_url
        self._held: Any = None

    @property
    def held(self) -> bool:
        return self._held is not None

    def try_hold(self) -> bool:
        """Take the store if no other orchestrator holds it (blocking; call from a thread)."""
        if self._held is not None:
            return True
        if self._url:
            import psycopg

            connection = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
            row = connection.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()
            if row and row[0]:
                self._held = connection
            else:
                connection.close()
        else:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self._data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
            else:
                self._held = descriptor
        return self._held is not None

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        if isinstance(held, int):
            os.close(held)  # the flock goes with the descriptor
        else:
            with contextlib.suppress(Exception):
                held.close()
