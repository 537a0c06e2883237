"""PgBouncer in transaction mode in front of ``dsn`` (issue 13): what works, and what is refused
with a line that says what to do.

The replica tests run through PgBouncer too (tests/test_replicas.py, ``db_pki``'s
``pgbouncer`` case). Here: the session settings ocspd would send in the startup
packet (PgBouncer 1.18 refuses the connection), ``db migrate``'s session advisory
lock and LISTEN, which need a direct connection; and that the pool really is
PgBouncer's (its backends are not the ones the connections were told of).
"""

from __future__ import annotations

import configparser
import json
import logging
import re
from pathlib import Path

import psycopg2.extensions
import pytest
from cryptography.x509 import ocsp
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg2.extensions import parse_dsn

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
    readme_block,
    request_der,
    status_of,
)
from tests.pg import PgBouncer, PgServer, pgbouncer

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


RECIPE_ROLE = "ocspd_recipe"  # the README's role "ocspd", in the test cluster


def _readme_dsns(block: str, where: dict[str, tuple[str, int]], dbname: str) -> str:
    """The README's ``[database]`` block with each DSN's host and port swapped for the test's
    (``where``: README host -> (socket directory, port)), and its database."""

    def swap(match: re.Match[str]) -> str:
        params = conninfo_to_dict(match[2])
        host, port = where[str(params["host"])]
        params.update(host=host, port=str(port), dbname=dbname, user=RECIPE_ROLE)
        return f"{match[1]}{json.dumps(make_conninfo(**{k: str(v) for k, v in params.items()}))}"

    return re.sub(r'^(\w*dsn = )"([^"]*)"', swap, block, flags=re.M)


async def test_the_readme_pgbouncer_recipe_works_as_written(
    ocspd_client: AppClient, pg_server: PgServer, pg_dsn: str, tmp_path: Path
) -> None:
    """The "Scaling out" blocks: PgBouncer's settings, the role's timeouts, ocspd's [database]."""
    ini = configparser.ConfigParser()
    ini.read_string(readme_block("#### PgBouncer", "ini"))
    settings = {k: v for k, v in ini["pgbouncer"].items() if k != "listen_port"}
    assert settings["pool_mode"] == "transaction"
    name = dbname(pg_dsn)
    query(pg_server.dsn, f"DO $$BEGIN CREATE ROLE {RECIPE_ROLE} LOGIN; EXCEPTION WHEN duplicate_object THEN END$$")
    query(pg_dsn, f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {RECIPE_ROLE}")
    query(pg_dsn, f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {RECIPE_ROLE}")
    sql = readme_block("On the primary, as a superuser:", "sql")
    query(pg_dsn, re.sub(r"\bROLE ocspd\b", f"ROLE {RECIPE_ROLE}", sql))
    add_status_rows(pg_dsn)
    try:
        with pgbouncer(pg_server, users=(RECIPE_ROLE,), settings=settings) as bouncer:
            bouncer_dir, bouncer_port = parse_dsn(bouncer.dsn)["host"], int(parse_dsn(bouncer.dsn)["port"])
            assert pg_server.socket_dir is not None and pg_server.port is not None
            direct = (pg_server.socket_dir, pg_server.port)
            where = {"pgbouncer.internal": (bouncer_dir, bouncer_port), "db1.internal": direct, "db2.internal": direct}
            block = _readme_dsns(readme_block("And in `ocspd.toml`:", "toml"), where, name)
            test_pki = build_pki(tmp_path / "pki", database="unused")
            config = test_pki.config_path.read_text()
            test_pki.config_path.write_text(config.replace('[database]\ndsn = "unused"\n', block))
            client = await ocspd_client(test_pki)
            for cert, expected in (("good", Status.GOOD), ("revoked", Status.REVOKED)):
                der = request_der(test_pki.leaves[cert].cert, test_pki.ca.cert)
                assert await status_of(client, der, test_pki) == expected
            async with client.app[STORE].connector.cursor() as cur:
                assert await through_pooler(cur.connection)
                await cur.execute("SELECT current_setting('lock_timeout'), current_setting('statement_timeout')")
                assert await cur.fetchone() == ("1s", "2s")
            verdict = await app_readiness(client.app)
            assert verdict.ready and not verdict.degraded, verdict.text()
            await client.close()
    finally:
        query(pg_server.dsn, f"ALTER ROLE {RECIPE_ROLE} RESET ALL")
