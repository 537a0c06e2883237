"""A locked table cannot sink the responder or the database (SPEC §3 invariant 11, issue 11).

With ``LOCK TABLE ocspd_certificates IN ACCESS EXCLUSIVE MODE`` held by
another session, every miss waits on the lock. ocspd's pool connections
carry ``lock_timeout`` (``[database] lock_timeout``), so the wait ends on the
server: the miss gets tryLater within about that time, its backend is free
at once, and ocspd never holds more backends than its pool, however long
the lock is held (before, each client-side timeout closed a connection whose
backend waited on, and the pool opened new ones until PostgreSQL ran out).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg2
import pytest
from aiohttp.test_utils import TestClient
from cryptography.x509 import ocsp
from psycopg2.extensions import parse_dsn

from ocspd import pki
from ocspd.app import METRICS, app_readiness
from ocspd.exceptions import DatabaseBusy
from ocspd.protocol import TRY_LATER
from ocspd.store import Store
from ocspd.store.migrations import PING_BUDGET
from ocspd.store.values import session_dsn
from ocspd.web.admin import init_admin_app
from tests.conftest import AppClient
from tests.helpers import TestPki, query, request_der, verify_response

POOL_SIZE = 3
WORKERS = 2
LOCK_TIMEOUT = 0.4
MISSES_PER_ROUND = 24
ROUNDS = 4


class TableLock:
    """Another session holding ACCESS EXCLUSIVE on ocspd_certificates until released."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg2.connect(dsn)

    def take(self) -> None:
        with self._conn.cursor() as cur:
            cur.execute("LOCK TABLE ocspd_certificates IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self._conn.rollback()
        self._conn.close()


class BackendCounter:
    """Samples, in a thread, how many backends ocspd's pool holds (application_name 'ocspd')."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = psycopg2.connect(self._dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self._stop.wait(0.02):
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE application_name = 'ocspd' AND datname = current_database()"
                    )
                    row = cur.fetchone()
                    self.most = max(self.most, int(row[0]) if row else 0)
        finally:
            conn.close()

    def __enter__(self) -> BackendCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


async def _ask(client: TestClient[Any, Any], der: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    resp = await client.post("/", data=der)
    assert resp.status == 200
    return await resp.read(), time.monotonic() - started


async def test_a_locked_table_gives_try_later_within_the_lock_timeout_and_holds_no_more_backends_than_the_pool(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    """Two processes' worth of apps (as ``workers = 2``) on one database, the table locked."""
    env = {"OCSPD_DATABASE_POOL_SIZE": str(POOL_SIZE), "OCSPD_DATABASE_LOCK_TIMEOUT": f"{LOCK_TIMEOUT * 1000:.0f}ms"}
    clients = [await ocspd_client(db_pki, env=env) for _ in range(WORKERS)]
    leaves = [pki.make_leaf(db_pki.ca, 0x9000 + i, f"locked{i}.example.test").cert for i in range(MISSES_PER_ROUND)]
    lock = TableLock(pg_dsn)
    await asyncio.to_thread(lock.take)
    try:
        with BackendCounter(pg_dsn) as backends:
            for round_no in range(ROUNDS):
                # A fresh request each round (no answer could be cached anyway: none was given).
                ders = [request_der(leaf, db_pki.ca.cert, nonce=bytes([round_no + 1]) * 16) for leaf in leaves]
                answers = await asyncio.gather(*(_ask(client, der) for client in clients for der in ders))
                assert all(body == TRY_LATER for body, _ in answers), [body for body, _ in answers][:3]
                slowest = max(seconds for _, seconds in answers)
                # Queued behind a pool of POOL_SIZE, each wait ends after LOCK_TIMEOUT on the server;
                # the fetches of a loop turn share one query, so a round takes a few lock timeouts.
                assert slowest < 3.0, f"round {round_no}: slowest tryLater after {slowest:.2f}s"
                # The CA (any other database user) can still connect while ocspd waits.
                assert await asyncio.to_thread(query, pg_dsn, "SELECT 1") == [(1,)]
        share = WORKERS * POOL_SIZE
        assert 0 < backends.most <= share, f"ocspd held {backends.most} backends, its share is {share}"
    finally:
        await asyncio.to_thread(lock.release)
    # The lock gone, the same replicas answer again by themselves, and the CA's writes go through.
    for client in clients:
        body, _ = await _ask(client, request_der(leaves[0], db_pki.ca.cert, nonce=b"\x01" * 16))
        assert verify_response(body, db_pki).certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    assert query(pg_dsn, "SELECT ocspd_revoke('test-ca', '9001', 'keyCompromise') > 0")[0][0] is True


async def test_readyz_answers_within_its_budget_while_every_pool_connection_waits_on_a_lock(
    aiohttp_client: Any, ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    """With no server-side timeouts and a long deadline, the misses hold the whole pool on
    the lock; the health check may not queue behind them (it did not answer within 2 s)."""
    env = {
        "OCSPD_DATABASE_POOL_SIZE": "2",
        "OCSPD_DATABASE_LOCK_TIMEOUT": "0",
        "OCSPD_DATABASE_STATEMENT_TIMEOUT": "0",
        "OCSPD_DATABASE_TIMEOUT": "6s",
    }
    client = await ocspd_client(db_pki, env=env)
    app = client.app
    admin = await aiohttp_client(init_admin_app(app[METRICS].exposition, lambda: app_readiness(app)))
    assert (await admin.get("/readyz")).status == 200
    lock = TableLock(pg_dsn)
    await asyncio.to_thread(lock.take)
    try:
        leaves = [pki.make_leaf(db_pki.ca, 0x9100 + i, f"held{i}.example.test").cert for i in range(8)]
        misses = []
        for wave in (leaves[:4], leaves[4:]):  # a batch of fetches each: one per pool connection
            misses += [asyncio.create_task(_ask(client, request_der(leaf, db_pki.ca.cert))) for leaf in wave]
            await asyncio.sleep(0.2)
        # The misses have taken the pool (they would wait up to 6 s).
        assert not any(m.done() for m in misses)
        started = time.monotonic()
        ready = await admin.get("/readyz")
        took = time.monotonic() - started
        assert ready.status == 503 and "database:" in await ready.text()
        assert took < PING_BUDGET + 0.5, f"/readyz took {took:.2f}s"
    finally:
        await asyncio.to_thread(lock.release)
    for body, _ in await asyncio.gather(*misses):
        assert body  # answered once the lock is gone (or tryLater at the deadline)


@pytest.mark.parametrize(
    ("lock_timeout", "statement_timeout"),
    [(None, None), (None, 5.0)],
    ids=["no-server-timeouts", "long-statement-timeout"],
)
async def test_a_query_past_ocspds_deadline_is_cancelled_on_the_server(
    pg_dsn: str, lock_timeout: float | None, statement_timeout: float | None
) -> None:
    """Whatever the server's own timeouts (none, or longer than ocspd's), the caller gets
    DatabaseBusy at ocspd's deadline and its backend stops waiting at once: a client-side
    timeout that only closed its end left the backend waiting on the lock."""
    store = Store(pg_dsn, maxsize=2, timeout=0.3, lock_timeout=lock_timeout, statement_timeout=statement_timeout)
    await store.open()
    lock = TableLock(pg_dsn)
    await asyncio.to_thread(lock.take)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseBusy):
            await store.query("status", {"issuer": "test-ca", "serial": "1"})
        assert time.monotonic() - started < 1.0
        waiting = await asyncio.to_thread(
            query,
            pg_dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ocspd'"
            " AND datname = current_database() AND wait_event_type = 'Lock'",
        )
        assert waiting[0][0] == 0, "ocspd's backend still waits on the lock after ocspd gave up"
    finally:
        await asyncio.to_thread(lock.release)
        await store.close()


@pytest.mark.parametrize(
    ("dsn", "lock_timeout", "statement_timeout", "expected"),
    [
        (
            "dbname=ocspd",
            1.0,
            2.0,
            {
                "dbname": "ocspd",
                "application_name": "ocspd",
                "options": "-c lock_timeout=1000ms -c statement_timeout=2000ms",
            },
        ),
        (
            "postgresql:///ocspd?host=/run/postgresql",
            0.25,
            None,
            {
                "dbname": "ocspd",
                "host": "/run/postgresql",
                "application_name": "ocspd",
                "options": "-c lock_timeout=250ms",
            },
        ),
        (
            "dbname=x application_name=ca options='-c search_path=pki'",
            2.0,
            0.5,
            {
                "dbname": "x",
                "application_name": "ca",
                "options": "-c search_path=pki -c lock_timeout=2000ms -c statement_timeout=500ms",
            },
        ),
        ("dbname=x", None, 3.0, {"dbname": "x", "application_name": "ocspd", "options": "-c statement_timeout=3000ms"}),
        ("dbname=x", None, None, {"dbname": "x", "application_name": "ocspd"}),
    ],
    ids=["keywords", "url-lock-only", "options-and-name-kept", "statement-only", "neither"],
)
def test_the_pool_dsn_carries_the_session_settings(
    dsn: str, lock_timeout: float | None, statement_timeout: float | None, expected: dict[str, str]
) -> None:
    # A read pool's DSN (primary=False): only the session settings are added.
    def pool_dsn(given: str, primary: bool) -> dict[str, str]:
        made = session_dsn(given, lock_timeout=lock_timeout, statement_timeout=statement_timeout, primary=primary)
        return dict(parse_dsn(made))

    assert pool_dsn(dsn, primary=False) == expected
    # The primary's pool never settles on a hot standby (issue 13), unless the DSN says otherwise.
    assert pool_dsn(dsn, primary=True) == {**expected, "target_session_attrs": "read-write"}
    explicit = f"{dsn}&target_session_attrs=any" if dsn.startswith("postgresql:") else f"{dsn} target_session_attrs=any"
    assert pool_dsn(explicit, primary=True)["target_session_attrs"] == "any"
