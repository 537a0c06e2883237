"""Tests of ocspd.config: the config file, env overrides, errors, warnings, dump."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from ocspd.config import (
    AdminConfig,
    CacheConfig,
    Config,
    DatabaseConfig,
    IssuerConfig,
    ResponsesConfig,
    ServerConfig,
    default_config_path,
    dump_config,
    load_config,
    parse_duration,
    parse_size,
)
from ocspd.exceptions import ConfigError


def issuer(**keys: str | None) -> str:
    """One [[issuers]] table; keyword arguments replace the defaults, None drops a key."""
    fields = {"id": "root-2026", "ca_cert": "ca.pem", "responder_key": "responder.key", "index": "index.txt"}
    return "\n[[issuers]]\n" + "".join(f'{k} = "{v}"\n' for k, v in (fields | keys).items() if v is not None)


ISSUER = issuer()


def make_files(d: Path) -> None:
    """Fake PKI files: the config module only stats and opens them."""
    d.mkdir(parents=True, exist_ok=True)
    for name in ("ca.pem", "responder.pem", "index.txt"):
        (d / name).write_bytes(b"not parsed here\n")
    for name in ("responder.key", "pass.txt"):
        (d / name).write_bytes(b"secret\n")
        (d / name).chmod(0o600)


def write_config(tmp_path: Path, text: str = "", issuers: str = ISSUER) -> Path:
    make_files(tmp_path)
    path = tmp_path / "ocspd.toml"
    path.write_text(text + "\n" + issuers)
    return path


def load(path: Path, env: dict[str, str] | None = None) -> Config:
    return load_config(path, environ=env or {})


def expect_error(path: Path, key: str | None, *fragments: str, env: dict[str, str] | None = None) -> str:
    """Loading fails with one ConfigError: one line, "file: key: message", naming both."""
    with pytest.raises(ConfigError) as info:
        load(path, env)
    err, msg = info.value, str(info.value)
    assert "\n" not in msg
    assert err.file == str(path)
    assert err.key == key
    assert msg.startswith(f"{path}: {key}: " if key else f"{path}: ")
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# --- defaults and the happy path ---


def test_defaults_match_spec(tmp_path: Path) -> None:
    config = load(write_config(tmp_path))
    assert config.server == ServerConfig(
        listen=(("127.0.0.1", 8080),), path_prefix="/", workers=1, max_request_bytes=10000
    )
    assert config.admin == AdminConfig(listen=("127.0.0.1", 9180))
    assert config.database is None
    assert config.cache == CacheConfig(max_entries=1_000_000, max_bytes=512 * 1024 * 1024)
    assert config.responses == ResponsesConfig(
        validity=dt.timedelta(hours=24),
        backdate=dt.timedelta(minutes=1),
        nonce="echo",
        max_inflight_signatures=256,
        max_certids_per_request=16,
    )
    (only,) = config.issuers
    assert (only.unknown_serial, only.responder_id) == ("unknown", "key")
    assert (only.responder_cert, only.key_passphrase_file) == (None, None)
    assert config.warnings == ()
    assert config.source == str(tmp_path / "ocspd.toml")


def test_spec_example_loads(tmp_path: Path) -> None:
    text = """
[server]
listen = ["127.0.0.1:8080", "[::1]:8081"]
path_prefix = "/ocsp/"
workers = 4
max_request_bytes = 20000
[admin]
listen = "0.0.0.0:9180"
[database]
dsn = "postgresql://ocspd@/ocspd"
listen_dsn = ""
[cache]
max_entries = 5000
max_bytes = "64MiB"
[responses]
validity = "7d"
backdate = "90s"
nonce = "ignore"
max_inflight_signatures = 32
max_certids_per_request = 4
"""
    issuers = """
[[issuers]]
id = "root-2026"
ca_cert = "ca.pem"
responder_cert = "responder.pem"
responder_key = "responder.key"
key_passphrase_file = "pass.txt"
index = ""
unknown_serial = "unauthorized"
responder_id = "name"
"""
    config = load(write_config(tmp_path, text, issuers))
    assert config.server == ServerConfig((("127.0.0.1", 8080), ("::1", 8081)), "/ocsp/", 4, 20000)
    assert config.admin.listen == ("0.0.0.0", 9180)
    assert config.database == DatabaseConfig("postgresql://ocspd@/ocspd", "postgresql://ocspd@/ocspd")
    assert config.cache == CacheConfig(5000, 64 * 1024 * 1024)
    assert config.responses == ResponsesConfig(dt.timedelta(days=7), dt.timedelta(seconds=90), "ignore", 32, 4)
    assert config.issuers == (
        IssuerConfig(
            id="root-2026",
            ca_cert=tmp_path / "ca.pem",
            responder_key=tmp_path / "responder.key",
            responder_cert=tmp_path / "responder.pem",
            key_passphrase_file=tmp_path / "pass.txt",
            index=None,
            unknown_serial="unauthorized",
            responder_id="name",
        ),
    )


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    make_files(conf_dir / "pki")
    path = conf_dir / "ocspd.toml"
    path.write_text(issuer(ca_cert="pki/ca.pem", responder_key="pki/responder.key", index="pki/index.txt"))
    (loaded,) = load(path).issuers
    assert loaded.ca_cert == conf_dir / "pki" / "ca.pem"
    assert loaded.responder_key == conf_dir / "pki" / "responder.key"
    assert loaded.index == conf_dir / "pki" / "index.txt"
    assert loaded.ca_cert.is_absolute()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    make_files(elsewhere)
    path = write_config(tmp_path / "conf", issuers=issuer(ca_cert=str(elsewhere / "ca.pem")))
    assert load(path).issuers[0].ca_cert == elsewhere / "ca.pem"


def test_default_config_path_is_etc_without_env() -> None:
    assert default_config_path({}) == Path("/etc/ocspd/ocspd.toml")


def test_default_config_path_honours_ocspd_config() -> None:
    assert default_config_path({"OCSPD_CONFIG": "/srv/ocspd.toml"}) == Path("/srv/ocspd.toml")


def test_load_config_without_path_reads_ocspd_config(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    assert load_config(environ={"OCSPD_CONFIG": str(path)}).source == str(path)


def test_path_prefix_trailing_slash_is_added(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, '[server]\npath_prefix = "/ocsp"'))
    assert config.server.path_prefix == "/ocsp/"


def test_listen_dsn_defaults_to_dsn(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, '[database]\ndsn = "postgresql://a@db/ocspd"'))
    assert config.database == DatabaseConfig("postgresql://a@db/ocspd", "postgresql://a@db/ocspd")


def test_durations_and_sizes_accept_plain_integers(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, "[responses]\nvalidity = 36000\n[cache]\nmax_bytes = 4096"))
    assert config.responses.validity == dt.timedelta(hours=10)
    assert config.cache.max_bytes == 4096


def test_issuer_without_index_is_fine_with_database(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, '[database]\ndsn = "postgresql:///ocspd"', issuer(index=None)))
    assert config.issuers[0].index is None


def test_several_issuers_keep_their_order(tmp_path: Path) -> None:
    path = write_config(tmp_path, issuers=ISSUER + issuer(id="sub.ca_2"))
    assert [i.id for i in load(path).issuers] == ["root-2026", "sub.ca_2"]


# --- env overrides ---


def test_env_overrides_server_workers(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nworkers = 2")
    assert load(path, {"OCSPD_SERVER_WORKERS": "8"}).server.workers == 8


def test_env_overrides_listen_comma_separated(tmp_path: Path) -> None:
    config = load(write_config(tmp_path), {"OCSPD_SERVER_LISTEN": "0.0.0.0:80, [::]:80"})
    assert config.server.listen == (("0.0.0.0", 80), ("::", 80))


def test_env_overrides_duration_size_and_enum(tmp_path: Path) -> None:
    env = {"OCSPD_RESPONSES_VALIDITY": "12h", "OCSPD_CACHE_MAX_BYTES": "1GiB", "OCSPD_RESPONSES_NONCE": "ignore"}
    config = load(write_config(tmp_path), env)
    assert config.responses.validity == dt.timedelta(hours=12)
    assert config.cache.max_bytes == 1024**3
    assert config.responses.nonce == "ignore"


def test_env_overrides_admin_listen(tmp_path: Path) -> None:
    assert load(write_config(tmp_path), {"OCSPD_ADMIN_LISTEN": "[::1]:9000"}).admin.listen == ("::1", 9000)


def test_env_database_dsn_creates_database_section(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, issuers=issuer(index=None)), {"OCSPD_DATABASE_DSN": "postgresql:///x"})
    assert config.database == DatabaseConfig("postgresql:///x", "postgresql:///x")


def test_env_ocspd_config_is_not_an_override(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    assert load(path, {"OCSPD_CONFIG": "/nonexistent.toml"}).source == str(path)


def test_env_without_section_prefix_is_ignored(tmp_path: Path) -> None:
    assert load(write_config(tmp_path), {"OCSPD_LOG_LEVEL": "debug", "PGHOST": "db"}).database is None


def test_env_bad_value_names_the_variable(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path), "OCSPD_SERVER_WORKERS", 'expected an integer, got string "two"',
                 env={"OCSPD_SERVER_WORKERS": "two"})  # fmt: skip


def test_env_unknown_key_names_the_variable(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path), "OCSPD_SERVER_WROKERS", "unknown setting for [server]",
                 "did you mean OCSPD_SERVER_WORKERS?", env={"OCSPD_SERVER_WROKERS": "2"})  # fmt: skip


def test_env_cannot_override_issuers(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path), "OCSPD_ISSUERS_ID", "cannot be set from the environment",
                 env={"OCSPD_ISSUERS_ID": "x"})  # fmt: skip


def test_env_range_error_names_the_variable(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path), "OCSPD_SERVER_WORKERS", "must be at least 1, got 0",
                 env={"OCSPD_SERVER_WORKERS": "0"})  # fmt: skip


def test_env_listen_dsn_alone_still_needs_dsn(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path), "database.dsn", "required", env={"OCSPD_DATABASE_LISTEN_DSN": "x"})


# --- file-level errors ---


def test_missing_config_file(tmp_path: Path) -> None:
    assert expect_error(tmp_path / "nope.toml", None) == f"{tmp_path / 'nope.toml'}: no such file"


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nworkers 2")
    expect_error(path, None, "invalid TOML", "line 2", '"workers 2"')


def test_unknown_section_suggests_closest(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "[serer]\nworkers = 2"), "serer", "unknown section [serer]",
                 "did you mean [server]?")  # fmt: skip


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "[server]\nwrokers = 2"), "server.wrokers", "unknown key 'wrokers'",
                 "did you mean 'workers'?")  # fmt: skip


def test_unknown_issuer_key_suggests_closest(tmp_path: Path) -> None:
    path = write_config(tmp_path, issuers=issuer(ca_crt="ca.pem"))
    expect_error(path, "issuers[0].ca_crt", "unknown key 'ca_crt'", "did you mean 'ca_cert'?")


def test_key_outside_any_section(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "workers = 2"), "workers", "outside any section", "[server]")


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "server = 3"), "server", "expected a table [server]")


# --- value errors ---


def test_wrong_type_workers_string(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[server]\nworkers = "two"')
    assert expect_error(path, "server.workers") == f'{path}: server.workers: expected an integer, got string "two"'


def test_wrong_type_boolean_is_not_an_integer(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "[server]\nworkers = true"), "server.workers", "got boolean true")


def test_bad_duration(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, '[responses]\nvalidity = "1 day"'), "responses.validity",
                 'bad duration "1 day"', "24h")  # fmt: skip


def test_bad_size(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, '[cache]\nmax_bytes = "12XB"'), "cache.max_bytes", 'bad size "12XB"', "MiB")


def test_bad_enum_lists_allowed_values(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, '[responses]\nnonce = "require"'), "responses.nonce",
                 'must be one of "echo", "ignore", got "require"')  # fmt: skip


def test_bad_issuer_enum_lists_allowed_values(tmp_path: Path) -> None:
    path = write_config(tmp_path, issuers=issuer(unknown_serial="good"))
    expect_error(path, "issuers[0].unknown_serial", '"unknown", "revoked", "unauthorized"')


@pytest.mark.parametrize("listen", ["localhost", "8080", "::1:8080", "host:port", "[::1]8080"])
def test_listen_not_host_port(tmp_path: Path, listen: str) -> None:
    expect_error(write_config(tmp_path, f'[admin]\nlisten = "{listen}"'), "admin.listen",
                 'expected "host:port"', "[::1]:8080")  # fmt: skip


def test_listen_ipv6_in_brackets(tmp_path: Path) -> None:
    assert load(write_config(tmp_path, '[admin]\nlisten = "[::1]:9180"')).admin.listen == ("::1", 9180)


def test_listen_port_out_of_range(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, '[server]\nlisten = ["127.0.0.1:65536"]'), "server.listen",
                 "port 65536 out of range")  # fmt: skip


def test_listen_must_not_be_empty(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "[server]\nlisten = []"), "server.listen", "at least one address")


def test_path_prefix_must_start_with_slash(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, '[server]\npath_prefix = "ocsp/"'), "server.path_prefix",
                 'must start with "/"')  # fmt: skip


def test_workers_at_least_one(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "[server]\nworkers = 0"), "server.workers", "must be at least 1, got 0")


def test_max_request_bytes_at_least_100(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "[server]\nmax_request_bytes = 99"), "server.max_request_bytes",
                 "must be at least 100")  # fmt: skip


def test_max_connections_at_least_one_and_4096_by_default(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "[server]\nmax_connections = 0"), "server.max_connections",
                 "must be at least 1, got 0")  # fmt: skip
    assert load(write_config(tmp_path)).server.max_connections == 4096
    config = load(write_config(tmp_path), env={"OCSPD_SERVER_MAX_CONNECTIONS": "100"})
    assert config.server.max_connections == 100


def test_max_entries_at_least_one(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "[cache]\nmax_entries = 0"), "cache.max_entries", "must be at least 1")


def test_validity_must_be_positive(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, '[responses]\nvalidity = "0s"'), "responses.validity",
                 "must be greater than 0")  # fmt: skip


def test_keepalive_timeout_must_be_positive(tmp_path: Path) -> None:
    # 0 would mean "close after every answer" to aiohttp's side and "never" to the fast path.
    expect_error(write_config(tmp_path, '[server]\nkeepalive_timeout = "0s"'), "server.keepalive_timeout",
                 "must be greater than 0")  # fmt: skip


def test_header_timeout_must_be_positive_and_is_5s_by_default(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, '[server]\nheader_timeout = "0s"'), "server.header_timeout",
                 "must be greater than 0")  # fmt: skip
    assert load(write_config(tmp_path)).server.header_timeout == dt.timedelta(seconds=5)


def test_database_timeout_must_be_positive(tmp_path: Path) -> None:
    # Without a deadline a sick database would hold every miss for ever.
    expect_error(write_config(tmp_path, '[database]\ndsn = "dbname=x"\ntimeout = "0s"'), "database.timeout",
                 "must be greater than 0")  # fmt: skip


def test_database_timeouts_default_to_a_try_later_well_within_ten_seconds(tmp_path: Path) -> None:
    database = load(write_config(tmp_path, '[database]\ndsn = "dbname=x"')).database
    assert database is not None
    assert (database.lock_timeout, database.statement_timeout, database.timeout) == (
        dt.timedelta(seconds=1),
        dt.timedelta(seconds=2),
        dt.timedelta(seconds=3),
    )


def test_backdate_must_not_be_negative(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, "[responses]\nbackdate = -5"), "responses.backdate", "must not be negative")


def test_backdate_not_shorter_than_validity_is_an_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[responses]\nvalidity = "1h"\nbackdate = "1h"')
    expect_error(path, "responses.backdate", "must be shorter than validity (1h)")


def test_database_section_needs_dsn(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, '[database]\nlisten_dsn = "x"'), "database.dsn", "required")


# --- issuers ---


def test_no_issuers(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, issuers=""), "issuers", "no [[issuers]]")


def test_duplicate_issuer_id(tmp_path: Path) -> None:
    expect_error(write_config(tmp_path, issuers=ISSUER + ISSUER), "issuers[1].id",
                 'duplicate issuer id "root-2026" (also issuers[0])')  # fmt: skip


@pytest.mark.parametrize("ident", ["", "-lead", ".hidden", "has space", "a/b", "x" * 65, "é"])
def test_issuer_id_must_match_pattern(tmp_path: Path, ident: str) -> None:
    expect_error(write_config(tmp_path, issuers=issuer(id=ident)), "issuers[0].id", "A-Z a-z 0-9")


def test_issuer_missing_required_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, issuers=issuer(ca_cert=None))
    expect_error(path, "issuers[0].ca_cert", "required")


@pytest.mark.parametrize("key", ["ca_cert", "responder_cert", "responder_key", "key_passphrase_file", "index"])
def test_referenced_file_missing(tmp_path: Path, key: str) -> None:
    path = write_config(tmp_path, issuers=issuer(**{key: "gone.pem"}))
    expect_error(path, f"issuers[0].{key}", f"no such file: {tmp_path / 'gone.pem'}")


def test_referenced_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.pem").mkdir()
    path = write_config(tmp_path, issuers=issuer(ca_cert="dir.pem"))
    expect_error(path, "issuers[0].ca_cert", "not a regular file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_referenced_file_unreadable(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "ca.pem").chmod(0)
    expect_error(path, "issuers[0].ca_cert", "cannot read", "ca.pem")


@pytest.mark.parametrize(("key", "file"), [("responder_key", "responder.key"), ("key_passphrase_file", "pass.txt")])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_private_file_open_to_group_or_other_is_refused(tmp_path: Path, key: str, file: str, mode: int) -> None:
    path = write_config(tmp_path, issuers=issuer(key_passphrase_file="pass.txt"))
    (tmp_path / file).chmod(mode)
    expect_error(path, f"issuers[0].{key}", f"(mode {mode:04o})", f"chmod 600 {tmp_path / file}")


def test_issuer_without_index_needs_database(tmp_path: Path) -> None:
    path = write_config(tmp_path, issuers=issuer(index=None))
    expect_error(path, "issuers[0].index", "no status source", "[database]")


# --- warnings ---


def test_validity_outside_cabf_range_warns(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, '[responses]\nvalidity = "2h"'))
    assert config.warnings == (
        "responses.validity = 2h is outside the CA/Browser Forum range 8h..10d; allowed for a private PKI",
    )


def test_validity_inside_cabf_range_does_not_warn(tmp_path: Path) -> None:
    for validity in ("8h", "10d"):
        assert load(write_config(tmp_path, f'[responses]\nvalidity = "{validity}"')).warnings == ()


# --- parse_duration / parse_size ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", dt.timedelta(seconds=90)), ("24h", dt.timedelta(hours=24)), ("7d", dt.timedelta(days=7)),
     ("1m", dt.timedelta(minutes=1)), ("500ms", dt.timedelta(milliseconds=500)),
     ("1h30m", dt.timedelta(minutes=90)), ("45", dt.timedelta(seconds=45)), ("0s", dt.timedelta(0))],
)  # fmt: skip
def test_parse_duration_accepts(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "1.5h", "-1m", "1w", "1h 30m", "1h1h", "10 s", "99999999999999d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512MiB", 512 * 2**20), ("1GiB", 2**30), ("10kB", 10_000), ("10KiB", 10_240), ("4096", 4096),
     (4096, 4096), ("2MB", 2_000_000)],
)  # fmt: skip
def test_parse_size_accepts(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "1.5GiB", "-1", -1, "10XB", True])
def test_parse_size_rejects(text: str | int) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


# --- dump_config ---


def test_dump_config_round_trips(tmp_path: Path) -> None:
    text = '[server]\nlisten = ["[::1]:8443", "10.0.0.1:80"]\npath_prefix = "/o/"\n[responses]\nbackdate = "1h30m"\n'
    text += '[database]\ndsn = "postgresql:///ocspd"\n[cache]\nmax_bytes = 12345'
    config = load(write_config(tmp_path, text, issuer(responder_cert="responder.pem")))
    dumped = tmp_path / "dumped.toml"
    dumped.write_text(dump_config(config))
    again = load(dumped)
    assert (again.server, again.admin, again.database, again.cache, again.responses, again.issuers) == (
        config.server, config.admin, config.database, config.cache, config.responses, config.issuers,
    )  # fmt: skip


def test_dump_config_uses_readable_durations_and_sizes(tmp_path: Path) -> None:
    dumped = dump_config(load(write_config(tmp_path, '[responses]\nbackdate = "1h30m"')))
    assert 'validity = "1d"' in dumped
    assert 'backdate = "1h30m"' in dumped
    assert 'max_bytes = "512MiB"' in dumped
    assert 'listen = ["127.0.0.1:8080"]' in dumped
    assert "[[issuers]]" in dumped
    assert "# [database] not configured" in dumped


def test_dump_config_masks_database_password(tmp_path: Path) -> None:
    text = '[database]\ndsn = "postgresql://ocspd:s3cret@db/ocspd"\nlisten_dsn = "host=db password=s3cret"'
    dumped = dump_config(load(write_config(tmp_path, text)))
    assert "s3cret" not in dumped
    assert 'dsn = "postgresql://ocspd:***@db/ocspd"' in dumped
    assert 'listen_dsn = "host=db password=***"' in dumped


def test_dump_config_shows_warnings_as_comments(tmp_path: Path) -> None:
    dumped = dump_config(load(write_config(tmp_path, '[responses]\nvalidity = "30d"')))
    assert dumped.startswith(f"# effective configuration of {tmp_path / 'ocspd.toml'}\n# warning: ")


def test_systemd_credential_with_group_read_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd >= 254 keeps credentials root-owned 0440 with an ACL; ocspd must not refuse them."""
    from ocspd.config import _is_credential

    creds = tmp_path / "credentials"
    creds.mkdir()
    secret = creds / "responder-key-passphrase"
    secret.write_text("pass")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert _is_credential(secret)
    assert not _is_credential(tmp_path / "elsewhere")
