"""The micro-batching queue merges concurrent requests (deterministically, via a gate)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

from services.common.batching import MicroBatcher
from services.common.errors import Overloaded


class GatedDoubler:
    """Doubles each row; the first batch blocks until released, so later requests queue up."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[int]] = []

    def __call__(self, rows: list[int]) -> list[int]:
        self.batches.append(list(rows))
        self.entered.set()
        self.release.wait(timeout=10)
        return [2 * r for r in rows]


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


async def test_requests_queued_behind_a_running_batch_share_the_next_batch(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    model = GatedDoubler()
    batcher: MicroBatcher[int, int] = MicroBatcher(model, max_batch_size=8, max_wait_s=0.0, executor=executor)
    first = asyncio.create_task(batcher.submit([1]))
    await asyncio.to_thread(model.entered.wait, 10)
    second = asyncio.create_task(batcher.submit([2, 3]))
    third = asyncio.create_task(batcher.submit([4]))
    await asyncio.sleep(0)  # let both submissions enqueue (no timing involved)
    model.release.set()
    assert await first == [2]
    assert await second == [4, 6]
    assert await third == [8]
    assert model.batches == [[1], [2, 3, 4]]
    assert batcher.stats.requests_per_batch == [1, 2]
    await batcher.close()


async def test_large_requests_are_split_into_batches(executor: concurrent.futures.ThreadPoolExecutor) -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(
        lambda rows: [r + 1 for r in rows], max_batch_size=4, max_wait_s=0.0, executor=executor
    )
    assert await batcher.submit(list(range(10))) == list(range(1, 11))
    assert batcher.stats.batches == 3 and batcher.stats.largest_batch == 4
    await batcher.close()


async def test_a_failing_batch_fails_its_requests_and_the_next_one_still_runs(
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    def run(rows: list[int]) -> list[int]:
        if -1 in rows:
            raise RuntimeError("boom")
        return rows

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=4, max_wait_s=0.0, executor=executor)
    with pytest.raises(RuntimeError, match="boom"):
        await batcher.submit([-1])
    assert await batcher.submit([5]) == [5]
    await batcher.close()


async def test_a_full_queue_is_refused_with_overloaded(executor: concurrent.futures.ThreadPoolExecutor) -> None:
    model = GatedDoubler()
    batcher: MicroBatcher[int, int] = MicroBatcher(
        model, max_batch_size=2, max_wait_s=0.0, executor=executor, max_queued_rows=3
    )
    first = asyncio.create_task(batcher.submit([1, 2]))
    await asyncio.to_thread(model.entered.wait, 10)
    waiting = asyncio.create_task(batcher.submit([3, 4, 5]))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="queue is full"):
        await batcher.submit([6])
    model.release.set()
    assert await first == [2, 4]
    assert await waiting == [6, 8, 10]
    await batcher.close()
