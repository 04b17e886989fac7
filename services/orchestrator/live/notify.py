"""A wake-up for everyone waiting on new records: writers in this process notify at once; records
other replicas write (a shared PostgreSQL) are found by the waiters' periodic look.

A waiter takes a `mark()` before it reads the store and waits on that mark afterwards, so a
change stored between its read and its wait still wakes it."""

from __future__ import annotations

import asyncio

from services.common.waiting import wait_event


class Changes:
    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self.closed = False  # the orchestrator is stopping: watchers end their streams
        self._event = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self.notify()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def mark(self) -> asyncio.Event:
        return self._event

    async def wait(self, mark: asyncio.Event) -> None:
        """Until a change after `mark` in this process, or the poll interval."""
        await wait_event(mark, self.poll_seconds)
