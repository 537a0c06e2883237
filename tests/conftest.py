"""Fixtures shared by the test suite."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from ocspd.app import init_app, runner_for
from ocspd.store import Store
from tests.crls import CrlServer
from tests.faults import PgProxy
from tests.helpers import GOOD_SERIAL, REVOKED_AT, REVOKED_SERIAL, TestPki, build_pki, query
from tests.pg import PgBouncer, PgServer, pgbouncer, postgres_server, socket_path

AppClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def test_pki(tmp_path: Path) -> TestPki:
    """A P-256 CA with a delegated responder, served from index.txt."""
    return build_pki(tmp_path / "pki")


class OcspTestServer(TestServer):
    """A test server that serves the app as ``ocspd serve`` does (web.runner.OcspRunner)."""

    # Optional in TestServer until start_server has run; the fixtures and helpers here hand servers out started.
    port: int
    runner: BaseRunner

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return runner_for(self.app, **kwargs)


@pytest.fixture
def ocspd_client(aiohttp_client: Any) -> AppClient:
    """Start an ocspd app for a TestPki, served as ``ocspd serve`` serves it, and return a test client for it.

    ``router=True`` serves the same app through aiohttp's AppRunner and router instead.
    """

    async def start(test_pki: TestPki, *, router: bool = False, **kwargs: Any) -> TestClient[Any, Any]:
        env = kwargs.pop("env", {})
        app: web.Application = init_app(test_pki.config(**env), index_poll=0.05, **kwargs)
        server: BaseTestServer = TestServer(app) if router else OcspTestServer(app)
        return await aiohttp_client(server)  # type: ignore[no-any-return]

    return start


@pytest.fixture
async def ocspd_server() -> AsyncIterator[Callable[[web.Application], Awaitable[OcspTestServer]]]:
    """Serve apps on 127.0.0.1 as ``ocspd serve`` does (for clients we did not write); closed afterwards."""
    servers: list[OcspTestServer] = []

    async def start(app: web.Application) -> OcspTestServer:
        server = OcspTestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    while servers:
        await servers.pop().close()


Serve = Callable[..., Awaitable[OcspTestServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve a TestPki's app on 127.0.0.1 as ``ocspd serve`` does; ``fast_http``, extra
    environment (``env``) and runner kwargs (``max_connections=``...) as given."""
    servers: list[OcspTestServer] = []

    async def start(
        test_pki: TestPki, fast_http: bool = True, env: dict[str, str] | None = None, **kwargs: Any
    ) -> OcspTestServer:
        config = test_pki.config(OCSPD_SERVER_FAST_HTTP="true" if fast_http else "false", **(env or {}))
        server = OcspTestServer(init_app(config, index_poll=0.05), host="127.0.0.1")
        await server.start_server(**kwargs)
        servers.append(server)
        return server

    yield start
    while servers:
        await servers.pop().close()


# -- PostgreSQL ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for this session (see tests/pg.py)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> Iterator[str]:
    """A database with every migration applied, cloned by each test that needs one."""
    name = pg_server.create_database()
    asyncio.run(Store(pg_server.dsn_for(name)).migrate())
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def pg_dsn(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = pg_server.create_database(template=pg_template)
    yield pg_server.dsn_for(name)
    pg_server.drop_database(name)


@pytest.fixture
async def proxy(pg_server: PgServer) -> AsyncIterator[PgProxy]:
    """A TCP proxy in front of the test server that a test can cut and restore."""
    proxy = PgProxy(socket_path(pg_server))
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture(scope="session")
def pg_bouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the session's server (skipped without it)."""
    try:
        with pgbouncer(pg_server) as bouncer:
            yield bouncer
    except RuntimeError as exc:
        if "not installed" in str(exc):
            pytest.skip("pgbouncer is not installed (apt-get install pgbouncer) : no tests through PgBouncer")
        raise


# What `[database]` says to reach PostgreSQL through PgBouncer in transaction mode (README,
# "Scaling out"): no session settings in the startup packet (PgBouncer refuses `options`:
# the database carries them instead), LISTEN on a direct connection.
THROUGH_PGBOUNCER = 'lock_timeout = "0"\nstatement_timeout = "0"\nlisten_dsn = {direct}\n'
DATABASE_TIMEOUTS = (
    "ALTER DATABASE \"{name}\" SET lock_timeout = '1s'; ALTER DATABASE \"{name}\" SET statement_timeout = '2s'"
)


def pki_through_pgbouncer(directory: Path, pg_dsn: str, bouncer: PgBouncer) -> TestPki:
    """A PKI whose ``dsn`` is PgBouncer in front of ``pg_dsn``'s database (``listen_dsn``: direct)."""
    name = psycopg2.extensions.parse_dsn(pg_dsn)["dbname"]
    query(pg_dsn, DATABASE_TIMEOUTS.format(name=name))
    extra = THROUGH_PGBOUNCER.format(direct=json.dumps(pg_dsn))
    return build_pki(directory, database=bouncer.dsn_for(name), database_extra=extra)


@pytest.fixture
def db_pki(tmp_path: Path, pg_dsn: str) -> TestPki:
    """A PKI whose issuer takes its status from PostgreSQL, with good and revoked rows."""
    test_pki = build_pki(tmp_path / "pki", database=pg_dsn)
    add_status_rows(pg_dsn)
    return test_pki


def add_status_rows(pg_dsn: str) -> None:
    """The good and the revoked certificate of the test PKI, in ``pg_dsn``'s status table."""
    conn = psycopg2.connect(pg_dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT ocspd_add_certificate('test-ca', %s)", (f"{GOOD_SERIAL:x}",))
            cur.execute("SELECT ocspd_revoke('test-ca', %s, 'keyCompromise', %s)", (f"{REVOKED_SERIAL:x}", REVOKED_AT))
    finally:
        conn.close()


@pytest.fixture
async def crl_server() -> AsyncIterator[CrlServer]:
    """A CA's CRL distribution point on 127.0.0.1 (tests/crls.py), closed afterwards."""
    server = await CrlServer().start()
    yield server
    await server.close()
