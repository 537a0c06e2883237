"""README blocks that are recipes, run as written (a README that lies is a bug)."""

from __future__ import annotations

import psycopg2

from tests.helpers import readme_block


def test_sql_for_cas_runs_as_written_and_leaves_what_it_says(pg_dsn: str) -> None:
    sql = readme_block("### SQL for CAs that write to the database directly", "sql")
    conn = psycopg2.connect(pg_dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
            cur.execute(
                "SELECT serial, status, reason FROM ocspd_certificates WHERE issuer_id = 'root-2026' ORDER BY serial"
            )
            rows = cur.fetchall()
    finally:
        conn.close()
    assert rows == [
        ("1a2b3c", "revoked", "cACompromise"),  # revoked, then amended
        ("1a2b3d", "revoked", "superseded"),  # plain SQL
        ("1a2b3e", "good", None),  # held, then released
    ]
