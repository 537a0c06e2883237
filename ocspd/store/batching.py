"""Coalescing of concurrent queries: the items submitted during one turn of
the event loop go to the database as one statement.

Under load many misses arrive together (one read of the sockets wakes many
handlers); a round trip per miss would cost more CPU, in psycopg2, aiopg and
the server, than signing itself. One statement with arrays amortises it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Collects ``submit`` calls made in one loop turn and runs them as batches."""

    def __init__(self, run: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_batch: int = 256) -> None:
        self._run = run
        self._max = max_batch
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
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max):
            assert self._loop is not None
            task = self._loop.create_task(self._run_batch(pending[start : start + self._max]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

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
        """Cancel the batches in flight (their waiters are cancelled too)."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
