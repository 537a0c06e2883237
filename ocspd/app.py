"""The composition root: builds an OCSP app for a configuration, reloads it,
and runs its resources and background loops in its ``cleanup_ctx``.

What the app holds is under typed ``web.AppKey``s: the responder (the responder
core), the metrics, the index files, the handlers (``ocspd/web/``), and, with
a database, the store and its LISTEN connection. The loops: index watchers
(SPEC: a changed index.txt is read within about a second), the gauges, and,
with a database, the listener feeding invalidations to the responder and the
refresh of stored responses that replicas share.

Imported by the daemon side (``ocspd/server.py``, ``ocspd/workers.py``), the
tests and bench/ only; ``ocspd/web/`` never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ocspd import crlshared, crlsource
from ocspd.cache import Entry
from ocspd.config import Config, IssuerConfig
from ocspd.crlfetch import CrlFetcher, FetchLimits
from ocspd.crlsource import CrlState
from ocspd.exceptions import ConfigError, KeyUnavailable, SourceUnavailable, StoreError
from ocspd.health import Readiness, readiness
from ocspd.hsm import Token
from ocspd.index import IndexFile
from ocspd.keys import load_signers, tokens_for
from ocspd.logs import Throttle, bug, event
from ocspd.metrics import Metrics
from ocspd.responder import Issuer, Responder
from ocspd.signer import Signer
from ocspd.sources import CrlSource, IndexSource, StatusSource
from ocspd.store import DueRow, Listener, Store
from ocspd.tokens import Tokens
from ocspd.web.handlers import OcspHandlers
from ocspd.web.runner import OcspRunner

log = logging.getLogger("ocspd.http")
replication_log = logging.getLogger("ocspd.replication")

RESPONDER = web.AppKey("responder", Responder)
METRICS = web.AppKey("metrics", Metrics)
INDEX_FILES = web.AppKey("index_files", dict[str, IndexFile])
CRLS = web.AppKey("crls", dict[str, CrlState])
HANDLERS = web.AppKey("handlers", OcspHandlers)
STORE = web.AppKey("store", Store)
LISTENER = web.AppKey("listener", Listener)
TOKENS = web.AppKey("tokens", Tokens)

# How often index.txt files are checked for changes (SPEC: "about a second").
INDEX_POLL_SECONDS = 0.5
# How often the memory-tier gauges are brought up to date (and expired entries swept).
GAUGE_SECONDS = 1.0


def init_app(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    signers: Mapping[str, Signer] | None = None,
    index_poll: float = INDEX_POLL_SECONDS,
    refresh: RefreshSettings | None = None,
    heartbeat: float = 5.0,
    metrics: Metrics | None = None,
    tokens: Tokens | None = None,
) -> web.Application:
    """Build the OCSP application for ``config``.

    Keys are loaded here (a bad key is a ConfigError before anything
    listens); index files are loaded and watched, and the database pool and
    listener run, in the app's cleanup_ctx. ``signers`` lets tests wrap the
    real signers (e.g. to count signatures), and ``tokens`` the PKCS#11 tokens
    their keys are in (the app closes them).
    """
    tokens = tokens if tokens is not None else tokens_for(config)
    if signers is None:
        try:
            signers = load_signers(config, tokens)
        except BaseException:
            tokens.close()
            raise
    metrics = metrics if metrics is not None else Metrics()
    index_files = {issuer.id: IndexFile(issuer.index) for issuer in config.issuers if issuer.index is not None}
    sources: dict[str, StatusSource] = {}
    index_source = IndexSource(index_files)
    sources.update((issuer_id, index_source) for issuer_id in index_files)
    # CRLs kept in memory: paired with an index.txt, or unlisted-means-good without a database.
    crls = {
        issuer.id: crlsource.state_for(issuer, signers[issuer.id].ca_cert)
        for issuer in config.issuers
        if issuer.crl and (issuer.index is not None or config.database is None)
    }
    if crls:
        crl_source = CrlSource(crls, index_source)
        sources.update((issuer_id, crl_source) for issuer_id in crls)
    store: Store | None = None
    notified = frozenset(issuer.id for issuer in config.issuers if issuer.id not in sources)
    if notified:
        if config.database is None:  # config validation makes this unreachable
            raise ConfigError("issuers without `index` need a [database]", key="issuers", file=config.source)
        database = config.database
        store = Store(
            database.dsn,
            maxsize=database.pool_size,
            timeout=database.timeout.total_seconds(),
            lock_timeout=database.lock_timeout.total_seconds(),
            statement_timeout=database.statement_timeout.total_seconds(),
            read_dsn=database.read_dsn,
            read_max_lag=database.read_max_lag.total_seconds(),
        )
        sources.update((issuer_id, store) for issuer_id in notified)
    # CRLs merged into the database by one replica a round (crlshared.py).
    crls.update(
        (issuer.id, crlsource.state_for(issuer, signers[issuer.id].ca_cert))
        for issuer in config.issuers
        if issuer.crl and issuer.id in notified
    )
    responder = Responder(config, signers, sources, clock, notified=notified, metrics=metrics, crls=crls)

    app = web.Application(client_max_size=config.server.max_request_bytes)
    app[RESPONDER] = responder
    app[METRICS] = metrics
    app[INDEX_FILES] = index_files
    app[CRLS] = crls
    app[TOKENS] = tokens
    app.cleanup_ctx.append(_tokens)
    app.cleanup_ctx.append(_index_watchers(index_poll))
    app.cleanup_ctx.append(_gauges)
    if store is not None:
        assert config.database is not None
        app.cleanup_ctx.append(
            database_context(
                store,
                responder,
                config.database.listen_dsn,
                refresh or RefreshSettings.for_validity(config.responses.validity),
                heartbeat=heartbeat,
            )
        )
    app.cleanup_ctx.append(_crl_pollers)  # after the database's: a shared CRL round needs the pool
    handlers = OcspHandlers(responder, metrics, config, clock)
    app[HANDLERS] = handlers
    # ocspd serves these through web.runner.OcspRunner (runner_for), which calls the
    # same handlers without the router; the routes keep the app servable by AppRunner.
    app.router.add_post(handlers.prefix, handlers.post)
    app.router.add_get(handlers.prefix + "{tail:.*}", handlers.get)
    if handlers.bare_prefix:
        app.router.add_post(handlers.bare_prefix, handlers.post)
        app.router.add_get(handlers.bare_prefix, handlers.get)
    return app


def reload_app(app: web.Application, config: Config) -> list[str]:
    """Apply a new configuration and keys to a running app (SIGHUP).

    Raises ConfigError, naming what is wrong, when the new config is invalid or
    changes something that needs a restart; the running config is then kept.
    Returns the issuers whose answers changed (their memory entries are gone).
    """
    old = app[RESPONDER].config  # the app itself is frozen once started: the responder holds what is live
    restart_only = {
        "server": old.server != config.server,
        "admin": old.admin != config.admin,
        "database": old.database != config.database,
        "cache": old.cache != config.cache,
        "log": old.log != config.log,
        "crl": old.crl != config.crl,
        "issuers (ids, index files or CRL settings)": [_sources_of(i) for i in old.issuers]
        != [_sources_of(i) for i in config.issuers],
    }
    needs_restart = [name for name, differs in restart_only.items() if differs]
    if needs_restart:
        raise ConfigError(f"changes to {', '.join(needs_restart)} need a restart", file=config.source)
    tokens, responder = app[TOKENS], app[RESPONDER]
    try:
        signers = load_signers(config, tokens)
    except BaseException:
        _release_tokens(tokens, responder.issuers.values())  # what the failed attempt opened
        raise
    changed = responder.reload(config, signers)
    app[HANDLERS].forget_requests()  # what a raw request means may have changed with the config
    _release_tokens(tokens, responder.issuers.values())
    return changed


def _release_tokens(tokens: Tokens, issuers: Iterable[Issuer]) -> None:
    """Close the tokens no signer in use needs, in a thread, after their signatures in flight."""
    unused = tokens.retain(k for k in (i.signer.token_key for i in issuers) if k is not None)
    for token in unused:
        threading.Thread(target=token.close, args=(False,), name="ocspd-hsm-close", daemon=True).start()


def _sources_of(issuer: IssuerConfig) -> tuple[object, ...]:
    """What an issuer's status sources are built from (at start-up only)."""
    return (issuer.id, issuer.index, issuer.crl, issuer.delta_crl, issuer.crl_signer, issuer.crl_unlisted)


def runner_for(app: web.Application, **kwargs: Any) -> OcspRunner:
    """The runner ``ocspd serve`` serves ``app`` with (``web.AppRunner``'s ``kwargs``).

    The connection limits are read here, as the listeners are (a reload does not
    change them); ``kwargs`` win over them (tests).
    """
    server = app[RESPONDER].config.server
    limits = {"max_connections": server.max_connections, "header_timeout": server.header_timeout.total_seconds()}
    return OcspRunner(app, app[HANDLERS], app[METRICS], **{**limits, **kwargs})


def _index_watchers(
    interval: float,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def watchers(app: web.Application) -> AsyncIterator[None]:
        responder = app[RESPONDER]
        loop = asyncio.get_running_loop()
        tasks = []
        for issuer_id, index in app[INDEX_FILES].items():
            # A large file takes seconds to parse: keep the loop free meanwhile.
            await loop.run_in_executor(None, index.load)
            event(log, "index_ready", issuer=issuer_id, path=index.path, certificates=len(index))

            def on_change(serials: set[int], issuer_id: str = issuer_id) -> None:
                dropped = responder.invalidate(issuer_id, serials, "index_reload")
                event(log, "index_reloaded", issuer=issuer_id, changed=len(serials), invalidated=dropped)

            on_bug = app[METRICS].background_errors.labels("index_watch").inc
            tasks.append(asyncio.create_task(index.watch(on_change, interval=interval, on_bug=on_bug)))
        try:
            yield
        finally:
            await _cancel(tasks)

    return watchers


async def _crl_pollers(app: web.Application) -> AsyncIterator[None]:
    """Keep each issuer's CRLs current (crlsource.poll); a changed serial is dropped from memory."""
    responder, metrics, config = app[RESPONDER], app[METRICS], app[RESPONDER].config.crl
    limits = FetchLimits(config.timeout.total_seconds(), config.max_bytes, config.max_redirects)
    fetcher = CrlFetcher(limits)

    def count(issuer_id: str, kind: crlsource.Kind, outcome: crlsource.Outcome) -> None:
        metrics.crl_fetches.labels(issuer_id, kind.value, outcome.value).inc()

    tasks = []
    for issuer_id, state in app[CRLS].items():
        for kind in crlsource.Kind:
            for outcome in crlsource.Outcome:
                metrics.crl_fetches.labels(issuer_id, kind.value, outcome.value)  # present (at 0) before the first

        def on_change(serials: set[int], issuer_id: str = issuer_id) -> None:
            dropped = responder.invalidate(issuer_id, serials, "crl")
            event(log, "crl_invalidated", issuer=issuer_id, changed=len(serials), invalidated=dropped)

        on_bug = metrics.background_errors.labels("crl_poll").inc
        if responder.issuers[issuer_id].needs_channel:  # served from the database: one replica fetches a round
            rows = app[STORE].crls
            poller = crlshared.poll_shared(
                state, fetcher, rows, config, count=count, on_bug=on_bug, clock=responder.clock
            )
        else:
            poller = crlsource.poll(
                state, fetcher, config, on_change, count=count, on_bug=on_bug, clock=responder.clock
            )
        tasks.append(asyncio.create_task(poller, name=f"ocspd-crl-{issuer_id}"))
    try:
        yield
    finally:
        await _cancel(tasks)
        await fetcher.close()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Stop a context's background tasks, and wait until they have."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _tokens(app: web.Application) -> AsyncIterator[None]:
    """Watch the PKCS#11 tokens (reopened with backoff after a failure, probed while idle); close them at the end."""
    tokens, metrics = app[TOKENS], app[METRICS]

    def reopened(token: Token, ok: bool) -> None:
        metrics.hsm_reopens.labels(token.name, "ok" if ok else "failed").inc()

    for token in tokens:
        for result in ("ok", "failed"):
            metrics.hsm_reopens.labels(token.name, result)  # present (at 0) before the first
    probe = app[RESPONDER].config.pkcs11.probe.total_seconds()
    task = asyncio.create_task(tokens.watch(reopened, probe), name="ocspd-hsm")
    try:
        yield
    finally:
        await _cancel([task])
        await asyncio.get_running_loop().run_in_executor(None, tokens.close)


def update_gauges(app: web.Application) -> None:
    """Bring the memory-tier, listener and token gauges up to date."""
    responder, metrics = app[RESPONDER], app[METRICS]
    for token in app[TOKENS]:
        metrics.hsm_token_up.labels(token.name).set(1 if token.up else 0)
    metrics.flush()
    metrics.memory_entries.set(len(responder.memory))
    metrics.memory_bytes.set(responder.memory.bytes)
    metrics.inflight_signatures.set(responder.signing)
    listener = app.get(LISTENER)
    if listener is not None:
        metrics.listener_connected.set(1 if listener.connected else 0)
    for issuer_id, state in app[CRLS].items():
        for kind, in_force in ((crlsource.Kind.BASE, state.base), (crlsource.Kind.DELTA, state.delta)):
            if in_force is not None:
                metrics.crl_number.labels(issuer_id, kind.value).set(in_force.number)
                metrics.crl_entries.labels(issuer_id, kind.value).set(len(in_force.entries))
                next_update = in_force.next_update.timestamp() if in_force.next_update else float("inf")
                metrics.crl_next_update.labels(issuer_id, kind.value).set(next_update)
    store = app.get(STORE)
    if store is not None:
        for result, n in store.take_write_back_counts().items():
            if n:
                metrics.write_backs.labels(result).inc(n)
        for (target, reason), n in store.take_read_counts().items():
            if n:
                metrics.status_reads.labels(target, reason).inc(n)
        read_target = store.read_target
        if read_target is not None:
            lag = read_target.lag
            metrics.read_target_lag.labels("read_dsn").set(float("nan") if lag is None else lag)
            metrics.read_target_in_use.labels("read_dsn").set(1 if read_target.in_use else 0)


async def _gauges(app: web.Application) -> AsyncIterator[None]:
    # Gauges are set periodically rather than on every change: that keeps the
    # hit path free of them, and works the same with several worker processes.
    throttle = Throttle(60.0)

    async def loop() -> None:
        while True:
            try:
                app[RESPONDER].memory.sweep()
                update_gauges(app)
            except Exception:  # a bug: counted, said (once a minute at most), and the loop goes on
                app[METRICS].background_errors.labels("gauges").inc()
                held = throttle.allow()
                if held is not None:
                    bug(log, "gauges_failed", held_back=held)
            await asyncio.sleep(GAUGE_SECONDS)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def app_readiness(app: web.Application) -> asyncio.Future[Readiness]:
    """Readiness of one OCSP app (keys, index files, database, listener, PKCS#11 tokens)."""
    update_gauges(app)
    tokens = app[TOKENS]
    return asyncio.ensure_future(readiness(app[INDEX_FILES], app.get(STORE), app.get(LISTENER), app[CRLS], [*tokens]))


# -- the database: pool, LISTEN and the shared refresh -------------------------------------


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
    responder: Responder,
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
                responder.metrics.listener_reconnects.inc()
            responder.channel_restored()

        listener = Listener(
            listen_dsn,
            on_notify=responder.on_notify,
            on_connect=connected,
            on_loss=responder.channel_lost,
            heartbeat=heartbeat,
            # Only reads from a read_dsn are fenced: without one, no extra query.
            fence=store.fence if store.reader is not None else None,
        )
        app[STORE] = store
        app[LISTENER] = listener
        notified = sorted(i.config.id for i in responder.issuers.values() if i.needs_channel)
        tasks = [
            asyncio.create_task(listener.run(), name="ocspd-listener"),
            asyncio.create_task(refresh_loop(store, responder, notified, refresh), name="ocspd-refresh"),
        ]
        if store.read_target is not None:
            tasks.append(asyncio.create_task(store.watch_read_target(), name="ocspd-read-target"))
        try:
            yield
        finally:
            await _cancel(tasks)
            await store.close()

    return context


async def refresh_loop(store: Store, responder: Responder, issuers: list[str], settings: RefreshSettings) -> None:
    """Re-sign stored responses before their refresh point, sharing the rows between replicas."""

    async def sign(row: DueRow) -> Entry:
        return await responder.sign_stored(row.issuer_id, row.serial, row.hash_alg, row.status)

    while True:
        done = 0
        try:
            signers = {issuer_id: responder.issuers[issuer_id].signer.fingerprint for issuer_id in issuers}
            done = await store.refresh_due(signers, sign, lead=settings.lead, limit=settings.batch)
        except SourceUnavailable as exc:
            event(replication_log, "refresh_skipped", logging.DEBUG, reason=str(exc))
        except KeyUnavailable as exc:  # a token is down (logged once by ocspd/hsm.py): the rows wait
            event(replication_log, "refresh_skipped", logging.DEBUG, reason=str(exc))
        except StoreError as exc:
            event(replication_log, "refresh_failed", logging.ERROR, error=str(exc))
        except Exception:  # a bug (in signing, say): counted, said, and the next round tries again
            responder.metrics.background_errors.labels("refresh").inc()
            bug(replication_log, "refresh_crashed")
        if done:
            event(replication_log, "refreshed", responses=done)
        if done < settings.batch:
            # Jittered, so that replicas started together drift apart.
            await asyncio.sleep(settings.interval * random.uniform(0.5, 1.5))
