"""Waiting for an asyncio.Event with a time limit, without losing a cancellation.

On Python 3.11, `asyncio.wait_for(event.wait(), t)` returns normally when the event is set at
the moment the waiting task is cancelled: the cancellation is swallowed and the task runs on
(a monitor that would not stop when paused, seen in tests). asyncio.wait has no such race."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Whether `event` was set within `timeout` seconds; a cancellation always propagates."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)
