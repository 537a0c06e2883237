"""The systemd files in systemd/: the unit, its sandbox rating, the example config, sysusers and tmpfiles.

``systemd-analyze`` (Debian package ``systemd``) checks the unit offline; no
running systemd is needed, so this works in a container. Where the tool is
missing those tests are skipped, the static checks still run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ocspd import pki
from ocspd.config import _KEYS, Config, DatabaseConfig, ServerConfig
from ocspd.server import files_needed
from tests.helpers import TestPki, assert_one_line_error, build_pki, run

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "ocspd.service"
PASSPHRASE_DROP_IN = ROOT / "systemd" / "passphrase.conf"
PKCS11_DROP_IN = ROOT / "systemd" / "pkcs11.conf"
EXAMPLE_CONFIG = ROOT / "systemd" / "ocspd.toml"
SYSUSERS = ROOT / "systemd" / "ocspd.sysusers.conf"
TMPFILES = ROOT / "systemd" / "ocspd.tmpfiles.conf"

MAX_EXPOSURE = 2.0  # SPEC §5: "OK" or better

# SPEC §4's sections and keys, plus [log] (issue 4: log format, level, per-request lines).
# The keys ocspd reads, from its own table (a copy here would drift from it).
CONFIG_KEYS: dict[str, set[str]] = {section: set(keys) for section, keys in _KEYS.items() if section != "issuers"}
ISSUER_KEYS = set(_KEYS["issuers"])

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian/Ubuntu: apt-get install systemd)"
)


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as ordered (key, value) lists; repeated keys kept (systemd.syntax(7))."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= set {len(found)} times: {found}"
    return found[0]


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, env=env, check=False)


# --- what the unit says ---


def test_unit_is_type_notify_with_sighup_reload(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    reload = one(unit, "Service", "ExecReload")
    assert re.search(r"(-HUP|-s\s*HUP|SIGHUP)\b", reload), reload
    assert "$MAINPID" in reload
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "WatchdogSec")
    exec_start = one(unit, "Service", "ExecStart")
    assert exec_start.endswith(" serve --config /etc/ocspd/ocspd.toml"), exec_start
    assert not values(unit, "Service", "ExecStartPre")


def test_unit_runs_as_the_sysusers_account(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Service", "User") == "ocspd"
    assert one(unit, "Service", "Group") == "ocspd"
    sysusers = [line.split() for line in SYSUSERS.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert [(fields[0], fields[1]) for fields in sysusers] == [("u", "ocspd")]
    tmpfiles = [line.split() for line in TMPFILES.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert ["d", "/etc/ocspd", "0750", "root", "ocspd", "-"] in tmpfiles


def uncommented_passphrase_config() -> str:
    """The example config as the README leaves it for an encrypted key (its sed uncomments the line)."""
    text = EXAMPLE_CONFIG.read_text()
    assert text.count("\n#key_passphrase_file = ") == 1
    return text.replace("\n#key_passphrase_file = ", "\nkey_passphrase_file = ")


def test_the_passphrase_credential_is_a_drop_in_for_encrypted_keys_only(unit: dict[str, list[tuple[str, str]]]) -> None:
    # LoadCredential= with a missing source fails the start (243/CREDENTIALS): not in the unit itself.
    assert not values(unit, "Service", "LoadCredential")
    drop_in = parse_unit(PASSPHRASE_DROP_IN.read_text())
    assert list(drop_in) == ["Service"] and [k for k, _ in drop_in["Service"]] == ["LoadCredential"]
    name, _, source = one(drop_in, "Service", "LoadCredential").partition(":")
    assert name == "responder-key-passphrase"
    assert source.startswith("/etc/ocspd/")
    # The example config reads it where systemd puts it for this unit, once uncommented.
    config = tomllib.loads(EXAMPLE_CONFIG.read_text())
    assert all("key_passphrase_file" not in i for i in config["issuers"])
    encrypted = tomllib.loads(uncommented_passphrase_config())
    passphrase_files = [i.get("key_passphrase_file") for i in encrypted["issuers"]]
    assert f"/run/credentials/{UNIT.name}/{name}" in passphrase_files


def test_unit_gives_workers_a_private_runtime_directory(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Service", "RuntimeDirectory") == "ocspd"
    assert one(unit, "Service", "RuntimeDirectoryMode") == "0700"
    assert one(unit, "Service", "ProtectSystem") == "strict"  # /run/ocspd is then the only writable path
    assert not values(unit, "Service", "ReadWritePaths")


def test_unit_has_no_privileges(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    assert one(unit, "Service", "AmbientCapabilities") == ""
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "MemoryDenyWriteExecute") == "yes"
    assert one(unit, "Service", "SystemCallArchitectures") == "native"
    assert set(one(unit, "Service", "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_example_config_is_toml_with_every_section() -> None:
    config = tomllib.loads(EXAMPLE_CONFIG.read_text())
    assert set(config) == set(CONFIG_KEYS) | {"issuers"}
    for section, keys in CONFIG_KEYS.items():
        assert isinstance(config[section], dict), section
        assert set(config[section]) <= keys, f"[{section}] unknown keys: {set(config[section]) - keys}"
    assert config["database"]["dsn"]
    issuers = config["issuers"]
    assert isinstance(issuers, list) and issuers
    for issuer in issuers:
        assert set(issuer) <= ISSUER_KEYS, f"[[issuers]] unknown keys: {set(issuer) - ISSUER_KEYS}"
        assert {"id", "ca_cert", "responder_key"} <= set(issuer)
    delegated = [i for i in issuers if i.get("responder_cert")]
    assert delegated, "the example shows a delegated responder"
    assert "key_passphrase_file" not in delegated[0], "an unencrypted key by default (no credential to install)"


# --- systemd-analyze ---


def _verifiable_copy(tmp_path: Path) -> Path:
    """The unit, with ExecStart= pointing at a program that exists here (ocspd is not installed in /opt).

    ``systemd-analyze verify`` checks that every Exec*= program exists; that
    is the one finding about this machine rather than about the unit.
    """
    text = UNIT.read_text()
    installed = Path(sys.executable).with_name("ocspd")
    stand_in = installed if installed.is_file() and os.access(installed, os.X_OK) else Path("/bin/true")
    assert "ExecStart=/opt/ocspd/.venv/bin/ocspd " in text
    text = text.replace("ExecStart=/opt/ocspd/.venv/bin/ocspd ", f"ExecStart={stand_in} ")
    if not Path("/bin/kill").exists():  # procps missing (slim images): not the unit's fault
        text = text.replace("ExecReload=/bin/kill ", "ExecReload=/bin/true ")
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def _verify_findings(path: Path) -> tuple[int, list[str]]:
    """``systemd-analyze verify``'s exit status and the lines of its output about this unit.

    Unknown keys and unparsable values are only warnings (exit status 0), so
    any line naming the unit counts; lines about other units on this machine
    (loaded as dependencies) do not.
    """
    assert ANALYZE is not None
    result = _run(ANALYZE, "verify", "--man=no", path)
    lines = (result.stdout + result.stderr).splitlines()
    ours = [line for line in lines if str(path) in line or path.name in line]
    return result.returncode, ours


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    returncode, findings = _verify_findings(_verifiable_copy(tmp_path))
    assert findings == []
    assert returncode == 0


@needs_analyze
@pytest.mark.parametrize("drop_in", [PASSPHRASE_DROP_IN, PKCS11_DROP_IN], ids=lambda p: p.name)
def test_systemd_analyze_verify_with_a_drop_in(tmp_path: Path, drop_in: Path) -> None:
    # verify reads drop-ins from <unit>.d/ beside a unit given by path, as systemd does in /etc/systemd/system.
    unit = _verifiable_copy(tmp_path)
    (tmp_path / f"{UNIT.name}.d").mkdir()
    shutil.copy(drop_in, tmp_path / f"{UNIT.name}.d" / drop_in.name)
    returncode, findings = _verify_findings(unit)
    assert findings == []
    assert returncode == 0


@needs_analyze
@pytest.mark.parametrize(
    ("before", "after"),
    [("Type=notify\n", "Type=notifyy\n"), ("UMask=0077\n", "UMaks=0077\n"), ("KillMode=mixed\n", "KillMode=half\n")],
)
def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path: Path, before: str, after: str) -> None:
    path = _verifiable_copy(tmp_path)
    text = path.read_text()
    assert before in text
    path.write_text(text.replace(before, after))
    returncode, findings = _verify_findings(path)
    assert findings or returncode != 0


def _exposure(path: Path) -> float:
    assert ANALYZE is not None
    result = _run(ANALYZE, "security", "--offline=true", "--no-pager", path)
    if result.returncode != 0 and "offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip(f"systemd-analyze too old for --offline (systemd >= 250): {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


@needs_analyze
def test_systemd_analyze_security_rating() -> None:
    exposure = _exposure(UNIT)
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}"


@needs_analyze
def test_security_rating_sees_the_sandbox(tmp_path: Path) -> None:
    """The parsed figure moves when the sandbox goes: the check is not vacuous."""
    bare = tmp_path / UNIT.name
    kept = ("Type=", "ExecStart=", "ExecReload=", "User=", "Group=", "[")
    bare.write_text("".join(line for line in UNIT.read_text().splitlines(True) if line.startswith(kept)))
    assert _exposure(bare) > MAX_EXPOSURE


# --- sysusers.d and tmpfiles.d, applied to a scratch root ---


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed")
def test_sysusers_creates_the_account(tmp_path: Path) -> None:
    (tmp_path / "etc" / "sysusers.d").mkdir(parents=True)
    shutil.copy(SYSUSERS, tmp_path / "etc" / "sysusers.d" / "ocspd.conf")
    result = _run("systemd-sysusers", f"--root={tmp_path}")
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    entry = next(line.split(":") for line in passwd if line.startswith("ocspd:"))
    assert 0 < int(entry[2]) < 1000  # a system account
    assert entry[6].endswith("nologin")


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None or os.geteuid() != 0,
    reason="needs systemd-sysusers, systemd-tmpfiles and root (to chown)",
)
def test_tmpfiles_creates_the_config_directory(tmp_path: Path) -> None:
    for kind, source in (("sysusers.d", SYSUSERS), ("tmpfiles.d", TMPFILES)):
        (tmp_path / "etc" / kind).mkdir(parents=True)
        shutil.copy(source, tmp_path / "etc" / kind / "ocspd.conf")
    assert _run("systemd-sysusers", f"--root={tmp_path}").returncode == 0
    result = _run("systemd-tmpfiles", f"--root={tmp_path}", "--create")
    assert result.returncode == 0, result.stderr
    group = (tmp_path / "etc" / "group").read_text().splitlines()
    gid = int(next(line.split(":")[2] for line in group if line.startswith("ocspd:")))
    st = (tmp_path / "etc" / "ocspd").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o750, 0, gid)


def test_unit_file_limit_covers_the_connection_limit(unit: dict[str, list[tuple[str, str]]]) -> None:
    # LimitNOFILE= is "soft:hard" or one value for both (systemd.exec(5)).
    soft = int(one(unit, "Service", "LimitNOFILE").split(":")[0])
    example = tomllib.loads(EXAMPLE_CONFIG.read_text())
    server = ServerConfig(max_connections=example["server"].get("max_connections", ServerConfig().max_connections))
    database = DatabaseConfig(dsn=example["database"]["dsn"], pool_size=example["database"]["pool_size"])
    for config in (Config(), Config(server=server, database=database)):  # the defaults, and the example's
        # At or above what ocspd asks for at start: ocspd's own setrlimit() is then not needed
        # (the unit's system call filter may refuse it).
        assert soft >= files_needed(config), (soft, files_needed(config))
    assert soft >= 2 * ServerConfig().max_connections  # room to raise max_connections a little without an edit


# --- check-config by hand, outside the service: the passphrase credential is not there ---

CREDENTIAL_PASSPHRASE = b"s3cret"


def encrypted_pki(tmp_path: Path, passphrase_file: Path) -> TestPki:
    """An encrypted responder key whose key_passphrase_file is ``passphrase_file``."""
    test_pki = build_pki(tmp_path / "pki")
    assert test_pki.responder is not None
    pki.write_key(test_pki.key_path, test_pki.responder.key, passphrase=CREDENTIAL_PASSPHRASE)
    text = test_pki.config_path.read_text()
    test_pki.config_path.write_text(text.replace("index = ", f'key_passphrase_file = "{passphrase_file}"\nindex = '))
    return test_pki


def credential_roots(tmp_path: Path) -> list[tuple[Path, dict[str, str]]]:
    """A missing credential under each root ocspd takes for systemd's: /run/credentials/, $CREDENTIALS_DIRECTORY."""
    run_credentials = Path(f"/run/credentials/ocspd-test-{os.getpid()}-{tmp_path.name}.service")
    assert not run_credentials.exists()
    directory = tmp_path / "credentials"
    directory.mkdir()
    return [
        (run_credentials / "responder-key-passphrase", {}),
        (directory / "responder-key-passphrase", {"CREDENTIALS_DIRECTORY": str(directory)}),
    ]


@pytest.mark.parametrize("root", ["/run/credentials", "$CREDENTIALS_DIRECTORY"])
def test_check_config_outside_the_service_skips_the_key_behind_a_credential(tmp_path: Path, root: str) -> None:
    passphrase_file, env = credential_roots(tmp_path)[0 if root == "/run/credentials" else 1]
    test_pki = encrypted_pki(tmp_path, passphrase_file)
    result = run("check-config", "--config", str(test_pki.config_path), env=env)
    assert result.returncode == 0, result.stderr
    # One line says which check was left to the service, and why.
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("# issuer test-ca:")]
    assert "key not checked" in line and "systemd credential" in line and str(passphrase_file) in line, line
    assert "systemctl start ocspd" in line
    assert "Traceback" not in result.stderr
    # The effective config is the file's, the passphrase file included.
    assert result.stdout.startswith(f"# effective configuration of {test_pki.config_path}\n")
    assert f'key_passphrase_file = "{passphrase_file}"' in result.stdout
    assert f'ca_cert = "{test_pki.ca_path}"' in result.stdout  # relative paths resolved as usual
    # The service itself stays strict: no passphrase, no start.
    serve = run("serve", "--config", str(test_pki.config_path), env=env)
    assert_one_line_error(serve, str(test_pki.config_path), "issuers[0].key_passphrase_file", str(passphrase_file))


def test_check_config_with_the_credential_there_checks_the_key(tmp_path: Path) -> None:
    passphrase_file, env = credential_roots(tmp_path)[1]
    test_pki = encrypted_pki(tmp_path, passphrase_file)
    passphrase_file.write_bytes(CREDENTIAL_PASSPHRASE + b"\n")
    passphrase_file.chmod(0o440)  # as newer systemd leaves it (an ACL mask): accepted for a credential
    result = run("check-config", "--config", str(test_pki.config_path), env=env)
    assert result.returncode == 0, result.stderr
    assert "# issuer test-ca: ecdsa-secp256r1, signed by the delegated responder" in result.stderr.splitlines()
    passphrase_file.write_bytes(b"wrong\n")
    assert_one_line_error(run("check-config", "--config", str(test_pki.config_path), env=env), "wrong passphrase")


def test_check_config_outside_the_service_still_refuses_an_unencrypted_key_with_a_passphrase(tmp_path: Path) -> None:
    # The service would fail at start (a passphrase for a key that has none): check-config can tell already.
    passphrase_file, env = credential_roots(tmp_path)[1]
    test_pki = encrypted_pki(tmp_path, passphrase_file)
    assert test_pki.responder is not None
    pki.write_key(test_pki.key_path, test_pki.responder.key)
    result = run("check-config", "--config", str(test_pki.config_path), env=env)
    assert_one_line_error(result, str(test_pki.config_path), "issuers[0].key_passphrase_file", "not encrypted")


def test_check_config_outside_the_service_still_checks_the_certificates(tmp_path: Path) -> None:
    passphrase_file, env = credential_roots(tmp_path)[1]
    test_pki = encrypted_pki(tmp_path, passphrase_file)
    test_pki.ca_path.write_text("not a certificate\n")
    result = run("check-config", "--config", str(test_pki.config_path), env=env)
    assert_one_line_error(result, str(test_pki.config_path), "issuers[0].ca_cert", "not a PEM or DER certificate")


def test_check_config_outside_the_service_reports_later_mistakes_against_the_file(tmp_path: Path) -> None:
    passphrase_file, env = credential_roots(tmp_path)[1]
    test_pki = encrypted_pki(tmp_path, passphrase_file)
    with test_pki.config_path.open("a") as config:
        config.write('\n[[issuers]]\nid = "second"\nca_cert = "missing.pem"\nresponder_key = "signer.key"\n')
        config.write('index = "index.txt"\n')
    result = run("check-config", "--config", str(test_pki.config_path), env=env)
    assert_one_line_error(
        result, f"{test_pki.config_path}: issuers[1].ca_cert: no such file: {tmp_path}/pki/missing.pem"
    )


def test_check_config_refuses_a_missing_passphrase_file_that_is_no_credential(tmp_path: Path) -> None:
    test_pki = encrypted_pki(tmp_path, tmp_path / "nowhere" / "passphrase")
    result = run("check-config", "--config", str(test_pki.config_path))
    assert_one_line_error(result, "issuers[0].key_passphrase_file", "no such file")


def test_the_database_commands_run_by_hand_without_the_service_s_credential(tmp_path: Path, pg_dsn: str) -> None:
    """An upgrade's ``db migrate`` (or a revoke) with the service stopped: no key is needed, so a
    passphrase only the service can read does not stand in the way."""
    passphrase_file, env = credential_roots(tmp_path)[1]
    test_pki = encrypted_pki(tmp_path, passphrase_file)
    text = test_pki.config_path.read_text().replace('index = "index.txt"\n', "")
    test_pki.config_path.write_text(text + f"\n[database]\ndsn = {json.dumps(pg_dsn)}\n")
    result = run("db", "migrate", "--config", str(test_pki.config_path), env=env)
    assert result.returncode == 0 and "up to date" in result.stdout, result.stderr
