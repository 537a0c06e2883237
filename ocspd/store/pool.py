"""A small bounded pool of psycopg 3 connections, opened on demand.

Why not psycopg_pool: while the database is down its pool keeps reconnecting
in the background and a caller waits out its whole timeout for a connection
that will not come; here a refused connection fails the caller at once (the
request answers tryLater in milliseconds) and nothing runs in the background.
What a request-path pool needs is little: at most ``size`` connections (so
ocspd never holds more than its share of ``max_connections``), reused most
recently used first, and never a connection handed out in an unknown state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
from psycopg.pq import TransactionStatus


class Pool:
    """At most ``size`` connections to ``conninfo``; ``connection()`` lends one."""

    def __init__(self, conninfo: str, *, size: int) -> None:
        self.conninfo = conninfo
        self.size = size
        self._idle: list[psycopg.AsyncConnection[tuple[object, ...]]] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    @property
    def idle(self) -> int:
        """Connections open and not lent out."""
        return len(self._idle)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
        """A connection in autocommit mode, idle (no transaction open), for the block.

        Waits for a free slot as long as the caller lets it (wrap the call in
        a timeout). Driver errors pass through: translating them is the
        store's job. A connection that comes back mid-transaction, mid-query
        or broken is closed, not pooled: the server rolls back what it held.
        A connection that broke drops the idle ones too: after a server
        restart they are all dead, and the caller's retry should not meet one.
        """
        if self._closed:
            raise psycopg.OperationalError("the connection pool is closed")
        async with self._slots:
            conn = self._take()
            if conn is None:
                # No server-side prepared statements: PgBouncer in transaction mode
                # (Debian 12's 1.18) would hand the next query another backend.
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, prepare_threshold=None)
            try:
                yield conn
            finally:
                await self._give_back(conn)

    def _take(self) -> psycopg.AsyncConnection[tuple[object, ...]] | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not conn.broken:
                return conn
        return None

    async def _give_back(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        if not self._closed and not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            self._idle.append(conn)
            return
        if conn.broken:
            self._drop_idle()
        await _close(conn)

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.pgconn.finish()

    async def close(self) -> None:
        """Close the idle connections; those lent out are closed when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close(conn)


async def _close(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    # Closing sends a Terminate message and frees libpq's side: no round trip to wait for.
    with contextlib.suppress(psycopg.Error, OSError):
        await conn.close()
