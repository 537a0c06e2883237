"""Coalescing of concurrent queries (ocspd/store/batching.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ocspd.store.batching import Batcher


class SlowQuery:
    """A stand-in query function that records each batch and answers when released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.release = asyncio.Event()

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return [i * 10 for i in items]


async def test_items_of_one_loop_turn_go_as_one_batch() -> None:
    query = SlowQuery()
    batcher: Batcher[int, int] = Batcher(query)
    query.release.set()
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert query.batches == [[0, 1, 2, 3, 4]]


async def test_items_arriving_while_every_slot_is_busy_wait_together_for_the_next_batch() -> None:
    query = SlowQuery()
    batcher: Batcher[int, int] = Batcher(query, max_running=2)
    waiters = []
    for i in range(12):  # one item per loop turn, as misses from many connections arrive
        waiters.append(asyncio.ensure_future(batcher.submit(i)))
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert query.most_running == 2 and len(query.batches) == 2
    query.release.set()
    assert await asyncio.gather(*waiters) == [i * 10 for i in range(12)]
    # Two batches ran first; everything that queued behind them went as one more, not one each.
    assert len(query.batches) == 3 and sorted(i for batch in query.batches for i in batch) == list(range(12))
    assert query.most_running == 2


async def test_close_cancels_what_waits_for_a_slot() -> None:
    query = SlowQuery()
    batcher: Batcher[int, int] = Batcher(query, max_running=1)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    await batcher.close()
    await asyncio.gather(first, second, return_exceptions=True)
    assert first.cancelled() and second.cancelled()
