"""PostgreSQL stopped, started and its backends killed under load (SPEC §3 invariant 5, issue 11).

Each test runs on asyncio's loop and on uvloop's (conftest.py): with the
design's aiopg driver, the same outage answered ``tryLater`` on one and
``internalError`` on the other, with thousands of ERROR lines. What must hold
on both: every answer is the right status or ``tryLater`` (never
internalError, never HTTP 5xx, never a guess), nothing is logged at ERROR
(no unretrieved futures, no unclosed connections), and the replica answers
again by itself once the database is back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2
import psycopg2.extensions
import pytest
from aiohttp.test_utils import TestClient
from cryptography.x509 import ocsp

from ocspd import pki
from ocspd.app import LISTENER, METRICS
from ocspd.store import Store
from tests.conftest import AppClient
from tests.helpers import GOOD_SERIAL, REVOKED_AT, REVOKED_SERIAL, TestPki, build_pki, outcome, request_der
from tests.pg import PgServer, throwaway_cluster

WORKERS = 16
OUTAGE_SECONDS = 1.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10.0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgServer]:
    """A PostgreSQL of this module's own, which its tests stop and start, over TCP as in production."""
    try:
        with throwaway_cluster(tcp=True) as server:
            yield server
    except RuntimeError as exc:  # no server binaries: the rest of the suite says so too
        pytest.skip(str(exc))


@pytest.fixture
def outage_pki(tmp_path: Path, cluster: PgServer) -> Iterator[TestPki]:
    name = cluster.create_database()
    dsn = cluster.dsn_for(name)
    asyncio.run(Store(dsn).migrate())
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT ocspd_add_certificate('test-ca', %s)", (f"{GOOD_SERIAL:x}",))
            cur.execute("SELECT ocspd_revoke('test-ca', %s, 'keyCompromise', %s)", (f"{REVOKED_SERIAL:x}", REVOKED_AT))
    finally:
        conn.close()
    yield build_pki(tmp_path / "pki", database=dsn)
    cluster.drop_database(name)


class Load:
    """``WORKERS`` clients sending nonce requests (signed live, so each needs the database)."""

    def __init__(self, client: TestClient[Any, Any], test_pki: TestPki) -> None:
        self._client = client
        self._pki = test_pki
        self._running = True
        self.answers: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        self._n = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(WORKERS)]

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)

    async def _worker(self, index: int) -> None:
        leaves = [self._pki.leaves["good"].cert, self._pki.leaves["revoked"].cert]
        expected = [ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED]
        while self._running:
            self._n += 1
            pick = self._n % 2
            der = request_der(leaves[pick], self._pki.ca.cert, nonce=self._n.to_bytes(16, "big"))
            self.answers[await ask(self._client, der, self._pki, expected[pick])] += 1


async def ask(client: TestClient[Any, Any], der: bytes, test_pki: TestPki, expected: ocsp.OCSPCertStatus) -> str:
    """What one request got: "right", "tryLater", or what was wrong with it."""
    resp = await client.post(
        "/", data=der, headers={"Content-Type": "application/ocsp-request"}, timeout=REQUEST_TIMEOUT
    )
    return outcome(resp.status, await resp.read(), test_pki, expected)


async def until_right(client: TestClient[Any, Any], test_pki: TestPki, limit: float = 20.0) -> float:
    """Seconds until a nonce request for the good certificate is answered good again."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, nonce=b"r" * 16)
        if await ask(client, der, test_pki, ocsp.OCSPCertStatus.GOOD) == "right":
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"no good answer {limit:g}s after the database came back")


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # an unretrieved future's exception is logged when it is collected
    return [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.levelno >= logging.ERROR]


async def test_postgres_stopped_and_started_under_load_gives_try_later_then_recovers(
    ocspd_client: AppClient, outage_pki: TestPki, cluster: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert cluster.control is not None
    caplog.set_level(logging.WARNING)
    client = await ocspd_client(outage_pki)
    await asyncio.wait_for(client.app[LISTENER].ever_connected.wait(), 10)
    load = Load(client, outage_pki)
    load.start()
    try:
        await asyncio.sleep(0.25)  # under way
        before = sum(load.answers.values())
        await asyncio.to_thread(cluster.control.stop, "fast")
        await asyncio.sleep(OUTAGE_SECONDS)
        during = Counter(load.answers)
        await asyncio.to_thread(cluster.control.start)
        recovered_after = await until_right(client, outage_pki)
        await asyncio.sleep(0.25)  # the load, too, gets answers again
    finally:
        await load.stop()
    assert before > 0
    assert during["tryLater"] > 0, during
    assert set(load.answers) <= {"right", "tryLater"}, load.answers
    assert recovered_after < 15.0
    assert errors_logged(caplog) == []


async def test_backends_terminated_repeatedly_while_revoking_never_serve_a_revoked_certificate_good(
    ocspd_client: AppClient, outage_pki: TestPki, cluster: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every ocspd backend (pool and LISTEN) killed again and again while the CA revokes:
    once a revocation has committed and the replica's channel is up again (a
    reconnect flushes memory; a delivered NOTIFY drops the key), the certificate
    is never answered good; the other answers stay right or tryLater."""
    caplog.set_level(logging.WARNING)
    client = await ocspd_client(outage_pki)
    listener = client.app[LISTENER]
    registry = client.app[METRICS].registry

    def notifications() -> float:
        return registry.get_sample_value("ocspd_invalidations_total", {"cause": "notify"}) or 0.0

    await asyncio.wait_for(listener.ever_connected.wait(), 10)
    dsn = outage_pki.config().database.dsn  # type: ignore[union-attr]
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    load = Load(client, outage_pki)
    load.start()
    try:
        for round_no in range(6):
            serial = 0x7000 + round_no
            leaf = pki.make_leaf(outage_pki.ca, serial, f"killed{round_no}.example.test").cert
            await asyncio.to_thread(_sql, conn, "SELECT ocspd_add_certificate('test-ca', %s)", f"{serial:x}")
            plain = request_der(leaf, outage_pki.ca.cert)
            assert await ask(client, plain, outage_pki, ocsp.OCSPCertStatus.GOOD) == "right"  # now in memory
            killed = await asyncio.to_thread(
                _sql,
                conn,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'ocspd' OR pid = %s",
                listener.backend_pid or 0,
            )
            assert killed
            notified = notifications()
            await asyncio.to_thread(_sql, conn, "SELECT ocspd_revoke('test-ca', %s, 'keyCompromise')", f"{serial:x}")
            reconnects = listener.reconnects  # a reconnect from now on flushes what memory held before
            # The replica has learnt of it: the NOTIFY arrived, or the channel came back (and flushed).
            deadline = time.monotonic() + 15
            while not (listener.connected and (notifications() > notified or listener.reconnects > reconnects)):
                assert time.monotonic() < deadline, "the LISTEN connection did not come back by itself"
                await asyncio.sleep(0.01)
            for _ in range(5):
                got = await ask(client, plain, outage_pki, ocsp.OCSPCertStatus.REVOKED)
                assert got in ("right", "tryLater"), f"round {round_no}: {got}"
    finally:
        await load.stop()
        conn.close()
    assert set(load.answers) <= {"right", "tryLater"}, load.answers
    assert errors_logged(caplog) == []


def _sql(conn: Any, sql: str, *params: object) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


async def test_a_multi_host_dsn_whose_first_host_is_down_is_served_by_the_next(
    ocspd_client: AppClient, outage_pki: TestPki, cluster: PgServer
) -> None:
    """libpq tries the hosts in order; the driver must follow it to the live one (aiopg kept
    polling the first host's closed socket) — the failover of a multi-host DSN."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # bound, not listening: connections to it are refused
        dbname = psycopg2.extensions.parse_dsn(outage_pki.config().database.dsn)["dbname"]  # type: ignore[union-attr]
        dsn = f"host=127.0.0.1,127.0.0.1 port={dead},{cluster.port} user=postgres dbname={dbname}"
        client = await ocspd_client(outage_pki, env={"OCSPD_DATABASE_DSN": dsn})
        await asyncio.wait_for(client.app[LISTENER].ever_connected.wait(), 10)
        for leaf, expected in (("good", ocsp.OCSPCertStatus.GOOD), ("revoked", ocsp.OCSPCertStatus.REVOKED)):
            der = request_der(outage_pki.leaves[leaf].cert, outage_pki.ca.cert, nonce=b"m" * 16)
            assert await ask(client, der, outage_pki, expected) == "right"
