"""Each bench/ script runs for about a second with tiny settings and writes valid JSON.

No timing is asserted (SPEC §7: figures come from bench/, never from tests).
Results go to a temporary directory ($OCSPD_BENCH_RESULTS), not bench/results/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg import PgServer

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def run_script(name: str, results: Path, *args: str, result: str | None = None) -> dict[str, object]:
    env = {**os.environ, "OCSPD_BENCH_RESULTS": str(results)}
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    data = json.loads((results / f"{result or name}.json").read_text())
    assert isinstance(data, dict)
    assert data["rows"], data
    for row in data["rows"]:
        assert set(row) >= {"measure", "ocspd", "baseline", "value", "target", "met"}
    assert data["machine"]["nproc"] >= 1
    return data


def test_help_of_every_script() -> None:
    for script in sorted(BENCH.glob("*.py")):
        if script.name in ("common.py", "load.py"):  # helper modules, not scripts
            continue
        done = subprocess.run(
            [sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, (script.name, done.stderr)
        assert "usage:" in done.stdout


def test_hit_path_with_the_python_client(tmp_path: Path) -> None:
    data = run_script(
        "hit_path", tmp_path, "--duration", "1", "--rounds", "1", "--methods", "GET", "--no-uvloop",
        "--connections", "4", "--client", "python",
    )  # fmt: skip
    assert data["details"]["client"] == "python"  # type: ignore[index]


@needs_openssl
def test_vs_openssl(tmp_path: Path) -> None:
    run_script("vs_openssl", tmp_path, "--duration", "1", "--rounds", "1", "--key-type", "p256", "--connections", "4")


def test_memory(tmp_path: Path) -> None:
    data = run_script("memory", tmp_path, "--entries", "300")
    assert data["details"]["entries"] == 300  # type: ignore[index]


def test_multi_certid(tmp_path: Path) -> None:
    data = run_script("multi_certid", tmp_path, "--rounds", "1", "--seconds", "0.05", "--listed", "200")
    assert data["details"]["certids"] == 16  # type: ignore[index]


def test_cold_miss(tmp_path: Path, pg_server: PgServer) -> None:
    run_script(
        "cold_miss", tmp_path, "--duration", "1", "--runs", "1", "--sign-seconds", "0.1", "--connections", "4",
        "--dsn", pg_server.dsn,
    )  # fmt: skip


def test_revocation(tmp_path: Path, pg_server: PgServer) -> None:
    data = run_script(
        "revocation", tmp_path, "--revocations", "2", "--rate", "50", "--connections", "2", "--dsn", pg_server.dsn
    )
    assert len(data["details"]["revocations"]) == 2  # type: ignore[index]


def test_scale_and_run_all(tmp_path: Path, pg_server: PgServer) -> None:
    run_script(
        "scale", tmp_path, "--rows", "2000", "--small", "1000", "--requests", "40", "--warmup", "5",
        "--dsn", pg_server.dsn,
    )  # fmt: skip
    data = run_script("run_all", tmp_path, "--only", "memory", "--entries", "200", result="all")
    assert data["details"]["scripts"]["memory"]["exit_status"] == 0  # type: ignore[index]


def test_hsm(tmp_path: Path, pg_server: PgServer) -> None:
    from tests.softhsm import skip_without_softhsm

    skip_without_softhsm()
    # One session: SoftHSM2, initialised by python-pkcs11 without locking, is not safe with concurrent
    # sessions (the default 2 can fail or hang a signature), and this test only checks that the script runs.
    data = run_script(
        "hsm", tmp_path, "--key-types", "p256", "--duration", "1", "--runs", "1", "--rows", "50",
        "--sign-seconds", "0.1", "--connections", "4", "--sessions", "1", "--timeout", "30", "--dsn", pg_server.dsn,
    )  # fmt: skip
    assert data["details"]["key_types"] == ["p256"]  # type: ignore[index]
    assert {r["mode"] for r in data["details"]["per_key"]["p256"]["sign"]} == {"file", "token"}  # type: ignore[index]
