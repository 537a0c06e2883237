"""The README's PostgreSQL set-up block, run as written on a stock-like server (issue 14).

A throwaway cluster of the installed binaries stands for Debian's server. The
commands are the README's, line by line; what the sandbox changes, and only that:

- ``sudo -u postgres <command>`` runs ``<command>`` as the cluster's superuser
  (``postgres``: as that OS user when we are root), with PGHOST/PGPORT naming
  the cluster;
- ``sudo -u ocspd /opt/ocspd/.venv/bin/ocspd <arguments>`` runs this checkout's
  ``ocspd`` with the same PGHOST/PGPORT: the cluster trusts local connections, so
  the role the DSN names (``ocspd``) is who connects, as peer authentication
  makes the ``ocspd`` account on a stock server;
- ``/etc/ocspd/ocspd.toml`` is a config of this test with the README's example
  DSN and an issuer ``root-2026``; ``/srv/ca/index.txt`` an index.txt of it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import OCSPD, assert_refused, build_pki, query, readme_block, run
from tests.pg import PgServer, _as_server_user, throwaway_cluster

HEADING = "## PostgreSQL: many replicas, one truth"
README_DSN = "postgresql://ocspd@/ocspd"  # README's [database] example and this block's prose
INSTALLED = "/opt/ocspd/.venv/bin/ocspd"


def readme_commands() -> list[list[str]]:
    """The block's commands, each a word list (comments and blank lines dropped)."""
    return [shlex.split(line, comments=True) for line in readme_block(HEADING, "sh").splitlines() if line.strip()]


def sandboxed(words: list[str], config: Path, index: Path) -> list[str]:
    """One README command as this sandbox runs it (see the module docstring)."""
    if words[:3] == ["sudo", "-u", "postgres"]:
        return _as_server_user(words[3:])
    assert words[:4] == ["sudo", "-u", "ocspd", INSTALLED], words
    paths = {"/etc/ocspd/ocspd.toml": str(config), "/srv/ca/index.txt": str(index)}
    return [*OCSPD, *(paths.get(word, word) for word in words[4:])]


@pytest.fixture
def server() -> Iterator[PgServer]:
    """A throwaway cluster of this test's own (it creates roles), skipped without server binaries."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(throwaway_cluster())
        except RuntimeError as exc:
            pytest.skip(f"no PostgreSQL server binaries: {exc}")
        yield cluster


def test_a_database_the_role_does_not_own_is_refused_with_the_fix(server: PgServer, tmp_path: Path) -> None:
    """``createdb ocspd`` without ``-O``: PostgreSQL 15 lets only the owner create in ``public``."""
    server.execute("CREATE ROLE ocspd LOGIN")
    server.execute("CREATE DATABASE ocspd")
    test_pki = build_pki(tmp_path / "pki", database=server.dsn_for("ocspd").replace("user=postgres", "user=ocspd"))
    assert_refused(run("db", "migrate", "--config", str(test_pki.config_path)), "permission denied", "createdb -O")


def test_the_postgres_set_up_runs_as_written_as_the_ocspd_role(server: PgServer, tmp_path: Path) -> None:
    assert server.socket_dir is not None and server.port is not None
    test_pki = build_pki(tmp_path / "pki", issuer_id="root-2026", database=README_DSN)
    assert f'dsn = "{README_DSN}"' in Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
    index = tmp_path / "index.txt"
    index.write_text(
        "".join(f"V\t300101000000Z\t\t{0x1000 + i:X}\tunknown\t/CN=c{i}\n" for i in range(5))
        + "R\t300101000000Z\t260101000000Z,keyCompromise\t2000\tunknown\t/CN=r\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OCSPD_", "PG"))},
        "PGHOST": server.socket_dir,
        "PGPORT": str(server.port),
    }
    commands = readme_commands()
    assert [c[:3] for c in commands[:2]] == [["sudo", "-u", "postgres"]] * 2
    for words in commands:
        done = subprocess.run(
            sandboxed(words, test_pki.config_path, index), capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, (" ".join(words), done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
    ocspd_db = server.dsn_for("ocspd")
    [(owner,)] = query(ocspd_db, "SELECT tableowner FROM pg_tables WHERE tablename = 'ocspd_certificates'")
    assert owner == "ocspd"  # migrated as the role, not as a superuser
    [(superuser,)] = query(ocspd_db, "SELECT rolsuper FROM pg_roles WHERE rolname = 'ocspd'")
    assert superuser is False
    statuses = dict(query(ocspd_db, "SELECT status, count(*) FROM ocspd_certificates GROUP BY status"))
    assert statuses == {"good": 5, "revoked": 1}
    [(stored,)] = query(ocspd_db, "SELECT count(*) FROM ocspd_responses")
    assert stored >= 6  # presign signed every certificate
