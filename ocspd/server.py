"""One serving process of ``ocspd serve``: listeners, signals, reload, systemd
notification, and what the process needs (file descriptors, GC thresholds).

A ``Process`` serves OCSP and, unless it is a worker, the admin endpoints.
Whether ``ocspd serve`` runs one process or a supervisor of workers
(``ocspd/workers.py``) is decided in ``ocspd/daemon.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import resource
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from ocspd.app import LISTENER, METRICS, RESPONDER, STORE, app_readiness, init_app, reload_app, runner_for
from ocspd.config import Config, DatabaseConfig, format_addr, format_duration, format_size, load_config
from ocspd.exceptions import OcspdError, SchemaOutdated, SourceUnavailable, StoreError
from ocspd.logs import event
from ocspd.sdnotify import Notifier, watchdog_interval, watchdog_loop
from ocspd.signer import Signer
from ocspd.store import Listener, Store
from ocspd.store.values import dsn_target
from ocspd.web.admin import init_admin_app

log = logging.getLogger("ocspd.server")

# Seconds that requests in flight get to finish on SIGTERM.
SHUTDOWN_TIMEOUT = 10.0
# How often a worker tells the supervisor how it is.
WORKER_REPORT_SECONDS = 1.0
# How often start-up checks again for a database schema that is missing or outdated.
SCHEMA_RETRY_SECONDS = 2.0
# The cyclic garbage collector's thresholds while serving. Python's default
# (700, 10, 10) runs a young collection every few requests under load and
# was ~5 % of the CPU of a cold miss (bench/README.md); almost everything a
# request allocates is freed by reference counting, so collecting 70x less
# often costs a little memory and no correctness.
GC_THRESHOLDS = (50_000, 20, 20)
# File descriptors a process needs besides its OCSP connections and database
# pool: listeners, the event loop's own, metric files, index files, the admin
# listener's connections, a margin. systemd/ocspd.service's LimitNOFILE= covers
# the default [server] max_connections plus this.
FILE_RESERVE = 256


def summary(config: Config, signers: Mapping[str, Signer]) -> None:
    """The start-up summary: issuers, key types, listeners, tiers (never a key or passphrase)."""
    for issuer_id, signer in signers.items():
        issuer = next(i for i in config.issuers if i.id == issuer_id)
        source = f"index {issuer.index.resolve()}" if issuer.index else "postgres"
        crl: dict[str, Any] = {}
        if issuer.crl:
            # Not on the CRL is not proof of issuance: say which choice this issuer made (issue 15).
            unlisted = "good (not CA/Browser Forum compliant)" if issuer.crl_unlisted == "good" else f"{source}"
            crl = {"crl": ",".join(issuer.crl), "crl_unlisted": unlisted}
            source = "crl" if issuer.crl_unlisted == "good" and not config.database else f"crl+{source}"
        event(
            log,
            "issuer",
            id=issuer_id,
            key_type=signer.key_type,
            signed_by="delegated responder" if signer.responder_cert is not None else "CA key",
            status_source=source,
            unknown_serial=issuer.unknown_serial,
            **crl,
        )
    event(
        log,
        "config",
        source=config.source,
        workers=config.server.workers,
        listen=",".join(format_addr(addr) for addr in config.server.listen),
        admin=format_addr(config.admin.listen),
        memory_tier=f"{config.cache.max_entries} entries/{format_size(config.cache.max_bytes)}",
        postgres_tier="on" if config.database else "off",
        # Where the request path reads statuses (never the DSN itself: it may carry a password).
        status_reads=("read_dsn, fenced" if config.database.read_dsn else "dsn") if config.database else "off",
        databases=_database_roles(config.database) if config.database else "off",
        validity=format_duration(config.responses.validity),
        nonce=config.responses.nonce,
    )


def _database_roles(database: DatabaseConfig) -> str:
    """Where each role's DSN leads (hosts, database, user: never a password), e.g.
    ``dsn=ocspd@db1:6432/ocspd listen_dsn=ocspd@db1:5432/ocspd read_dsn=ocspd@db2:5432/ocspd``."""
    roles = {"dsn": database.dsn, "listen_dsn": database.listen_dsn, "read_dsn": database.read_dsn}
    return " ".join(f"{role}={dsn_target(dsn, f'[database] {role}')}" for role, dsn in roles.items() if dsn)


def files_needed(config: Config) -> int:
    """File descriptors one serving process may need: every connection the limit lets in, and more."""
    pool = config.database.pool_size + 1 if config.database is not None else 0  # + the LISTEN connection
    return config.server.max_connections + pool + FILE_RESERVE


def ensure_file_limit(config: Config) -> None:
    """Raise RLIMIT_NOFILE's soft limit to what ``[server] max_connections`` needs (never past
    the hard limit, which needs no privilege), and warn when even that is short: a process out
    of descriptors stops accepting anyone, where the limit would have closed an idle connection."""
    needed = files_needed(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:  # e.g. a seccomp filter refusing it
            event(log, "file_limit_unchanged", logging.WARNING, soft=soft, error=str(exc))
        else:
            event(log, "file_limit_raised", soft=target, was=soft, hard=hard)
            soft = target
    if soft < needed:
        event(
            log,
            "file_limit_low",
            logging.WARNING,
            soft=soft,
            hard=hard,
            needed=needed,
            max_connections=config.server.max_connections,
            fix="raise LimitNOFILE= (ulimit -n) or lower [server] max_connections",
        )


def ignore_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """From now on SIGINT/SIGTERM are ignored: a second one during the drain must
    not kill us half-way (systemd escalates to SIGKILL after TimeoutStopSec anyway)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)


async def _start_site(runner: web.BaseRunner, host: str, port: int, *, reuse_port: bool) -> None:
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        raise OcspdError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    event(log, "listening", address=f"{host}:{port}")


class Process:
    """One serving process: the OCSP app, and the admin app unless it is a worker."""

    def __init__(self, config_path: Path | None, config: Config, *, worker_fd: int | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.worker_fd = worker_fd
        self.notifier = Notifier(None) if worker_fd is not None else Notifier.from_env()
        self.serving = False  # READY=1 sent (or, for a worker, reported)

    async def run(self) -> None:
        app = init_app(self.config)  # keys are loaded here, once
        if self.worker_fd is None:
            summary(self.config, {issuer_id: i.signer for issuer_id, i in app[RESPONDER].issuers.items()})
        runner = runner_for(
            app,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            handle_signals=False,
            keepalive_timeout=self.config.server.keepalive_timeout.total_seconds(),
        )
        admin_runner: web.AppRunner | None = None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._reload(app))
        tasks: list[asyncio.Task[None]] = []
        await runner.setup()  # index files loaded, pool and listener started
        # What exists now (config, keys, index files) lives as long as the
        # process: kept out of every future collection.
        gc.freeze()
        try:
            for host, port in self.config.server.listen:
                await _start_site(runner, host, port, reuse_port=self.worker_fd is not None)
            if self.worker_fd is None:
                admin = init_admin_app(app[METRICS].exposition, lambda: app_readiness(app))
                admin_runner = web.AppRunner(admin, access_log=None)
                await admin_runner.setup()
                await _start_site(admin_runner, *self.config.admin.listen, reuse_port=False)
            if self.worker_fd is not None:
                # From now on, so that the supervisor's /readyz says what a waiting worker waits for.
                tasks.append(asyncio.create_task(self._report(app)))
            if not await self._servable(app.get(STORE), app.get(LISTENER), stop):
                return  # stopped while waiting
            event(log, "ready", issuers=",".join(i.id for i in self.config.issuers), pid=os.getpid())
            self.serving = True
            self.notifier.ready("serving")
            interval = watchdog_interval()
            if interval is not None and self.notifier.enabled:
                tasks.append(asyncio.create_task(watchdog_loop(self.notifier, interval, lambda: True)))
            await stop.wait()
        finally:
            ignore_stop_signals(loop)
            event(log, "stopping", pid=os.getpid())
            self.notifier.stopping()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if admin_runner is not None:
                await admin_runner.cleanup()
            # Stops accepting, lets requests in flight finish (bounded), then
            # closes the pool and the listener.
            await runner.cleanup()
            event(log, "stopped", pid=os.getpid())

    async def _servable(self, store: Store | None, listener: Listener | None, stop: asyncio.Event) -> bool:
        """Wait until the database can serve: LISTEN connection up, schema migrated. False: stopped first.

        A database whose schema is missing or behind is waited for, not
        exited on (one error line names the fix): ``ocspd db migrate`` run
        meanwhile makes this process ready by itself.
        """
        if store is None:
            return True
        if listener is not None and not listener.connected:
            self.notifier.status("waiting for the database LISTEN connection")
            if not await _unless_stopped(listener.ever_connected.wait(), stop):
                return False
        logged_error = logged_outage = False
        shown = ""
        while True:
            try:
                if not await _unless_stopped(store.ping(), stop):
                    return False
            except (SchemaOutdated, StoreError) as exc:
                # The database answers, but this code cannot serve from it.
                if not logged_error:
                    event(log, "schema_not_ready", logging.ERROR, error=str(exc))
                    logged_error = True
                text = str(exc)
            except SourceUnavailable as exc:
                # An outage, not a schema error: the schema is just not confirmed yet.
                if not logged_outage:
                    event(log, "schema_unconfirmed", logging.WARNING, error=str(exc))
                    logged_outage = True
                text = f"waiting for the database: {exc}"
            else:
                if logged_error or logged_outage:
                    event(log, "schema_ready")
                return True
            if text != shown:
                self.notifier.status(text)
                shown = text
            if not await _unless_stopped(asyncio.sleep(SCHEMA_RETRY_SECONDS), stop):
                return False

    def _reload(self, app: web.Application) -> None:
        # Before READY=1, a reload must not announce readiness (RELOADING=1 ... READY=1).
        if self.serving:
            self.notifier.reloading()
        try:
            config = load_config(self.config_path)
            changed = reload_app(app, config)
        except OcspdError as exc:
            event(log, "reload_refused", logging.ERROR, error=str(exc), note="the running configuration is kept")
        else:
            self.config = config
            event(log, "reloaded", changed_issuers=",".join(changed) or "none")
        if self.serving:
            self.notifier.ready("serving")

    async def _report(self, app: web.Application) -> None:
        """Tell the supervisor, once a second, whether this worker is ready."""
        assert self.worker_fd is not None
        with open(self.worker_fd, "w", buffering=1, closefd=True) as pipe:
            while True:
                result = await app_readiness(app)
                line = {
                    # Not ready before start-up is done, whatever the checks say (listener still down).
                    "pid": os.getpid(),
                    "ready": result.ready and self.serving,
                    "degraded": result.degraded,
                    "checks": result.checks,
                }
                try:
                    pipe.write(json.dumps(line) + "\n")
                except (BrokenPipeError, OSError):
                    return  # the supervisor is gone; SIGTERM will follow or already did
                await asyncio.sleep(WORKER_REPORT_SECONDS)


async def _unless_stopped(waiting: Awaitable[object], stop: asyncio.Event) -> bool:
    """Await ``waiting`` (its exception propagates) unless ``stop`` is set first; True when it finished."""
    task, stopper = asyncio.ensure_future(waiting), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished = task.done()
        for waiter in (task, stopper):
            waiter.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    if finished:
        task.result()
    return finished


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's, when it is installed (the ``speed`` extra): a faster event loop. Else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
