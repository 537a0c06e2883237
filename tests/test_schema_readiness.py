"""Never ready on a database it cannot serve: the schema check of the store,
/readyz, and `ocspd serve` waiting (one error line naming the fix, no
READY=1) until `ocspd db migrate` has run (SPEC §5). Every process started
is stopped by PID, every database created is dropped."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import psycopg2.extensions
import pytest

from ocspd.exceptions import SchemaOutdated, SourceUnavailable
from ocspd.health import readiness
from ocspd.store import Store
from ocspd.store.queries import migrations
from tests.faults import PgProxy
from tests.helpers import TestPki, build_pki, query, request_der
from tests.pg import PgServer
from tests.serving import NotifySocket, Served, ask, start_serve, wait_http

NEED = max(m.version for m in migrations())
FIX = "run `ocspd db migrate`"
MISSING = f"database schema missing: {FIX}"


@pytest.fixture
def bare_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh database on which `ocspd db migrate` never ran."""
    name = pg_server.create_database()
    yield pg_server.dsn_for(name)
    pg_server.drop_database(name)


OpenStore = Callable[[str], Awaitable[Store]]


@pytest.fixture
async def store_on() -> AsyncIterator[OpenStore]:
    """Open stores on DSNs; closed afterwards."""
    stores: list[Store] = []

    async def open_store(dsn: str) -> Store:
        store = Store(dsn)
        await store.open()
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        await store.close()


# -- the store's check -------------------------------------------------------------------


async def test_a_database_never_migrated_is_schema_missing_and_names_the_fix(
    bare_dsn: str, store_on: OpenStore
) -> None:
    store = await store_on(bare_dsn)
    with pytest.raises(SchemaOutdated) as caught:
        await store.ping()
    assert str(caught.value) == MISSING
    assert isinstance(caught.value, SourceUnavailable)  # requests meanwhile get tryLater


async def test_an_empty_migrations_table_is_schema_missing(bare_dsn: str, store_on: OpenStore) -> None:
    # What a first `ocspd db migrate` that failed half-way leaves behind.
    query(bare_dsn, "CREATE TABLE ocspd_migrations (version integer PRIMARY KEY, name text NOT NULL)")
    store = await store_on(bare_dsn)
    with pytest.raises(SchemaOutdated, match="database schema missing: run `ocspd db migrate`"):
        await store.ping()


async def test_a_database_behind_the_code_says_both_versions_and_the_fix(pg_dsn: str, store_on: OpenStore) -> None:
    assert NEED >= 2, "needs a database one migration behind that still has a migration"
    query(pg_dsn, "DELETE FROM ocspd_migrations WHERE version = %s", NEED)
    store = await store_on(pg_dsn)
    with pytest.raises(SchemaOutdated) as caught:
        await store.ping()
    assert str(caught.value) == f"database schema is at version {NEED - 1}, this ocspd needs {NEED}: {FIX}"
    assert (caught.value.have, caught.value.need) == (NEED - 1, NEED)


async def test_a_migrated_database_passes(pg_dsn: str, store_on: OpenStore) -> None:
    store = await store_on(pg_dsn)
    await store.ping()


async def test_a_database_newer_than_the_code_passes(pg_dsn: str, store_on: OpenStore) -> None:
    # A replica running newer code migrated first: this one still serves.
    query(pg_dsn, "INSERT INTO ocspd_migrations (version, name) VALUES (%s, 'from_the_future.sql')", NEED + 1)
    store = await store_on(pg_dsn)
    await store.ping()


async def test_readiness_is_not_ready_with_the_schema_line(bare_dsn: str, pg_dsn: str, store_on: OpenStore) -> None:
    bare = await readiness({}, await store_on(bare_dsn), None)
    assert not bare.ready
    assert f"database: {MISSING}" in bare.checks
    migrated = await readiness({}, await store_on(pg_dsn), None)
    assert migrated.ready and "database: reachable" in migrated.checks


# -- `ocspd serve` ---------------------------------------------------------------------------


def log_of(test_pki: TestPki) -> str:
    return (test_pki.directory / "serve.log").read_text()


async def wait_log(test_pki: TestPki, needle: str, count: int = 1, timeout: float = 30) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (text := log_of(test_pki)).count(needle) < count:
        assert loop.time() < deadline, f"{needle!r} x{count} not logged; log:\n{text}"
        await asyncio.sleep(0.05)
    return text


async def readyz(served: Served) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{served.admin}/readyz") as r:
        return r.status, await r.text()


@pytest.mark.timeout(120)
async def test_serve_on_an_unmigrated_database_waits_with_the_fix_until_migrated(tmp_path: Path, bare_dsn: str) -> None:
    test_pki = build_pki(tmp_path / "pki", database=bare_dsn)
    notify = NotifySocket(tmp_path / "notify.sock")
    served = await start_serve(test_pki, {"NOTIFY_SOCKET": str(notify.path)})
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        text = await wait_log(test_pki, "event=schema_not_ready")
        line = next(line for line in text.splitlines() if "event=schema_not_ready" in line)
        assert "level=error" in line and FIX in line, line
        await notify.wait_for(f"STATUS={MISSING}", timeout=10)
        # A reload while waiting must not announce readiness either.
        served.proc.send_signal(signal.SIGHUP)
        with pytest.raises(AssertionError):
            await notify.wait_for("READY=1", timeout=4.5)  # two re-checks at least
        assert not any("RELOADING=1" in m.splitlines() for m in notify.messages), notify.messages
        text = log_of(test_pki)
        assert "event=ready" not in text
        assert text.count("event=schema_not_ready") == 1, text  # one line, not one per re-check
        status, body = await readyz(served)
        assert status == 503 and body.startswith("not ready\n")
        assert f"database: {MISSING}" in body.splitlines(), body

        assert await Store(bare_dsn).migrate() == [m.name for m in migrations()]
        await notify.wait_for("READY=1", timeout=15)
        text = await wait_log(test_pki, "event=ready ")
        assert text.index("event=schema_ready") < text.index("event=ready ")
        status, body = await readyz(served)
        assert status == 200, body
        async with aiohttp.ClientSession() as session:
            await ask(session, served.url, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
        assert await served.stop() == 0
    finally:
        await served.stop()
        notify.close()


@pytest.mark.timeout(60)
async def test_sigterm_stops_serve_promptly_while_it_waits_for_the_schema(tmp_path: Path, bare_dsn: str) -> None:
    test_pki = build_pki(tmp_path / "pki", database=bare_dsn)
    notify = NotifySocket(tmp_path / "notify.sock")
    served = await start_serve(test_pki, {"NOTIFY_SOCKET": str(notify.path)})
    try:
        await wait_log(test_pki, "event=schema_not_ready")
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 5) == 0
        await notify.wait_for("STOPPING=1", timeout=1)
        assert "READY=1" not in "\n".join(notify.messages).splitlines()
        assert "event=stopped" in log_of(test_pki)
    finally:
        await served.stop()
        notify.close()


@pytest.mark.timeout(60)
async def test_sigterm_stops_serve_promptly_while_it_waits_for_the_listen_connection(
    tmp_path: Path, pg_dsn: str, proxy: PgProxy
) -> None:
    dbname = psycopg2.extensions.parse_dsn(pg_dsn)["dbname"]
    test_pki = build_pki(tmp_path / "pki", database=proxy.dsn(dbname))
    proxy.cut()
    served = await start_serve(test_pki, {})
    try:
        await wait_log(test_pki, "event=listener_down")
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 5) == 0
        assert "event=stopped" in log_of(test_pki)
    finally:
        await served.stop()


@pytest.mark.timeout(120)
async def test_an_outage_after_listen_is_warned_once_and_is_no_schema_error(
    tmp_path: Path, pg_dsn: str, proxy: PgProxy
) -> None:
    # The LISTEN connection goes straight to the database, the pool through a
    # proxy that is cut: the schema cannot be confirmed, which is an outage.
    dbname = psycopg2.extensions.parse_dsn(pg_dsn)["dbname"]
    test_pki = build_pki(tmp_path / "pki", database=proxy.dsn(dbname))
    notify = NotifySocket(tmp_path / "notify.sock")
    proxy.cut()
    served = await start_serve(test_pki, {"NOTIFY_SOCKET": str(notify.path), "OCSPD_DATABASE_LISTEN_DSN": pg_dsn})
    try:
        await wait_log(test_pki, "event=listener_up")
        text = await wait_log(test_pki, "event=schema_unconfirmed")
        line = next(line for line in text.splitlines() if "event=schema_unconfirmed" in line)
        assert "level=warning" in line and "database unavailable" in line, line
        with pytest.raises(AssertionError):
            await notify.wait_for("READY=1", timeout=4.5)
        assert any(
            f.startswith("STATUS=waiting for the database: database unavailable")
            for m in notify.messages
            for f in m.splitlines()
        ), notify.messages
        text = log_of(test_pki)
        assert text.count("event=schema_unconfirmed") == 1, text
        assert "event=schema_not_ready" not in text and "event=ready" not in text
        proxy.restore()
        await notify.wait_for("READY=1", timeout=15)
        await wait_log(test_pki, "event=schema_ready")
        assert await served.stop() == 0
    finally:
        await served.stop()
        notify.close()


@pytest.mark.timeout(120)
async def test_workers_wait_for_the_schema_and_the_supervisor_readies_once_all_do(
    tmp_path: Path, bare_dsn: str
) -> None:
    test_pki = build_pki(tmp_path / "pki", database=bare_dsn, server="workers = 2")
    notify = NotifySocket(tmp_path / "notify.sock")
    served = await start_serve(test_pki, {"NOTIFY_SOCKET": str(notify.path)})
    try:
        await wait_log(test_pki, "event=schema_not_ready", count=2, timeout=60)  # one line from each worker
        with pytest.raises(AssertionError):
            await notify.wait_for("READY=1", timeout=4.5)
        status, body = await readyz(served)
        assert status == 503, body
        # The supervisor's /readyz says, for each worker, what it waits for.
        assert body.count(f"  database: {MISSING}") == 2, body
        assert log_of(test_pki).count("event=schema_not_ready") == 2

        await Store(bare_dsn).migrate()
        await notify.wait_for("READY=1", timeout=30)
        await wait_log(test_pki, "event=schema_ready", count=2)
        status, body = await readyz(served)
        assert status == 200 and body.count(": ready") == 2, body
        assert await served.stop() == 0
    finally:
        await served.stop()
        notify.close()


@pytest.mark.timeout(120)
async def test_workers_waiting_for_their_listen_connection_do_not_make_the_supervisor_ready(
    tmp_path: Path, pg_dsn: str, proxy: PgProxy
) -> None:
    # The pool reaches a migrated database; the LISTEN connection, through a cut
    # proxy, does not. A worker's checks then say "degraded" (ready): it is
    # still starting, and must not be counted ready before it has said so.
    dbname = psycopg2.extensions.parse_dsn(pg_dsn)["dbname"]
    test_pki = build_pki(tmp_path / "pki", database=pg_dsn, server="workers = 2")
    notify = NotifySocket(tmp_path / "notify.sock")
    proxy.cut()
    served = await start_serve(
        test_pki, {"NOTIFY_SOCKET": str(notify.path), "OCSPD_DATABASE_LISTEN_DSN": proxy.dsn(dbname)}
    )
    try:
        await wait_log(test_pki, "event=listener_down", count=2, timeout=60)
        with pytest.raises(AssertionError):
            await notify.wait_for("READY=1", timeout=4)
        status, body = await readyz(served)
        assert status == 503, body
        proxy.restore()
        await notify.wait_for("READY=1", timeout=30)
        assert await served.stop() == 0
    finally:
        await served.stop()
        notify.close()
