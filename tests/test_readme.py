"""README blocks that are recipes, run as written (a README that lies is a bug)."""

from __future__ import annotations

import re

import psycopg2

from tests.helpers import README, readme_block


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


SHELL_BLOCK = re.compile(r"^[ \t]*```sh\n", re.MULTILINE)
MARKER = re.compile(r"^\s*<!-- (run by (?P<files>.+?)|not run by the tests: (?P<reason>.+?)) -->\s*$")


def shell_blocks() -> list[tuple[int, str]]:
    """(line number, the line before it that is not blank) of every ```sh block of the README."""
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for match in SHELL_BLOCK.finditer(text):
        number = text.count("\n", 0, match.start())
        before = next((line for line in reversed(lines[:number]) if line.strip()), "")
        found.append((number + 1, before))
    return found


def test_every_shell_block_of_the_readme_is_run_by_a_test_or_says_why_not() -> None:
    """A recipe nobody runs rots: each block names the test that runs it, or the reason none can."""
    blocks = shell_blocks()
    assert len(blocks) >= 6
    for number, before in blocks:
        marker = MARKER.match(before)
        assert marker, (
            f"README.md line {number}: no <!-- run by ... --> or <!-- not run by the tests: ... --> before it"
        )
        if marker["files"]:
            named = re.findall(r"(?:tests/[\w/]+\.py|\.ci/run)", marker["files"])
            assert named, (number, before)
            for name in named:
                path = README.parent / name
                assert path.exists(), (number, name)
                assert "README" in path.read_text(encoding="utf-8"), f"{name} does not read the README"


def test_the_readme_test_command_is_what_ci_runs() -> None:
    block = readme_block("## The two commands", "sh")
    assert [line.split()[0] for line in block.splitlines()] == ["scripts/demo.sh", "scripts/test.sh"]
    assert "exec scripts/test.sh" in (README.parent / ".ci" / "run").read_text(encoding="utf-8")
