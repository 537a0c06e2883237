"""Failover (issue 13): the primary stops, its hot standby is promoted, and two replicas whose
``dsn`` and ``listen_dsn`` name both hosts (a multi-host DSN: ocspd adds
``target_session_attrs=read-write``, so libpq takes whichever is the primary) and
whose ``read_dsn`` is the standby follow by themselves. No "good" for a certificate
revoked before the switch, at any time; a revocation on the new primary reaches both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import psycopg2.extensions
import pytest

from ocspd.app import LISTENER
from ocspd.protocol import TRY_LATER
from tests.conftest import AppClient
from tests.helpers import (
    GOOD_SERIAL,
    ISSUER,
    UNISSUED_SERIAL,
    build_pki,
    eventually,
    ocspd,
    query,
    request_der,
    revoke_args,
    start_replicas,
    status_of,
)
from tests.pg import PgServer, hot_standby, throwaway_cluster
from tests.replication import Status, Timeline, assert_never_good_after, replicated_database, summary, watch

SWITCH_WITHIN = 30.0  # seconds from the primary's stop until both replicas answer from the new one


@pytest.fixture
def pair() -> Iterator[tuple[PgServer, PgServer]]:
    """A throwaway primary and a hot standby of it replaying at once (this test's own: it promotes it)."""
    try:
        with throwaway_cluster() as primary, hot_standby(primary, apply_delay="0") as standby:
            yield primary, standby
    except RuntimeError as exc:
        if "pg_basebackup" in str(exc):
            pytest.skip("pg_basebackup is not installed: no hot standby to fail over to")
        raise


def both_hosts(primary: PgServer, standby: PgServer, dbname: str) -> str:
    """The standby first: libpq must pass it over while it is one (``target_session_attrs``)."""
    return (
        f"host={standby.socket_dir},{primary.socket_dir} port={standby.port},{primary.port} "
        f"user=postgres dbname={dbname} connect_timeout=2"
    )


async def test_after_failover_to_the_promoted_standby_no_revoked_certificate_is_good(
    pair: tuple[PgServer, PgServer], ocspd_client: AppClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    primary, standby = pair
    assert primary.control is not None and standby.control is not None
    dsn, standby_dsn = await replicated_database(primary, standby)
    dbname = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    test_pki = build_pki(tmp_path / "pki", database=both_hosts(primary, standby, dbname))
    clients = await start_replicas(ocspd_client, test_pki, env={"OCSPD_DATABASE_READ_DSN": standby_dsn})
    before, after = (request_der(test_pki.leaves[name].cert, test_pki.ca.cert) for name in ("good", "unissued"))

    async def revoke(serial: int) -> None:
        result = await ocspd(test_pki, *revoke_args(serial, "keyCompromise"))
        assert result.returncode == 0, result.stderr

    # Revoked before the switch, and replayed by the standby (streaming is asynchronous:
    # what the standby never received is lost with the primary, whatever ocspd does).
    committed, timeline = await watch(clients, before, test_pki, lambda: revoke(GOOD_SERIAL))
    assert_never_good_after(committed, timeline, len(clients), try_later=False)

    async def standby_has_it() -> bool:
        rows = await asyncio.to_thread(
            query, standby_dsn, "SELECT status FROM ocspd_certificates WHERE serial = %s", f"{GOOD_SERIAL:x}"
        )
        return bool(rows and rows[0][0] == "revoked")

    await eventually(standby_has_it, what="the revocation on the standby")
    for client in clients:
        assert await status_of(client, after, test_pki) == Status.GOOD

    # The switch: the primary dies, the standby is promoted; answers watched throughout.
    loop = asyncio.get_running_loop()
    switch: Timeline = []

    async def answers() -> tuple[list[Status | bytes], list[Status | bytes]]:
        got = (
            [await status_of(c, before, test_pki) for c in clients],
            [await status_of(c, after, test_pki) for c in clients],
        )
        for n, answer in enumerate(got[0]):
            switch.append((loop.time(), n, answer))
        return got

    await asyncio.to_thread(primary.control.stop, "immediate")
    await answers()
    await asyncio.to_thread(standby.control.promote)

    async def switched() -> bool:
        revoked, good = await answers()
        listening = all(c.app[LISTENER].connected for c in clients)
        return listening and all(a == Status.REVOKED for a in revoked) and all(a == Status.GOOD for a in good)

    await eventually(switched, timeout=SWITCH_WITHIN, what="both replicas answering from the promoted standby")
    assert all(a in (Status.REVOKED, TRY_LATER) for _, _, a in switch), summary([(t, a) for t, _, a in switch])

    # Revoked on the new primary (through the same multi-host DSN): NOTIFY from it reaches both.
    committed, timeline = await watch(clients, after, test_pki, lambda: revoke(UNISSUED_SERIAL))
    assert_never_good_after(committed, timeline, len(clients), try_later=False)
    for client in clients:
        assert await status_of(client, before, test_pki) == Status.REVOKED
    rows = query(standby_dsn, "SELECT count(*) FROM ocspd_certificates WHERE issuer_id = %s", ISSUER)
    assert rows[0][0] == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
