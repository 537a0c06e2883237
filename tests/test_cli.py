"""The command line: check-config errors, serve and demo (SPEC §4)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ocspd import __version__, pki
from tests.helpers import OCSPD, TestPki, assert_one_line_error, build_pki, run


def test_check_config_prints_the_effective_config(test_pki: TestPki) -> None:
    result = run("check-config", "--config", str(test_pki.config_path), env={"OCSPD_SERVER_WORKERS": "3"})
    assert result.returncode == 0, result.stderr
    assert "workers = 3" in result.stdout
    assert "test-ca" in result.stdout


DSNS = {
    "OCSPD_DATABASE_DSN": "host=pgbouncer.internal port=6432 dbname=ocspd user=ocspd password=s3cret",
    "OCSPD_DATABASE_LISTEN_DSN": "postgresql://ocspd:s3cret@db1.internal:5432/ocspd",
    "OCSPD_DATABASE_READ_DSN": "host=db2.internal,db3.internal dbname=ocspd user=ocspd target_session_attrs=standby",
}


def test_check_config_says_what_each_database_dsn_is_for_and_where_it_leads(tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path / "pki", database="dbname=unused")
    result = run("check-config", "--config", str(test_pki.config_path), env=DSNS)
    assert result.returncode == 0, result.stderr
    roles = [line for line in result.stderr.splitlines() if line.startswith("# database ")]
    assert [line.split(" (", 1)[0] for line in roles] == [
        "# database dsn",
        "# database listen_dsn",
        "# database read_dsn",
    ]
    assert roles[0].endswith(": ocspd@pgbouncer.internal:6432/ocspd"), roles[0]
    assert roles[1].endswith(": ocspd@db1.internal:5432/ocspd"), roles[1]
    assert roles[2].endswith(": ocspd@db2.internal:5432,db3.internal:5432/ocspd (standby)"), roles[2]
    assert "read_max_lag 5s" in roles[2]
    assert "s3cret" not in result.stdout + result.stderr


def test_check_config_without_read_dsn_says_reads_use_dsn(tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path / "pki", database="host=db1.internal dbname=ocspd")
    result = run("check-config", "--config", str(test_pki.config_path))
    assert result.returncode == 0, result.stderr
    assert "# database listen_dsn (a direct connection to the primary: LISTEN, db migrate): " in result.stderr
    assert (
        "(= dsn)" in result.stderr and "# database read_dsn: not set (the request path reads from dsn)" in result.stderr
    )


@pytest.mark.parametrize("role", ["DSN", "LISTEN_DSN", "READ_DSN"])
def test_check_config_refuses_a_dsn_libpq_cannot_read_in_one_line(tmp_path: Path, role: str) -> None:
    test_pki = build_pki(tmp_path / "pki", database="dbname=ocspd")
    result = run("check-config", "--config", str(test_pki.config_path), env={f"OCSPD_DATABASE_{role}": "host=x port"})
    assert_one_line_error(result, f"[database] {role.lower()}")


def test_version_is_printed_with_exit_0() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ocspd {__version__}\n"


def test_config_comes_from_ocspd_config_variable(test_pki: TestPki) -> None:
    result = run("check-config", env={"OCSPD_CONFIG": str(test_pki.config_path)})
    assert result.returncode == 0, result.stderr


def edit_config(test_pki: TestPki, old: str, new: str) -> None:
    text = test_pki.config_path.read_text()
    assert old in text
    test_pki.config_path.write_text(text.replace(old, new, 1))


CONFIG_MISTAKES: dict[str, tuple[Callable[[TestPki], None], tuple[str, ...]]] = {
    "unknown-key": (lambda p: edit_config(p, "[responses]\n", '[responses]\nvalidty = "24h"\n'), ("validty",)),
    "wrong-type": (lambda p: edit_config(p, "[server]\n", '[server]\nworkers = "two"\n'), ("server.workers",)),
    "bad-duration": (
        lambda p: edit_config(p, "[responses]\n", '[responses]\nvalidity = "soon"\n'),
        ("responses.validity",),
    ),
    "missing-file": (lambda p: p.ca_path.unlink(), ("ca_cert",)),
    "key-readable-by-others": (lambda p: p.key_path.chmod(0o644), ("responder_key", "chmod 600")),
    "ca-responder-mismatch": (
        lambda p: pki.write_cert(p.ca_path, pki.make_ca("another CA").cert),
        ("responder_cert", "not issued by"),
    ),
    "key-does-not-match-cert": (
        lambda p: pki.write_key(p.key_path, pki.new_key("p256")),
        ("responder_key", "does not match"),
    ),
    "responder-without-ocsp-signing": (
        lambda p: pki.write_cert(
            p.responder_path,  # type: ignore[arg-type]
            pki.make_responder(p.ca, ocsp_signing=False).cert,
        ),
        ("responder_cert", "OCSPSigning"),
    ),
}


@pytest.mark.parametrize("mistake", list(CONFIG_MISTAKES))
def test_config_mistake_is_one_line_naming_the_key_and_file_exit_2(tmp_path: Path, mistake: str) -> None:
    test_pki = build_pki(tmp_path)
    if mistake == "key-does-not-match-cert" or mistake == "responder-without-ocsp-signing":
        # These need the key and the certificate to be of one pair but for the
        # property under test: make the responder again with its own key.
        pass
    breaker, fragments = CONFIG_MISTAKES[mistake]
    breaker(test_pki)
    if mistake == "responder-without-ocsp-signing":
        responder = pki.make_responder(test_pki.ca, ocsp_signing=False)
        pki.write_cert(test_pki.responder_path, responder.cert)  # type: ignore[arg-type]
        pki.write_key(test_pki.key_path, responder.key)
    for command in ("check-config", "serve"):
        result = run(command, "--config", str(test_pki.config_path))
        assert_one_line_error(result, str(test_pki.config_path), *fragments)


def test_missing_config_file_is_one_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert_one_line_error(run("check-config", "--config", str(missing)), str(missing))


def test_encrypted_key_needs_its_passphrase_file(tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path)
    assert test_pki.responder is not None
    pki.write_key(test_pki.key_path, test_pki.responder.key, passphrase=b"s3cret")
    assert_one_line_error(run("check-config", "--config", str(test_pki.config_path)), "key_passphrase_file")
    secret = tmp_path / "passphrase"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"s3cret\n")
    os.close(fd)
    edit_config(test_pki, "index = ", f'key_passphrase_file = "{secret}"\nindex = ')
    result = run("check-config", "--config", str(test_pki.config_path))
    assert result.returncode == 0, result.stderr


def test_bad_usage_is_one_line_exit_2() -> None:
    assert_one_line_error(run("frobnicate"), "frobnicate")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A free port whose next one is free too (``ocspd demo`` puts its admin listener there)."""
    for _ in range(50):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free ports")


def wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ocspd exited early: {proc.communicate()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("ocspd did not start listening")


def test_demo_prints_commands_whose_answers_are_what_it_says(tmp_path: Path) -> None:
    """Every command the demo prints, run as printed, prints the answer the demo says it will."""
    port = free_port_pair()
    demo_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [*OCSPD, "demo", "--dir", str(demo_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"Metrics: http://127.0.0.1:{port + 1}/metrics" in out
    lines = [line.strip() for line in out.splitlines()]
    printed = [(lines[i][2:].split(" (", 1)[0], lines[i + 1]) for i, line in enumerate(lines) if line.startswith("# ")]
    assert len(printed) == 4, out
    statuses = sorted(answer.rsplit(": ", 1)[1] for answer, _ in printed)
    assert statuses == ["good", "good", "revoked", "unknown"]
    # Served again (the demo reuses its PKI), the commands answer as printed.
    again = subprocess.Popen(
        [*OCSPD, "demo", "--dir", str(demo_dir), "--port", str(port)], stdout=subprocess.DEVNULL, text=True
    )
    try:
        wait_for_port(port, again)
        for answer, command in printed:
            assert command.startswith("openssl ocsp "), command
            result = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=30, check=False)
            assert "Response verify OK" in result.stderr + result.stdout, result
            assert answer in result.stdout.splitlines(), (answer, result.stdout)
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0


def test_serve_refuses_a_port_in_use_with_one_line(tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        edit_config(test_pki, '"127.0.0.1:0"', f'"127.0.0.1:{port}"')
        result = run("serve", "--config", str(test_pki.config_path))
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
