"""Reads from a hot standby are fenced (SPEC §3, invariant 10; issue 13).

Two replicas with ``dsn`` and ``listen_dsn`` on a throwaway primary and
``read_dsn`` on a streaming hot standby of it that applies commits 1 s late:
after a revocation, a replica notified of it must never read the old status
from the standby and cache it as good again. With the primary unreachable,
a standby behind the fence means tryLater, never the old status.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509

from ocspd.app import LISTENER, METRICS, RESPONDER, STORE, app_readiness
from ocspd.config import dump_config
from ocspd.exceptions import ConfigError, StoreError
from ocspd.health import Readiness
from ocspd.protocol import TRY_LATER
from ocspd.store import Listener, Store
from ocspd.store.fence import Fence
from tests.conftest import AppClient
from tests.helpers import (
    GOOD_SERIAL,
    ISSUER,
    UNISSUED_SERIAL,
    TestPki,
    assert_refused,
    build_pki,
    eventually,
    ocspd,
    query,
    request_der,
    revoke_args,
    start_replicas,
    status_of,
)
from tests.pg import PgBouncer, PgServer, hot_standby, pgbouncer, throwaway_cluster
from tests.replication import (
    Answer,
    Status,
    assert_never_good_after,
    no_errors,
    reads,
    replicated_database,
    summary,
    watch,
)

APPLY_DELAY = 1.0  # the standby's recovery_min_apply_delay, seconds


@pytest.fixture(scope="module")
def replication() -> Iterator[tuple[PgServer, PgServer]]:
    """A throwaway primary and a hot standby of it, applying commits APPLY_DELAY late."""
    try:
        with throwaway_cluster() as primary, hot_standby(primary, apply_delay=f"{APPLY_DELAY:g}s") as standby:
            yield primary, standby
    except RuntimeError as exc:
        if "pg_basebackup" in str(exc):
            pytest.skip("pg_basebackup is not installed: no hot standby to test reads from")
        raise


def leaf(test_pki: TestPki, name: str) -> x509.Certificate:
    return test_pki.leaves[name].cert


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends: connections are refused


@pytest.fixture(scope="module")
def standby_bouncer(replication: tuple[PgServer, PgServer]) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the standby (skipped without it)."""
    try:
        with pgbouncer(replication[1]) as bouncer:
            yield bouncer
    except RuntimeError as exc:
        if "not installed" in str(exc):
            pytest.skip("pgbouncer is not installed (apt-get install pgbouncer): no reads through PgBouncer")
        raise


@pytest.mark.parametrize("read_through", ["direct", "pgbouncer"])
async def test_a_revocation_is_never_undone_by_a_standby_behind_it(
    replication: tuple[PgServer, PgServer],
    ocspd_client: AppClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
    read_through: str,
) -> None:
    """``read_dsn`` on the standby itself, or through PgBouncer in transaction mode (each
    fenced read is one transaction, so a pooled backend answers all of it)."""
    caplog.set_level(logging.WARNING)
    dsn, standby_dsn = await replicated_database(*replication)
    if read_through == "pgbouncer":
        bouncer: PgBouncer = request.getfixturevalue("standby_bouncer")
        standby_dsn = bouncer.dsn_for(psycopg2.extensions.parse_dsn(standby_dsn)["dbname"])
        # No session settings in the startup packet through PgBouncer (README, "Scaling out").
        timeouts = {"OCSPD_DATABASE_LOCK_TIMEOUT": "0", "OCSPD_DATABASE_STATEMENT_TIMEOUT": "0"}
    else:
        timeouts = {}
    test_pki = build_pki(tmp_path / "pki", database=dsn)
    clients = await start_replicas(ocspd_client, test_pki, env={"OCSPD_DATABASE_READ_DSN": standby_dsn, **timeouts})
    for client in clients:
        assert client.app[STORE].reader is not None
    ders = {name: request_der(leaf(test_pki, name), test_pki.ca.cert) for name in ("good", "unissued")}

    async def answered_good() -> bool:
        answers = [await status_of(c, der, test_pki) for c in clients for der in ders.values()]
        return all(a == Status.GOOD for a in answers)

    await eventually(answered_good, timeout=10, what="good from both replicas")
    for client in clients:  # from memory now: both replicas hold "good"
        assert await status_of(client, ders["good"], test_pki) == Status.GOOD

    async def revoke_by_sql() -> None:
        await asyncio.to_thread(query, dsn, "SELECT ocspd_revoke(%s, %s, 'keyCompromise')", ISSUER, f"{GOOD_SERIAL:x}")

    committed, timeline = await watch(clients, ders["good"], test_pki, revoke_by_sql)
    assert_never_good_after(committed, timeline, len(clients), try_later=False)

    async def revoke_by_cli() -> None:
        result = await ocspd(test_pki, *revoke_args(UNISSUED_SERIAL, "superseded"))
        assert result.returncode == 0, result.stderr

    committed, timeline = await watch(clients, ders["unissued"], test_pki, revoke_by_cli)
    assert_never_good_after(committed, timeline, len(clients), try_later=False)

    for client in clients:
        counts = reads(client)
        # The standby served reads, and was passed over while it had not replayed a revocation.
        assert counts["read_dsn", "fresh"] > 0, counts
        assert counts["primary", "behind"] > 0, counts
        assert counts["primary", "read_dsn_failed"] == 0, counts
    no_errors(caplog)


async def test_a_standby_behind_with_the_primary_unreachable_is_try_later(
    replication: tuple[PgServer, PgServer], ocspd_client: AppClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    dsn, standby_dsn = await replicated_database(*replication)
    unreachable = f"host=127.0.0.1 port={closed_port()} user=postgres dbname=none connect_timeout=2"
    test_pki = build_pki(tmp_path / "pki", database=unreachable)
    env = {"OCSPD_DATABASE_LISTEN_DSN": dsn, "OCSPD_DATABASE_READ_DSN": standby_dsn}
    [client] = await start_replicas(ocspd_client, test_pki, n=1, env=env)
    der = request_der(leaf(test_pki, "good"), test_pki.ca.cert)

    async def answered_good() -> bool:
        answer = await status_of(client, der, test_pki)
        assert answer in (Status.GOOD, TRY_LATER), answer  # tryLater while the standby is behind the fence
        return answer == Status.GOOD

    await eventually(answered_good, timeout=10, what="good from the standby")

    async def revoke_by_sql() -> None:
        await asyncio.to_thread(query, dsn, "SELECT ocspd_revoke(%s, %s, 'keyCompromise')", ISSUER, f"{GOOD_SERIAL:x}")

    committed, timeline = await watch([client], der, test_pki, revoke_by_sql)
    assert_never_good_after(committed, timeline, 1, try_later=True)
    assert any(a == TRY_LATER for t, _, a in timeline if t > committed), summary([(t, a) for t, _, a in timeline])
    counts = reads(client)
    assert counts["primary", "behind"] > 0, counts
    no_errors(caplog)


async def test_the_listener_holds_the_fence_while_it_delivers_and_raises_it_after(
    replication: tuple[PgServer, PgServer],
) -> None:
    dsn, _ = await replicated_database(*replication)
    fence = Fence()
    seen: list[tuple[str, bool]] = []
    listener = Listener(
        dsn,
        on_notify=lambda payload: seen.append((payload, fence.pending)),
        on_connect=lambda: seen.append(("connect", fence.pending)),
        on_loss=lambda: seen.append(("loss", fence.pending)),
        fence=fence,
    )
    assert fence.pending  # nothing may be read from a standby before the first position is known
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.ever_connected.wait(), 10)
        assert seen == [("connect", True)]
        assert not fence.pending and fence.lsn > 0
        before = fence.lsn
        await asyncio.to_thread(query, dsn, "SELECT ocspd_revoke(%s, %s)", ISSUER, f"{GOOD_SERIAL:x}")
        [(after,)] = await asyncio.to_thread(query, dsn, "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint")

        async def raised() -> bool:
            return len(seen) == 2 and not fence.pending

        await eventually(raised, timeout=5, what="the notification, then the fence raised")
        assert seen[1] == (f"{ISSUER} {GOOD_SERIAL:x}", True)  # pending while the key is dropped
        assert before < fence.lsn <= after  # past the revocation's commit, read after it
        # The channel lost: changes made meanwhile are not notified, so the fence is
        # pending from the loss until the listener is back and has read the position again.
        await asyncio.to_thread(query, dsn, "SELECT pg_terminate_backend(%s)", listener.backend_pid)

        async def back() -> bool:
            return listener.reconnects == 1 and not fence.pending

        await eventually(back, timeout=10, what="the listener back, the fence raised again")
        assert seen[2:] == [("loss", True), ("connect", True)], seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_without_read_dsn_nothing_is_fenced(ocspd_client: AppClient, db_pki: TestPki) -> None:
    [client] = await start_replicas(ocspd_client, db_pki, n=1)
    store = client.app[STORE]
    assert store.reader is None
    assert client.app[LISTENER]._fence is None  # no WAL-position query on the LISTEN connection
    der = request_der(leaf(db_pki, "good"), db_pki.ca.cert)
    assert await status_of(client, der, db_pki) == Status.GOOD
    assert set(reads(client).values()) == {0.0}


def test_read_dsn_is_configured_like_dsn(tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path / "pki", database="host=/nowhere dbname=ocspd")
    assert test_pki.config().database is not None
    assert test_pki.config().database.read_dsn == ""  # type: ignore[union-attr]
    config = test_pki.config(OCSPD_DATABASE_READ_DSN="postgresql://ocspd:s3cret@standby/ocspd")
    assert config.database is not None and config.database.read_dsn.endswith("@standby/ocspd")
    dumped = dump_config(config)
    assert 'read_dsn = "postgresql://ocspd:***@standby/ocspd"' in dumped and "s3cret" not in dumped
    with pytest.raises(StoreError, match=r"^\[database\] read_dsn: "):
        Store(config.database.dsn, read_dsn="host=standby port=5432 = oops")
    with pytest.raises(ConfigError, match="read_dsn"):
        test_pki.config(OCSPD_DATABASE_READ_DSNN="x")


async def in_set(client: TestClient[Any, Any]) -> tuple[bool, float | None, Readiness]:
    """Whether the replica uses its read_dsn, the lag metric, and its readiness."""
    verdict = await app_readiness(client.app)  # brings the gauges up to date too
    registry = client.app[METRICS].registry
    in_use = registry.get_sample_value("ocspd_read_target_in_use", {"target": "read_dsn"})
    lag = registry.get_sample_value("ocspd_read_target_lag_seconds", {"target": "read_dsn"})
    return in_use == 1.0, lag, verdict


async def missed(client: TestClient[Any, Any], der: bytes, test_pki: TestPki) -> Answer:
    """The answer to ``der`` read from PostgreSQL (the memory tier emptied first)."""
    client.app[RESPONDER].memory.clear()
    return await status_of(client, der, test_pki)


async def test_a_standby_stopped_then_started_moves_reads_to_the_primary_and_back(
    replication: tuple[PgServer, PgServer], ocspd_client: AppClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    primary, standby = replication
    assert standby.control is not None
    dsn, standby_dsn = await replicated_database(primary, standby)
    test_pki = build_pki(tmp_path / "pki", database=dsn)
    [client] = await start_replicas(ocspd_client, test_pki, n=1, env={"OCSPD_DATABASE_READ_DSN": standby_dsn})
    der = request_der(leaf(test_pki, "good"), test_pki.ca.cert)

    async def using_the_standby() -> bool:
        in_use, lag, verdict = await in_set(client)
        return in_use and lag is not None and lag <= 5 and "read_dsn: in use" in verdict.text()

    await eventually(using_the_standby, what="the standby in the read set")
    await eventually(lambda: _fresh_read(client, der, test_pki), what="a read served by the standby")
    await asyncio.to_thread(standby.control.stop, "fast")
    try:

        async def out_of_the_set() -> bool:
            in_use, lag, verdict = await in_set(client)
            return not in_use and lag is not None and math.isnan(lag) and "read_dsn: down" in verdict.text()

        await eventually(out_of_the_set, what="the stopped standby out of the read set")
        _, _, verdict = await in_set(client)
        assert verdict.ready and verdict.degraded, verdict.text()
        before = reads(client)
        for _ in range(3):
            assert await missed(client, der, test_pki) == Status.GOOD  # from the primary
        after = reads(client)
        assert after["primary", "down"] >= before["primary", "down"] + 3, (before, after)
        assert after["read_dsn", "fresh"] == before["read_dsn", "fresh"]
    finally:
        await asyncio.to_thread(standby.control.start)
    await eventually(using_the_standby, timeout=30, what="the restarted standby back in the read set")
    _, _, verdict = await in_set(client)
    assert verdict.ready and not verdict.degraded, verdict.text()
    await eventually(lambda: _fresh_read(client, der, test_pki), what="reads from the standby again")
    no_errors(caplog)


async def test_a_standby_lagging_past_read_max_lag_leaves_the_read_set_until_it_catches_up(
    replication: tuple[PgServer, PgServer], ocspd_client: AppClient, tmp_path: Path
) -> None:
    """The standby applies commits APPLY_DELAY late: with a stream of commits on the primary it
    is that far behind, more than a read_max_lag of half of it."""
    dsn, standby_dsn = await replicated_database(*replication)
    test_pki = build_pki(tmp_path / "pki", database=dsn)
    env = {"OCSPD_DATABASE_READ_DSN": standby_dsn, "OCSPD_DATABASE_READ_MAX_LAG": f"{APPLY_DELAY * 500:.0f}ms"}
    [client] = await start_replicas(ocspd_client, test_pki, n=1, env=env)
    der = request_der(leaf(test_pki, "good"), test_pki.ca.cert)
    await eventually(lambda: _fresh_read(client, der, test_pki), what="a read served by the standby")
    stop = asyncio.Event()

    async def commits() -> None:
        serial = 0x5000
        while not stop.is_set():
            await asyncio.to_thread(query, dsn, "SELECT ocspd_add_certificate(%s, %s)", ISSUER, f"{serial:x}")
            serial += 1
            await asyncio.sleep(0.05)

    writer = asyncio.create_task(commits())
    try:

        async def lagging() -> bool:
            in_use, lag, verdict = await in_set(client)
            return not in_use and lag is not None and lag > APPLY_DELAY / 2 and "out of the read set" in verdict.text()

        await eventually(lagging, what="the lagging standby out of the read set")
        before = reads(client)
        assert await missed(client, der, test_pki) == Status.GOOD
        assert reads(client)["primary", "lagging"] == before["primary", "lagging"] + 1
    finally:
        stop.set()
        await writer

    async def caught_up() -> bool:
        in_use, lag, _ = await in_set(client)
        return in_use and lag is not None and lag <= APPLY_DELAY / 2

    await eventually(caught_up, what="the standby back once it caught up")
    await eventually(lambda: _fresh_read(client, der, test_pki), what="reads from the standby again")


async def _fresh_read(client: TestClient[Any, Any], der: bytes, test_pki: TestPki) -> bool:
    """A miss answered good from the standby (the fence admitted its read)."""
    before = reads(client)["read_dsn", "fresh"]
    assert await missed(client, der, test_pki) == Status.GOOD
    return reads(client)["read_dsn", "fresh"] > before


async def test_writes_are_never_sent_to_a_standby_named_as_dsn(
    replication: tuple[PgServer, PgServer], ocspd_client: AppClient, tmp_path: Path
) -> None:
    """``dsn`` on the standby by mistake: libpq refuses it for writes (``target_session_attrs``), so
    the CLI says so in one line and the responder is not ready, instead of a failed write per miss."""
    _, standby_dsn = await replicated_database(*replication)
    test_pki = build_pki(tmp_path / "pki", database=standby_dsn)
    result = await ocspd(test_pki, *revoke_args(GOOD_SERIAL, "keyCompromise"))
    assert_refused(result, "database unavailable", "read-only")
    client = await ocspd_client(test_pki)
    verdict = await app_readiness(client.app)
    assert not verdict.ready and "read-only" in verdict.text(), verdict.text()
    der = request_der(leaf(test_pki, "good"), test_pki.ca.cert)
    assert await status_of(client, der, test_pki) == TRY_LATER
