"""Coalescing of concurrent queries: the items submitted during one turn of
the event loop go to the database as one statement.

Under load many misses arrive together (one read of the sockets wakes many
handlers); a round trip per miss would cost more CPU, in the driver and
the server, than signing itself. One statement with arrays amortises it.

At most ``max_running`` batches are in flight (the pool's size): items
submitted meanwhile wait, together, for the next one. However many misses
arrive, each waits for at most one batch ahead of it, so a database that is
slow to answer (a lock held) makes them all wait one query's time more, not
one query's time per queued batch.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Collects ``submit`` calls made in one loop turn and runs them as batches."""

    def __init__(
        self, run: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_batch: int = 256, max_running: int = 1 << 30
    ) -> None:
        self._run = run
        self._max = max_batch
        self._max_running = max_running
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()
        # The loop of the last submit: asking asyncio for the running loop on
        # every submit costs a getpid() system call each (CPython's check).
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, item: T) -> R:
        """The result for ``item``, from the batch it ends up in."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        assert self._loop is not None
        while self._pending and len(self._running) < self._max_running:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            task = self._loop.create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(functools.partial(self._batch_done, batch))

    def _batch_done(self, batch: list[tuple[T, asyncio.Future[R]]], task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        for _, future in batch:
            if not future.done():  # cancelled before it ran
                future.cancel()
        if self._pending and not self._scheduled:
            # What waited for a free slot goes now, as one batch.
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Cancel the batches in flight and the items waiting for one (their waiters are cancelled too)."""
        pending, self._pending = self._pending, []
        for _, future in pending:
            future.cancel()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
