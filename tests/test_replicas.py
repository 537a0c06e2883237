"""Two replicas on one real PostgreSQL: freshness, no stale write-back,
channel loss and store outage (SPEC §3, invariants 1, 2, 3, 5)."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from cryptography.x509 import ocsp

from ocspd.app import LISTENER, RESPONDER, STORE
from ocspd.protocol import TRY_LATER
from ocspd.status import Served
from tests.conftest import AppClient, add_status_rows, pki_through_pgbouncer
from tests.faults import PgProxy
from tests.helpers import (
    GOOD_SERIAL,
    TestPki,
    build_pki,
    eventually,
    hold_after_fetch,
    query,
    request_der,
    start_replicas,
    status_of,
)
from tests.pg import PgServer

Status = ocsp.OCSPCertStatus


@pytest.fixture(params=["direct", "pgbouncer"])
def db_pki(request: pytest.FixtureRequest, tmp_path: Path, pg_dsn: str) -> TestPki:
    """The suite's database PKI, with ``dsn`` on the server itself or through PgBouncer in
    transaction mode (issue 13): every replica test passes both ways."""
    if request.param == "direct":
        test_pki = build_pki(tmp_path / "pki", database=pg_dsn)
    else:
        test_pki = pki_through_pgbouncer(tmp_path / "pki", pg_dsn, request.getfixturevalue("pg_bouncer"))
    add_status_rows(pg_dsn)
    return test_pki


def stored_rows(dsn: str, serial: int) -> list[tuple[str, str]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT hash_alg, status FROM ocspd_responses WHERE serial = %s", (f"{serial:x}",))
            return list(cur.fetchall())
    finally:
        conn.close()


async def assert_never_good(clients: list[Any], der: bytes, test_pki: TestPki, rounds: int = 25) -> None:
    for _ in range(rounds):
        for client in clients:
            assert await status_of(client, der, test_pki) == Status.REVOKED


async def test_replicas_answer_from_postgres(ocspd_client: AppClient, db_pki: TestPki) -> None:
    clients = await start_replicas(ocspd_client, db_pki)
    for client in clients:
        for name, expected in (("good", Status.GOOD), ("revoked", Status.REVOKED), ("unissued", Status.UNKNOWN)):
            der = request_der(db_pki.leaves[name].cert, db_pki.ca.cert)
            assert await status_of(client, der, db_pki) == expected


async def test_revocation_by_sql_update_reaches_both_replicas(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    clients = await start_replicas(ocspd_client, db_pki)
    der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    for client in clients:
        assert await status_of(client, der, db_pki) == Status.GOOD  # now cached in memory and in Postgres
    query(
        pg_dsn,
        "UPDATE ocspd_certificates SET status = 'revoked', revoked_at = now(), reason = 'superseded'"
        " WHERE issuer_id = 'test-ca' AND serial = %s",
        f"{GOOD_SERIAL:x}",
    )
    for client in clients:
        await eventually(functools.partial(_is_revoked, client, der, db_pki), what="revoked on every replica")
    await assert_never_good(clients, der, db_pki)
    assert all(status == "revoked" for _, status in stored_rows(pg_dsn, GOOD_SERIAL))


async def _is_revoked(client: Any, der: bytes, test_pki: TestPki) -> bool:
    return await status_of(client, der, test_pki) == Status.REVOKED


async def test_revocation_by_cli_reaches_both_replicas(ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str) -> None:
    clients = await start_replicas(ocspd_client, db_pki)
    der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    for client in clients:
        assert await status_of(client, der, db_pki) == Status.GOOD
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ocspd",
        "revoke",
        "--config",
        str(db_pki.config_path),
        "--issuer",
        "test-ca",
        "--serial",
        f"0x{GOOD_SERIAL:X}",
        "--reason",
        "keyCompromise",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("OCSPD_")},
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    for client in clients:
        await eventually(functools.partial(_is_revoked, client, der, db_pki), what="revoked on every replica")
    await assert_never_good(clients, der, db_pki)


async def test_certificate_added_after_an_unknown_answer_becomes_good(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    clients = await start_replicas(ocspd_client, db_pki)
    cert = db_pki.leaves["unissued"].cert
    der = request_der(cert, db_pki.ca.cert)
    for client in clients:
        assert await status_of(client, der, db_pki) == Status.UNKNOWN
    query(pg_dsn, "SELECT ocspd_add_certificate('test-ca', %s)", f"{cert.serial_number:x}")

    async def good_everywhere() -> bool:
        return all([await status_of(c, der, db_pki) == Status.GOOD for c in clients])

    await eventually(good_everywhere, what="the new certificate answered good")


async def test_status_read_before_a_notified_revocation_is_read_again(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    """Invariant 2, memory: a status read before a revocation that is then notified is not signed or kept."""
    client = (await start_replicas(ocspd_client, db_pki, n=1))[0]
    responder, store = client.app[RESPONDER], client.app[STORE]
    # The status is read as "good", then held until the revocation has been processed.
    entered, release = hold_after_fetch(store)
    der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    request = asyncio.create_task(status_of(client, der, db_pki))
    await asyncio.wait_for(entered.wait(), 10)
    query(pg_dsn, "SELECT ocspd_revoke('test-ca', %s, 'keyCompromise')", f"{GOOD_SERIAL:x}")

    async def notified() -> bool:
        return all(flight.stale for flight in responder.flights._flights.values())

    await eventually(notified, what="notification processed")
    release.set()
    assert await request == Status.REVOKED  # the held status was discarded and read again
    cached = responder.memory.get(responder.key("test-ca", "sha1", GOOD_SERIAL))
    assert cached is not None and cached.status is Served.REVOKED
    await store.flush()
    assert stored_rows(pg_dsn, GOOD_SERIAL) and all(s == "revoked" for _, s in stored_rows(pg_dsn, GOOD_SERIAL))


async def test_write_back_signed_before_a_revocation_is_refused_by_the_database(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    """Invariant 2, Postgres: a "good" written back after the revocation committed is not stored."""
    client = (await start_replicas(ocspd_client, db_pki, n=1))[0]
    responder, store = client.app[RESPONDER], client.app[STORE]
    release = asyncio.Event()
    real_write = store.writes._write

    async def held_write(batch: Any) -> None:
        await release.wait()
        await real_write(batch)

    store.writes._write = held_write
    der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    assert await status_of(client, der, db_pki) == Status.GOOD  # answered; its write-back is held
    query(pg_dsn, "SELECT ocspd_revoke('test-ca', %s, 'keyCompromise')", f"{GOOD_SERIAL:x}")

    async def dropped() -> bool:
        return responder.memory.get(responder.key("test-ca", "sha1", GOOD_SERIAL)) is None

    await eventually(dropped, what="notification processed")
    release.set()
    await store.flush()
    assert stored_rows(pg_dsn, GOOD_SERIAL) == []  # the late "good" was refused
    assert store.take_write_back_counts()["refused"] == 1
    await assert_never_good([client], der, db_pki)


async def test_queued_write_backs_are_written_when_the_app_stops(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    client = (await start_replicas(ocspd_client, db_pki, n=1))[0]
    store = client.app[STORE]
    store.write_back = _queue_only(store)
    der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    assert await status_of(client, der, db_pki) == Status.GOOD
    assert stored_rows(pg_dsn, GOOD_SERIAL) == []  # still queued
    await client.close()  # stops the app: the queue is sent before the pool closes
    assert stored_rows(pg_dsn, GOOD_SERIAL) == [("sha1", "good")]


def _queue_only(store: Any) -> Any:
    """Store.write_back with its timer never firing: only a flush sends the queue."""
    real = store.write_back

    def write_back(*args: Any) -> None:
        real(*args)
        if store.writes._write_timer is not None:
            store.writes._write_timer.cancel()
            store.writes._write_timer = None

    return write_back


async def _listener_down(client: Any) -> bool:
    return not client.app[LISTENER].connected


async def _listener_up(client: Any) -> bool:
    return bool(client.app[LISTENER].connected)


async def test_terminated_listener_reconnects_and_no_good_is_served_after_a_revocation(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    """Invariant 3 with pg_terminate_backend: the revocation happens right after the LISTEN backend dies."""
    client = (await start_replicas(ocspd_client, db_pki, n=1))[0]
    listener = client.app[LISTENER]
    der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    assert await status_of(client, der, db_pki) == Status.GOOD  # cached in memory
    pid = listener.backend_pid
    query(pg_dsn, "SELECT pg_terminate_backend(%s)", pid)
    query(pg_dsn, "SELECT ocspd_revoke('test-ca', %s, 'keyCompromise')", f"{GOOD_SERIAL:x}")
    # From here on, whether or not the loss has been noticed yet, the
    # notification or the flush must win: poll until revoked, then never good.
    await eventually(lambda: _is_revoked(client, der, db_pki), what="revoked after listener loss")
    await assert_never_good([client], der, db_pki)
    await eventually(lambda: _listener_up(client), what="listener back")
    assert listener.backend_pid != pid
    assert listener.reconnects >= 1
    await assert_never_good([client], der, db_pki)


async def test_while_the_channel_is_down_memory_answers_are_not_served(
    ocspd_client: AppClient, db_pki: TestPki, proxy: PgProxy, pg_dsn: str
) -> None:
    """Invariant 3: revocations made while LISTEN is down are not hidden by the memory tier."""
    dbname = psycopg2.extensions.parse_dsn(pg_dsn)["dbname"]
    client = (await start_replicas(ocspd_client, db_pki, n=1, env={"OCSPD_DATABASE_LISTEN_DSN": proxy.dsn(dbname)}))[0]
    der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    assert await status_of(client, der, db_pki) == Status.GOOD
    proxy.cut()  # the listener loses its connection and cannot come back
    await eventually(lambda: _listener_down(client), what="listener loss noticed")
    assert len(client.app[RESPONDER].memory) == 0  # flushed on loss
    query(pg_dsn, "SELECT ocspd_revoke('test-ca', %s, 'keyCompromise')", f"{GOOD_SERIAL:x}")
    # No notification can arrive, yet the very next answer is revoked: read from Postgres.
    assert await status_of(client, der, db_pki) == Status.REVOKED
    await assert_never_good([client], der, db_pki, rounds=5)
    assert len(client.app[RESPONDER].memory) == 0  # nothing cached while the channel is down
    proxy.restore()
    await eventually(lambda: _listener_up(client), what="listener reconnected by itself")
    await assert_never_good([client], der, db_pki, rounds=5)


async def test_store_outage_gives_try_later_for_uncached_keys_and_recovers(
    ocspd_client: AppClient, db_pki: TestPki, proxy: PgProxy, pg_dsn: str
) -> None:
    """Invariant 5: Postgres unreachable → tryLater (never a guess, never HTTP 500), then recovery."""
    dbname = psycopg2.extensions.parse_dsn(pg_dsn)["dbname"]
    # The pool goes through the proxy; LISTEN stays direct, so cached answers remain trustworthy.
    client = (
        await start_replicas(
            ocspd_client,
            db_pki,
            n=1,
            env={"OCSPD_DATABASE_DSN": proxy.dsn(dbname), "OCSPD_DATABASE_LISTEN_DSN": pg_dsn},
        )
    )[0]
    cached = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    uncached = request_der(db_pki.leaves["revoked"].cert, db_pki.ca.cert)
    assert await status_of(client, cached, db_pki) == Status.GOOD
    proxy.cut()
    assert await status_of(client, uncached, db_pki) == TRY_LATER
    assert await status_of(client, cached, db_pki) == Status.GOOD  # memory, with the channel up
    nonce = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert, nonce=b"n" * 16)
    assert await status_of(client, nonce, db_pki) == TRY_LATER  # live signing needs the status
    proxy.restore()
    assert await status_of(client, uncached, db_pki) == Status.REVOKED
    assert await status_of(client, nonce, db_pki) == Status.GOOD


async def test_whole_database_outage_serves_nothing_from_memory(
    ocspd_client: AppClient, db_pki: TestPki, proxy: PgProxy, pg_dsn: str
) -> None:
    """When the listener shares the outage, even cached answers give way to tryLater (invariant 3)."""
    dbname = psycopg2.extensions.parse_dsn(pg_dsn)["dbname"]
    env = {"OCSPD_DATABASE_DSN": proxy.dsn(dbname), "OCSPD_DATABASE_LISTEN_DSN": proxy.dsn(dbname)}
    client = (await start_replicas(ocspd_client, db_pki, n=1, env=env))[0]
    der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    assert await status_of(client, der, db_pki) == Status.GOOD
    proxy.cut()
    await eventually(lambda: _listener_down(client), what="listener loss noticed")
    assert await status_of(client, der, db_pki) == TRY_LATER
    proxy.restore()
    await eventually(lambda: _listener_up(client), what="listener reconnected")
    assert await status_of(client, der, db_pki) == Status.GOOD


async def test_unmigrated_database_gives_try_later(
    ocspd_client: AppClient, db_pki: TestPki, pg_server: PgServer
) -> None:
    name = pg_server.create_database()
    try:
        client = await ocspd_client(db_pki, env={"OCSPD_DATABASE_DSN": pg_server.dsn_for(name)})
        der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
        assert await status_of(client, der, db_pki) == TRY_LATER
    finally:
        await client.close()
        pg_server.drop_database(name)
