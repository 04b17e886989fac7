"""A micro-batching queue: concurrent requests share model forward passes.

Each request submits a list of rows (e.g. preprocessed images). One worker takes
rows from the front of the queue, waits at most `max_wait_s` for a batch to fill
up to `max_batch_size` rows, runs the batch in a worker thread and hands each
request its outputs. A request larger than a batch is split across batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.common.errors import Overloaded
from services.common.waiting import wait_event

In = TypeVar("In")
Out = TypeVar("Out")

log = logging.getLogger("anyanomaly.batching")


@dataclass
class _Pending(Generic[In, Out]):
    rows: Sequence[In]
    future: asyncio.Future[list[Out]]
    outputs: list[Out] = field(default_factory=list)
    taken: int = 0  # rows already handed to a batch

    @property
    def untaken(self) -> int:
        return len(self.rows) - self.taken


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    requests_per_batch: list[int] = field(default_factory=list)  # most recent last, bounded


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[list[In]], list[Out]],
        max_batch_size: int,
        max_wait_s: float,
        executor: concurrent.futures.Executor,
        max_queued_rows: int = 0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._run_batch = run_batch
        self._max_batch = max_batch_size
        self._max_wait = max_wait_s
        self._executor = executor
        self._max_queued = max_queued_rows
        self._queue: deque[_Pending[In, Out]] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    def queued_rows(self) -> int:
        return sum(p.untaken for p in self._queue)

    async def submit(self, rows: Sequence[In]) -> list[Out]:
        if not rows:
            return []
        if self._max_queued and self.queued_rows() + len(rows) > self._max_queued:
            raise Overloaded(
                f"the model queue is full ({self.queued_rows()} rows waiting, limit {self._max_queued}); retry later"
            )
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        future: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(rows, future))
        self._arrived.set()
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.cancel()
        self._queue.clear()

    async def _wait_for_more(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while self.queued_rows() < self._max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            if not await wait_event(self._arrived, remaining):
                return

    def _take_batch(self) -> list[tuple[_Pending[In, Out], int, int]]:
        """(request, first row, end row) slices making up the next batch."""
        parts: list[tuple[_Pending[In, Out], int, int]] = []
        room = self._max_batch
        for pending in self._queue:
            if room == 0:
                break
            if pending.future.done() or pending.untaken == 0:
                continue
            count = min(room, pending.untaken)
            parts.append((pending, pending.taken, pending.taken + count))
            pending.taken += count
            room -= count
        return parts

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._queue = deque(p for p in self._queue if not p.future.done())
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_more()
            parts = self._take_batch()
            rows = [row for pending, start, end in parts for row in pending.rows[start:end]]
            if not rows:
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_batch, rows)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for pending, _, _ in parts:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
            else:
                self._record(len(rows), len(parts))
                position = 0
                for pending, start, end in parts:
                    pending.outputs.extend(outputs[position : position + end - start])
                    position += end - start
                    if len(pending.outputs) == len(pending.rows) and not pending.future.done():
                        pending.future.set_result(pending.outputs)
            self._queue = deque(p for p in self._queue if not p.future.done())

    def _record(self, rows: int, requests: int) -> None:
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.largest_batch = max(self.stats.largest_batch, rows)
        self.stats.requests_per_batch = [*self.stats.requests_per_batch[-99:], requests]
