"""The deadline of the RPC being served, so that calls it makes to other services end when
its caller stops waiting (not after a fixed per-call timeout)."""

from __future__ import annotations

import contextlib
import contextvars
import time

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def set_deadline(seconds_remaining: float | None) -> contextvars.Token[float | None]:
    """Record the caller's deadline (None: the caller set none)."""
    deadline = None if seconds_remaining is None else time.monotonic() + seconds_remaining
    return _deadline.set(deadline)


def reset_deadline(token: contextvars.Token[float | None]) -> None:
    with contextlib.suppress(ValueError):  # a generator closed from another context has nothing to restore
        _deadline.reset(token)


def remaining(limit: float | None) -> float | None:
    """The timeout for a call made now: `limit`, shortened to what is left of the caller's
    deadline (never below a millisecond, so an expired deadline fails the call at once)."""
    deadline = _deadline.get()
    if deadline is None:
        return limit
    left = max(0.001, deadline - time.monotonic())
    return left if limit is None else min(limit, left)
