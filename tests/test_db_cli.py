"""The database commands of the CLI against a real PostgreSQL (SPEC §4)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ocspd import importer, pki
from ocspd.config import load_config
from tests.helpers import GOOD_SERIAL, REVOKED_SERIAL, UNISSUED_SERIAL, TestPki, assert_one_line_error, query, run
from tests.pg import PgServer


def status_json(test_pki: TestPki, serial: str) -> dict[str, object]:
    result = run("status", "--config", str(test_pki.config_path), "--issuer", "test-ca", "--serial", serial, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_status_reports_good_revoked_and_unknown(db_pki: TestPki) -> None:
    assert status_json(db_pki, f"{GOOD_SERIAL:x}")["status"] == "good"
    revoked = status_json(db_pki, f"0x{REVOKED_SERIAL:X}")
    assert revoked["status"] == "revoked"
    assert revoked["reason"] == "keyCompromise"
    assert status_json(db_pki, f"{UNISSUED_SERIAL:x}")["status"] == "unknown"
    text = run("status", "--config", str(db_pki.config_path), "--issuer", "test-ca", "--serial", "10:02")
    assert "status: revoked" in text.stdout


def test_cert_add_then_revoke_with_reason_and_time(db_pki: TestPki) -> None:
    cfg = str(db_pki.config_path)
    added = run(
        "cert",
        "add",
        "--config",
        cfg,
        "--issuer",
        "test-ca",
        "--serial",
        "00:AB:CD",
        "--not-after",
        "2030-01-01T00:00:00Z",
    )
    assert added.returncode == 0, added.stderr
    assert status_json(db_pki, "abcd")["status"] == "good"
    revoked = run(
        "revoke",
        "--config",
        cfg,
        "--issuer",
        "test-ca",
        "--serial",
        "ABCD",
        "--reason",
        "cessationofoperation",
        "--at",
        "2026-05-01T12:00:00+02:00",
    )
    assert revoked.returncode == 0, revoked.stderr
    info = status_json(db_pki, "0xabcd")
    assert info["status"] == "revoked"
    assert info["reason"] == "cessationOfOperation"
    assert dt.datetime.fromisoformat(str(info["revoked_at"])) == dt.datetime(2026, 5, 1, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("revoke", "--issuer", "nope", "--serial", "1"), "--issuer: 'nope' is not configured"),
        (("revoke", "--issuer", "test-ca", "--serial", "xyz"), "--serial: 'xyz' is not a hex serial"),
        (("revoke", "--issuer", "test-ca", "--serial", "1", "--reason", "stolen"), "--reason: 'stolen'"),
        (("revoke", "--issuer", "test-ca", "--serial", "1", "--at", "yesterday"), "--at: 'yesterday'"),
        (("revoke", "--issuer", "test-ca", "--serial", "1", "--at", "2026-01-01T00:00:00"), "no UTC offset"),
        (("cert", "add", "--issuer", "test-ca", "--serial", "1" * 41), "longer than 20 octets"),
        (("status", "--issuer", "test-ca"), "--serial"),
    ],
    ids=["unknown-issuer", "bad-serial", "bad-reason", "bad-time", "naive-time", "long-serial", "missing-serial"],
)
def test_bad_input_is_one_line_exit_2(db_pki: TestPki, args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(run(*args, "--config", str(db_pki.config_path)), fragment)


def test_database_command_without_database_is_one_line_exit_2(test_pki: TestPki) -> None:
    result = run("db", "migrate", "--config", str(test_pki.config_path))
    assert_one_line_error(result, "[database]")


def test_database_down_is_one_line_not_a_traceback(db_pki: TestPki) -> None:
    env = {"OCSPD_DATABASE_DSN": "host=127.0.0.1 port=1 user=postgres dbname=x connect_timeout=2"}
    result = run("revoke", "--config", str(db_pki.config_path), "--issuer", "test-ca", "--serial", "1", env=env)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "database unavailable" in result.stderr


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        (("db", "migrate"), "OCSPD_DATABASE_DSN"),
        (("serve",), "OCSPD_DATABASE_DSN"),
        (("serve",), "OCSPD_DATABASE_LISTEN_DSN"),
    ],
    ids=["migrate-dsn", "serve-dsn", "serve-listen-dsn"],
)
def test_a_dsn_libpq_cannot_read_is_one_line_naming_the_key(
    db_pki: TestPki, command: tuple[str, ...], variable: str
) -> None:
    result = run(*command, "--config", str(db_pki.config_path), env={variable: "dbname='unterminated"}, timeout=30)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    key = "listen_dsn" if "LISTEN" in variable else "dsn"
    assert [line for line in lines if f"[database] {key}: unterminated quoted string" in line], result.stderr


def test_import_pem_and_der_certificates(db_pki: TestPki, tmp_path: Path) -> None:
    leaves = [pki.make_leaf(db_pki.ca, 0x5000 + i, f"import{i}.example.test").cert for i in range(3)]
    bundle = tmp_path / "bundle.pem"
    pki.write_cert(bundle, *leaves[:2])
    der = tmp_path / "one.der"
    from cryptography.hazmat.primitives import serialization

    der.write_bytes(leaves[2].public_bytes(serialization.Encoding.DER))
    result = run("cert", "import", "--config", str(db_pki.config_path), "--issuer", "test-ca", str(bundle), str(der))
    assert result.returncode == 0, result.stderr
    assert "imported 3/3" in result.stderr
    for leaf in leaves:
        assert status_json(db_pki, f"{leaf.serial_number:x}")["status"] == "good"


def test_import_reports_reading_files_from_the_first_second_and_leaves_small_imports_unanalysed(
    db_pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for i in range(4):
        files.append(tmp_path / f"leaf{i}.pem")
        pki.write_cert(files[-1], pki.make_leaf(db_pki.ca, 0x6000 + i, f"read{i}.example.test").cert)
    monkeypatch.setattr(importer, "PROGRESS_SECONDS", 0.0)  # every file: a real import says it each second
    assert importer.cert_import(load_config(db_pki.config_path, environ={}), "test-ca", files) == 0
    err = capsys.readouterr().err
    assert [line.split(" (")[0] for line in err.splitlines() if line.startswith("read ")] == [
        "read 1/4 files",
        "read 2/4 files",
        "read 3/4 files",
    ]
    assert "imported 4/4" in err and "analysed the table" not in err


def test_import_refuses_a_certificate_of_another_ca(db_pki: TestPki, tmp_path: Path) -> None:
    other_ca = pki.make_ca("another CA")
    stray = tmp_path / "stray.pem"
    pki.write_cert(stray, pki.make_leaf(other_ca, 77, "stray.example.test").cert)
    result = run("cert", "import", "--config", str(db_pki.config_path), "--issuer", "test-ca", str(stray))
    assert_one_line_error(result, str(stray), "not issued by")


def test_import_index_txt_with_revocations(db_pki: TestPki, tmp_path: Path) -> None:
    index = tmp_path / "index.txt"
    not_after = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    index.write_text(
        pki.index_line(0x7001, not_after=not_after, subject="/CN=a")
        + "\n"
        + pki.index_line(
            0x7002,
            not_after=not_after,
            subject="/CN=b",
            revoked_at=dt.datetime(2026, 2, 3, tzinfo=dt.UTC),
            reason="superseded",
        )
        + "\n"
        + "garbage line\n"
    )
    result = run("cert", "import", "--config", str(db_pki.config_path), "--issuer", "test-ca", str(index))
    assert result.returncode == 0, result.stderr
    assert "line=3" in result.stderr  # the malformed line is named and skipped
    assert status_json(db_pki, "7001")["status"] == "good"
    revoked = status_json(db_pki, "7002")
    assert revoked["status"] == "revoked" and revoked["reason"] == "superseded"


def test_import_of_100k_index_lines_takes_seconds(db_pki: TestPki, tmp_path: Path, pg_dsn: str) -> None:
    index = tmp_path / "big-index.txt"
    with index.open("w") as f:
        for i in range(100_000):
            flag = "R" if i % 50 == 0 else "V"
            revocation = "260101000000Z,keyCompromise" if flag == "R" else ""
            f.write(f"{flag}\t300101000000Z\t{revocation}\t{0x100000 + i:X}\tunknown\t/CN=c{i}\n")
    started = time.monotonic()
    result = run("cert", "import", "--config", str(db_pki.config_path), "--issuer", "test-ca", str(index), timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "imported 100000/100000" in result.stderr
    # The planner knows the table's size at once (presign runs at full speed straight after).
    assert "analysed the table" in result.stderr
    assert query(pg_dsn, "SELECT reltuples FROM pg_class WHERE relname = 'ocspd_certificates'")[0][0] > 90_000
    print(f"imported 100k certificates in {elapsed:.1f}s")
    assert query(pg_dsn, "SELECT count(*) FROM ocspd_certificates WHERE status = 'revoked'")[0][0] == 2000 + 1


def test_unmigrated_database_names_the_fix(db_pki: TestPki, pg_server: PgServer) -> None:
    name = pg_server.create_database()
    try:
        env = {"OCSPD_DATABASE_DSN": pg_server.dsn_for(name)}
        result = run("status", "--config", str(db_pki.config_path), "--issuer", "test-ca", "--serial", "1", env=env)
        assert result.returncode == 1
        assert "run `ocspd db migrate`" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        pg_server.drop_database(name)


def test_presign_without_issuer_skips_issuers_served_from_index_txt(test_pki: TestPki, pg_dsn: str) -> None:
    result = run("presign", "--config", str(test_pki.config_path), env={"OCSPD_DATABASE_DSN": pg_dsn})
    assert result.returncode == 0, result.stderr
    named = run(
        "presign", "--config", str(test_pki.config_path), "--issuer", "test-ca", env={"OCSPD_DATABASE_DSN": pg_dsn}
    )
    assert_one_line_error(named, "index", "openssl ca -revoke")


def test_status_into_a_closed_pipe_is_no_traceback(db_pki: TestPki) -> None:
    """`ocspd status ... | head -1`: the reader goes away before ocspd writes."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OCSPD_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ocspd",
            "status",
            "--config",
            str(db_pki.config_path),
            "--issuer",
            "test-ca",
            "--serial",
            f"{REVOKED_SERIAL:x}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the interpreter has started
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
