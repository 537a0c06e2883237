"""LISTEN for status changes on a dedicated connection, forever.

Every replica keeps one connection (``listen_dsn``: a direct connection to
the primary, since NOTIFY neither passes PgBouncer transaction pooling nor
reaches hot standbys) LISTENing on the versioned channel. While it is down
the replica cannot learn of revocations, so the owner is told at once
(``on_loss``) and again when it is back (``on_connect``); the loop
reconnects by itself with jittered exponential backoff.

With a ``fence`` (reads from a standby, fence.py), the listener also raises
it: before a batch of notifications is delivered the fence is pending
(reads go to the primary), and once delivered it reads the primary's WAL
position on this same connection and raises the fence to it; likewise on
every (re)connect, before and after ``on_connect``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import psycopg

from ocspd.exceptions import OcspdError
from ocspd.logs import event
from ocspd.store.connector import through_pooler
from ocspd.store.fence import Fence
from ocspd.store.queries import queries
from ocspd.store.values import primary_dsn

log = logging.getLogger("ocspd.listener")

CHANNEL = "ocspd_status_v1"


class ListenerMisconfigured(OcspdError):
    """``listen_dsn`` cannot carry notifications (it reaches a pooler)."""


class Listener:
    """Delivers NOTIFY payloads of ``CHANNEL`` to ``on_notify``; reconnects forever."""

    def __init__(
        self,
        dsn: str,
        *,
        on_notify: Callable[[str], object],
        on_connect: Callable[[], None],
        on_loss: Callable[[], None],
        heartbeat: float = 5.0,
        backoff_min: float = 0.1,
        backoff_max: float = 10.0,
        timeout: float = 5.0,
        fence: Fence | None = None,
    ) -> None:
        # A typo is a start-up error, not a reconnect loop; never a hot standby (no NOTIFY there).
        self._dsn = primary_dsn(dsn, "[database] listen_dsn")
        self.dsn = dsn
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._on_loss = on_loss
        self._heartbeat = heartbeat
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._timeout = timeout
        self._fence = fence
        self.connected = False
        self.reconnects = 0  # successful connections after the first
        self.backend_pid: int | None = None
        self.ever_connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled."""
        delay = self._backoff_min
        while True:
            was_up = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (TimeoutError, psycopg.Error, OSError, ListenerMisconfigured) as exc:
                event(log, "listener_down", logging.WARNING, error=" ".join(str(exc).split()))
            finally:
                was_up = self.connected
                self._lost()
            if was_up:
                delay = self._backoff_min
            # Full jitter: replicas that lost the primary together do not
            # reconnect in lockstep.
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, self._backoff_max)

    async def _session(self) -> None:
        async with asyncio.timeout(self._timeout):
            conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        async with conn:
            async with asyncio.timeout(self._timeout):
                if await through_pooler(conn):
                    # A pooled server connection goes back to the pool after LISTEN: its
                    # notifications would reach nobody, or another client.
                    raise ListenerMisconfigured(
                        "[database] listen_dsn reaches a pooler such as PgBouncer: LISTEN needs a direct "
                        "connection to the primary"
                    )
                await conn.execute(f"LISTEN {CHANNEL}")
            self.backend_pid = conn.info.backend_pid
            # LISTEN is in force before the owner flushes: a change after this
            # point is notified, one before it is covered by the flush.
            if self.ever_connected.is_set():
                self.reconnects += 1
            self.connected = True
            if self._fence is not None:
                # Changes made while we were away were not notified: none of
                # them may be read from a standby that has not replayed them.
                self._fence.hold()
            self._on_connect()
            if self._fence is not None:
                await self._raise_fence(conn, self._fence)
            self.ever_connected.set()
            event(log, "listener_up", channel=CHANNEL, backend_pid=self.backend_pid)
            loop = asyncio.get_running_loop()
            while True:
                if self._fence is None:
                    async for notify in conn.notifies(timeout=self._heartbeat):
                        self._on_notify(notify.payload)
                else:
                    await self._fenced_notifies(conn, self._fence, loop.time() + self._heartbeat)
                # A quiet heartbeat's time: prove the connection is alive, since
                # a half-open TCP connection would otherwise wait forever.
                async with asyncio.timeout(self._timeout):
                    await conn.execute("SELECT 1")

    async def _fenced_notifies(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], fence: Fence, until: float
    ) -> None:
        """Deliver notifications until the loop's clock reaches ``until``, a batch (those
        that came in one packet) at a time, each behind the fence."""
        loop = asyncio.get_running_loop()
        while (remaining := until - loop.time()) > 0:
            batch = [notify.payload async for notify in conn.notifies(timeout=remaining, stop_after=1)]
            if not batch:
                return
            # Pending before the keys are dropped: a miss that follows reads the
            # primary until the position after these commits is known.
            fence.hold()
            for payload in batch:
                self._on_notify(payload)
            await self._raise_fence(conn, fence)

    async def _raise_fence(self, conn: psycopg.AsyncConnection[tuple[object, ...]], fence: Fence) -> None:
        # Read on this connection, after the notifications were received: every
        # commit they announce ends at or before this position. If the query
        # fails, the fence stays pending until the next connection raises it.
        async with asyncio.timeout(self._timeout):
            cur = await conn.execute(queries()["current_wal_lsn"])
            row = await cur.fetchone()
        if row is not None and isinstance(row[0], int):
            fence.raise_to(row[0])

    def _lost(self) -> None:
        if self._fence is not None:
            # Changes committed while the channel is down are not notified: until it
            # is back and the position read again, no standby read can be proven fresh.
            self._fence.hold()
        if self.connected:
            self.connected = False
            self.backend_pid = None
            self._on_loss()
