"""LISTEN for status changes on a dedicated connection, forever.

Every replica keeps one connection (``listen_dsn``: a direct connection to
the primary, since NOTIFY neither passes PgBouncer transaction pooling nor
reaches hot standbys) LISTENing on the versioned channel. While it is down
the replica cannot learn of revocations, so the owner is told at once
(``on_loss``) and again when it is back (``on_connect``); the loop
reconnects by itself with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import psycopg

from ocspd.logs import event
from ocspd.store.values import checked_dsn

log = logging.getLogger("ocspd.listener")

CHANNEL = "ocspd_status_v1"


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
    ) -> None:
        checked_dsn(dsn, "[database] listen_dsn")  # a typo is a start-up error, not a reconnect loop
        self.dsn = dsn
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._on_loss = on_loss
        self._heartbeat = heartbeat
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._timeout = timeout
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
            except (TimeoutError, psycopg.Error, OSError) as exc:
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
            conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        async with conn:
            async with asyncio.timeout(self._timeout):
                await conn.execute(f"LISTEN {CHANNEL}")
            self.backend_pid = conn.info.backend_pid
            # LISTEN is in force before the owner flushes: a change after this
            # point is notified, one before it is covered by the flush.
            if self.ever_connected.is_set():
                self.reconnects += 1
            self.connected = True
            self._on_connect()
            self.ever_connected.set()
            event(log, "listener_up", channel=CHANNEL, backend_pid=self.backend_pid)
            while True:
                async for notify in conn.notifies(timeout=self._heartbeat):
                    self._on_notify(notify.payload)
                # A quiet heartbeat's time: prove the connection is alive, since
                # a half-open TCP connection would otherwise wait forever.
                async with asyncio.timeout(self._timeout):
                    await conn.execute("SELECT 1")

    def _lost(self) -> None:
        if self.connected:
            self.connected = False
            self.backend_pid = None
            self._on_loss()
