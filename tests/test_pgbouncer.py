"""PgBouncer in transaction mode in front of ``dsn`` (issue 13): what works, and what is refused
with a line that says what to do.

The replica tests run through PgBouncer too (tests/test_replicas.py, ``db_pki``'s
``pgbouncer`` case). Here: the session settings ocspd would send in the startup
packet (PgBouncer 1.18 refuses the connection), ``db migrate``'s session advisory
lock and LISTEN, which need a direct connection; and that the pool really is
PgBouncer's (its backends are not the ones the connections were told of).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import psycopg2.extensions
import pytest
from cryptography.x509 import ocsp

from ocspd.app import STORE, app_readiness
from ocspd.protocol import TRY_LATER
from ocspd.store.connector import POOLER_HINT, through_pooler
from tests.conftest import AppClient, add_status_rows, pki_through_pgbouncer
from tests.helpers import (
    assert_ok,
    assert_refused,
    build_pki,
    eventually,
    ocspd,
    query,
    request_der,
    status_of,
)
from tests.pg import PgBouncer, PgServer

Status = ocsp.OCSPCertStatus


def dbname(dsn: str) -> str:
    return str(psycopg2.extensions.parse_dsn(dsn)["dbname"])


async def test_the_request_path_through_pgbouncer_runs_on_pooled_backends(
    ocspd_client: AppClient, pg_dsn: str, pg_bouncer: PgBouncer, tmp_path: Path
) -> None:
    test_pki = pki_through_pgbouncer(tmp_path / "pki", pg_dsn, pg_bouncer)
    add_status_rows(pg_dsn)
    client = await ocspd_client(test_pki)
    for name, expected in (("good", Status.GOOD), ("revoked", Status.REVOKED)):
        der = request_der(test_pki.leaves[name].cert, test_pki.ca.cert)
        assert await status_of(client, der, test_pki) == expected
    store = client.app[STORE]
    assert store.dsn == pg_bouncer.dsn_for(dbname(pg_dsn))
    async with store.connector.cursor() as cur:
        assert await through_pooler(cur.connection)
    # The database's settings stand in for the startup packet's: PgBouncer's backends have them.
    [(lock_timeout, statement_timeout)] = query(
        pg_bouncer.dsn_for(dbname(pg_dsn)),
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')",
    )
    assert (lock_timeout, statement_timeout) == ("1s", "2s")
    verdict = await app_readiness(client.app)
    assert verdict.ready and not verdict.degraded, verdict.text()


async def test_session_timeouts_pgbouncer_refuses_give_try_later_and_readyz_says_what_to_do(
    ocspd_client: AppClient, pg_dsn: str, pg_bouncer: PgBouncer, tmp_path: Path
) -> None:
    """The default lock_timeout and statement_timeout travel in the startup packet's ``options``."""
    extra = f"listen_dsn = {json.dumps(pg_dsn)}\n"
    test_pki = build_pki(tmp_path / "pki", database=pg_bouncer.dsn_for(dbname(pg_dsn)), database_extra=extra)
    add_status_rows(pg_dsn)
    client = await ocspd_client(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    assert await status_of(client, der, test_pki) == TRY_LATER
    verdict = await app_readiness(client.app)
    assert not verdict.ready, verdict.text()
    assert "unsupported startup parameter: options" in verdict.text() and POOLER_HINT in verdict.text()


async def test_db_migrate_through_pgbouncer_is_refused_in_one_line_and_runs_on_a_direct_listen_dsn(
    pg_server: PgServer, pg_bouncer: PgBouncer, tmp_path: Path
) -> None:
    name = pg_server.create_database()
    try:
        test_pki = build_pki(tmp_path / "pki", database=pg_bouncer.dsn_for(name))
        refused = await ocspd(test_pki, "db", "migrate")
        assert_refused(refused, "needs a direct connection to the primary", "listen_dsn", "pooler")
        applied = await ocspd(test_pki, "db", "migrate", env={"OCSPD_DATABASE_LISTEN_DSN": pg_server.dsn_for(name)})
        assert_ok(applied, "applied")
    finally:
        pg_server.drop_database(name)


async def test_a_listen_dsn_through_pgbouncer_keeps_the_listener_down_and_says_why(
    ocspd_client: AppClient, pg_dsn: str, pg_bouncer: PgBouncer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ocspd.listener")
    test_pki = pki_through_pgbouncer(tmp_path / "pki", pg_dsn, pg_bouncer)
    add_status_rows(pg_dsn)
    client = await ocspd_client(test_pki, env={"OCSPD_DATABASE_LISTEN_DSN": pg_bouncer.dsn_for(dbname(pg_dsn))})

    async def said_why() -> bool:
        return any("LISTEN needs a direct connection" in str(vars(r).get("ocspd_fields")) for r in caplog.records)

    await eventually(said_why, what="the listener's reason")
    verdict = await app_readiness(client.app)
    assert verdict.ready and verdict.degraded, verdict.text()
    # Without the channel, answers come from PostgreSQL (through PgBouncer), never from memory.
    der = request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert)
    assert await status_of(client, der, test_pki) == Status.REVOKED
