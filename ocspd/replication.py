"""Multi-replica plumbing of one app: the database pool, the LISTEN loop that
feeds invalidations to the engine, and the shared refresh of stored
responses. Started and stopped by the app's cleanup_ctx.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from ocspd.cache import Entry
from ocspd.engine import Engine
from ocspd.exceptions import SourceUnavailable, StoreError
from ocspd.logs import bug, event
from ocspd.store import DueRow, Listener, Store

log = logging.getLogger("ocspd.replication")

STORE = web.AppKey("store", Store)
LISTENER = web.AppKey("listener", Listener)


@dataclass(frozen=True, slots=True)
class RefreshSettings:
    """How the shared refresh runs: how often, how far ahead, how many rows a round."""

    interval: float
    lead: dt.timedelta
    batch: int = 200

    @classmethod
    def for_validity(cls, validity: dt.timedelta) -> RefreshSettings:
        # Rows are re-signed a while before their refresh point (half the
        # validity); with short validities everything scales down.
        lead = min(validity / 4, dt.timedelta(minutes=10))
        return cls(interval=min(30.0, lead.total_seconds() / 2), lead=lead)


def database_context(
    store: Store,
    engine: Engine,
    listen_dsn: str,
    refresh: RefreshSettings,
    *,
    heartbeat: float = 5.0,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """A cleanup_ctx that opens the pool and runs the listener and the refresher."""

    @contextlib.asynccontextmanager
    async def context(app: web.Application) -> AsyncIterator[None]:
        await store.open()

        def connected() -> None:
            if listener.ever_connected.is_set():
                engine.metrics.listener_reconnects.inc()
            engine.channel_restored()

        listener = Listener(
            listen_dsn,
            on_notify=engine.on_notify,
            on_connect=connected,
            on_loss=engine.channel_lost,
            heartbeat=heartbeat,
        )
        app[STORE] = store
        app[LISTENER] = listener
        notified = sorted(i.config.id for i in engine.issuers.values() if i.needs_channel)
        tasks = [
            asyncio.create_task(listener.run(), name="ocspd-listener"),
            asyncio.create_task(refresh_loop(store, engine, notified, refresh), name="ocspd-refresh"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()

    return context


async def refresh_loop(store: Store, engine: Engine, issuers: list[str], settings: RefreshSettings) -> None:
    """Re-sign stored responses before their refresh point, sharing the rows between replicas."""

    def sign(row: DueRow) -> Entry:
        return engine.sign_stored(row.issuer_id, row.serial, row.hash_alg, row.status)

    while True:
        done = 0
        try:
            signers = {issuer_id: engine.issuers[issuer_id].signer.fingerprint for issuer_id in issuers}
            done = await store.refresh_due(signers, sign, lead=settings.lead, limit=settings.batch)
        except SourceUnavailable as exc:
            event(log, "refresh_skipped", logging.DEBUG, reason=str(exc))
        except StoreError as exc:
            event(log, "refresh_failed", logging.ERROR, error=str(exc))
        except Exception:  # a bug (in signing, say): said, and the next round tries again
            bug(log, "refresh_crashed")
        if done:
            event(log, "refreshed", responses=done)
        if done < settings.batch:
            # Jittered, so that replicas started together drift apart.
            await asyncio.sleep(settings.interval * random.uniform(0.5, 1.5))
