"""The ocspd configuration file (SPEC §4): load, validate, override, render.

``load_config`` reads the TOML file, applies ``OCSPD_<SECTION>_<KEY>``
environment overrides and returns a frozen :class:`Config`. Every mistake is
one :class:`~ocspd.exceptions.ConfigError` naming the file and the key, so the
CLI prints one line and exits 2. Keys and certificates are only checked for
existence, readability and permissions here; parsing them is the signer's job.

Over ~400 lines on purpose: one frozen dataclass per section, each next to its
validation, so that every key's default, type and rule is in one place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ocspd.exceptions import ConfigError
from ocspd.pkcs11uri import Pkcs11Uri, Pkcs11UriError, is_pkcs11_uri, resolve_pin_source
from ocspd.pkcs11uri import parse as parse_pkcs11_uri

Nonce = Literal["echo", "ignore"]
UnknownSerial = Literal["unknown", "revoked", "unauthorized"]
ResponderId = Literal["key", "name"]
LogFormat = Literal["kv", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
Timestamps = Literal["auto", "on", "off"]
CrlUnlisted = Literal["issuance", "good"]
CrlStale = Literal["trylater", "serve"]

DEFAULT_CONFIG_PATH = Path("/etc/ocspd/ocspd.toml")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: the OCSP HTTP listener(s)."""

    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 8080),)
    path_prefix: str = "/"
    workers: int = 1
    max_request_bytes: int = 10000
    fast_http: bool = True
    # An idle connection (no request since the last answer, or a head still
    # arriving) is closed after this long (more than 0).
    keepalive_timeout: dt.timedelta = dt.timedelta(seconds=30)
    # A request head must arrive whole within this long of its first byte (more than 0).
    header_timeout: dt.timedelta = dt.timedelta(seconds=5)
    # Connections one process holds; past it the longest-idle one is closed, or
    # the new one refused (ocspd/web/connections.py). Each needs a file descriptor.
    max_connections: int = 4096


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``[admin]``: the /metrics, /healthz, /readyz listener."""

    listen: tuple[str, int] = ("127.0.0.1", 9180)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """``[database]``: the PostgreSQL status store; an empty ``listen_dsn`` means ``dsn``.

    ``read_dsn`` (optional, e.g. a hot standby): where the request path reads
    statuses, fenced so that a standby behind a notified change is not served
    (store/fence.py); everything else (write-backs, refresh, presign, the CLI,
    migrations) uses ``dsn``, the primary. Empty: reads use ``dsn`` too. A
    read_dsn that does not answer, or is more than ``read_max_lag`` behind the
    primary, is left out (reads go to ``dsn``) until it has caught up
    (store/readset.py).

    ``lock_timeout`` and ``statement_timeout`` are set on the server for the
    request path's connections (0: not set), so that a query waiting on a lock
    or running long gives up there, freeing its backend, whatever happened to
    the client; ``timeout`` is ocspd's own deadline for one request-path
    operation (connecting, a retry, a lost network included), after which the
    request gets tryLater and the query is cancelled on the server;
    ``pool_size`` bounds those connections per process (each process also
    keeps one LISTEN connection).
    """

    dsn: str
    listen_dsn: str = ""
    read_dsn: str = ""
    read_max_lag: dt.timedelta = dt.timedelta(seconds=5)
    lock_timeout: dt.timedelta = dt.timedelta(seconds=1)
    statement_timeout: dt.timedelta = dt.timedelta(seconds=2)
    timeout: dt.timedelta = dt.timedelta(seconds=3)
    pool_size: int = 10

    def __post_init__(self) -> None:
        if not self.listen_dsn:
            object.__setattr__(self, "listen_dsn", self.dsn)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """``[cache]``: bounds of the in-process response cache."""

    max_entries: int = 1_000_000
    max_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ResponsesConfig:
    """``[responses]``: how responses are produced."""

    validity: dt.timedelta = dt.timedelta(hours=24)
    backdate: dt.timedelta = dt.timedelta(minutes=1)
    nonce: Nonce = "echo"
    max_inflight_signatures: int = 256
    max_certids_per_request: int = 16


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: one line per event on stderr, as key=value or JSON."""

    format: LogFormat = "kv"
    level: LogLevel = "info"
    requests: bool = False  # a transaction line per request (issuer, serial, status, tier, latency)
    # A time= field first on every line; "auto": unless stderr is the journal, which has its own.
    timestamps: Timestamps = "auto"


@dataclass(frozen=True, slots=True)
class CrlConfig:
    """``[crl]``: how the CRLs of issuers with ``crl`` are fetched, and what a stale one gives.

    A CRL is fetched again every ``poll``, and shortly before its nextUpdate;
    while a fetch fails or the CRL is past its nextUpdate, every ``retry``.
    ``stale``: what answers become once the CRL in force is past its
    nextUpdate without a newer one: ``"trylater"``, or ``"serve"`` (signed
    from it still, valid for ``retry`` only, and counted).
    """

    poll: dt.timedelta = dt.timedelta(minutes=5)
    retry: dt.timedelta = dt.timedelta(seconds=30)
    timeout: dt.timedelta = dt.timedelta(seconds=30)
    max_bytes: int = 256 * 1024 * 1024
    max_redirects: int = 3
    stale: CrlStale = "trylater"


@dataclass(frozen=True, slots=True)
class Pkcs11Config:
    """``[pkcs11]``: responder keys in a PKCS#11 token (issue 16).

    ``module``: the PKCS#11 library of keys whose URI has no module-path and
    whose issuer has no ``pkcs11_module``. ``sessions``: signing sessions
    (and threads) per token. ``probe``: how often an idle token is checked.
    ``timeout``: a signature taking longer marks its token down.
    """

    module: str = ""
    sessions: int = 2
    probe: dt.timedelta = dt.timedelta(seconds=10)
    timeout: dt.timedelta = dt.timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One ``[[issuers]]`` entry; paths are absolute (relative ones resolved against the config dir)."""

    id: str
    ca_cert: Path
    # A key file, or a key in a PKCS#11 token (RFC 7512 URI); the certificate
    # likewise (type=cert), or None when the CA's own key signs.
    responder_key: Path | Pkcs11Uri
    responder_cert: Path | Pkcs11Uri | None = None
    key_passphrase_file: Path | None = None
    pkcs11_module: str | None = None  # the PKCS#11 library (None: the URI's module-path, or [pkcs11] module)
    pkcs11_pin_file: Path | None = None  # the token's user PIN (None: the URI's pin-source, if any)
    index: Path | None = None
    unknown_serial: UnknownSerial = "unknown"
    responder_id: ResponderId = "key"
    # The CA's CRLs (issue 15): where the base CRL is published (mirrors, in
    # order), where the delta CRL is (None: the base CRL's Freshest CRL
    # extension; empty: none), a CRL signer certificate if the CA's own key
    # does not sign them, and what a serial the CRL does not list is.
    crl: tuple[str, ...] = ()
    delta_crl: tuple[str, ...] | None = None
    crl_signer: Path | None = None
    crl_unlisted: CrlUnlisted = "issuance"


@dataclass(frozen=True, slots=True)
class Config:
    """The effective configuration; ``source`` is the config file path as given."""

    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    database: DatabaseConfig | None = None
    cache: CacheConfig = CacheConfig()
    responses: ResponsesConfig = ResponsesConfig()
    log: LogConfig = LogConfig()
    crl: CrlConfig = CrlConfig()
    pkcs11: Pkcs11Config = Pkcs11Config()
    issuers: tuple[IssuerConfig, ...] = ()
    source: str = ""
    warnings: tuple[str, ...] = ()


def default_config_path(environ: Mapping[str, str]) -> Path:
    """``$OCSPD_CONFIG`` if set and non-empty, else ``/etc/ocspd/ocspd.toml``."""
    return Path(environ.get("OCSPD_CONFIG") or DEFAULT_CONFIG_PATH)


# --- durations, sizes, addresses ---

_MS = dt.timedelta(milliseconds=1)
_DURATION_UNITS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
# "ms" before "m" so that "500ms" is not read as 500 minutes followed by junk.
_DURATION_PART = re.compile(r"([0-9]+)(ms|d|h|m|s)", re.ASCII)


def parse_duration(text: str) -> dt.timedelta:
    """Parse ``90s``, ``24h``, ``7d``, ``1m``, ``500ms``, ``1h30m``; a bare integer is seconds.

    Raises ValueError for anything else (negative, fractional, unknown or repeated unit).
    """
    s = text.strip()
    if re.fullmatch(r"[0-9]+", s, re.ASCII):
        s += "s"
    parts = _DURATION_PART.findall(s)
    units = [u for _, u in parts]
    if not parts or "".join(n + u for n, u in parts) != s or len(set(units)) != len(units):
        raise ValueError(f"bad duration {text!r}")
    try:
        return sum(int(n) * _DURATION_UNITS[u] for n, u in parts) * _MS
    except OverflowError:
        raise ValueError(f"duration {text!r} is too large") from None


def format_duration(value: dt.timedelta) -> str:
    """Render a duration the way :func:`parse_duration` reads it, e.g. ``1h30m``."""
    ms, out = round(value / _MS), ""
    for unit, size in _DURATION_UNITS.items():
        count, ms = divmod(ms, size)
        out += f"{count}{unit}" if count > 0 else ""
    return out or "0s"


_SIZE_UNITS = {
    "": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip


def parse_size(text: str | int) -> int:
    """Parse ``512MiB``, ``1GiB``, ``10KiB``, ``10kB`` (SI: 1000) or a plain byte count.

    Raises ValueError for anything else (negative, fractional, unknown unit, bool).
    """
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    m = re.fullmatch(r"\s*([0-9]+)\s*([A-Za-z]*)\s*", text, re.ASCII) if isinstance(text, str) else None
    if m is None or m[2].lower() not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r}")
    return int(m[1]) * _SIZE_UNITS[m[2].lower()]


def format_size(value: int) -> str | int:
    """``512MiB`` when the size is a whole number of binary units, else the plain int."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if value and value % _SIZE_UNITS[unit.lower()] == 0:
            return f"{value // _SIZE_UNITS[unit.lower()]}{unit}"
    return value


def format_addr(addr: tuple[str, int]) -> str:
    """``host:port``, with IPv6 hosts in brackets: ``[::1]:8080``."""
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


# --- converters: (raw value, came from env) -> typed value, or ValueError(message) ---

Converter = Callable[[object, bool], Any]
_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}


def _show(value: object) -> str:
    # JSON quoting escapes control characters, which keeps every message on one line.
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _wrong_type(expected: str, value: object) -> ValueError:
    return ValueError(f"expected {expected}, got {_TOML_TYPES.get(type(value), type(value).__name__)} {_show(value)}")


def _int(value: object, from_env: bool) -> int:
    if from_env and isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value, re.ASCII):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type("an integer", value)
    return value


def _str(value: object, from_env: bool) -> str:
    if not isinstance(value, str):
        raise _wrong_type("a string", value)
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(value: object, from_env: bool) -> bool:
    if from_env and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, bool):
        return value
    raise _wrong_type("a boolean (true or false)", value)


def _duration(value: object, from_env: bool) -> dt.timedelta:
    if isinstance(value, int) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)  # a TOML integer is seconds, like a bare "90"
    try:
        return parse_duration(_str(value, from_env))
    except ValueError:
        raise ValueError(f"bad duration {_show(value)} (use 90s, 24h, 7d, 1h30m)") from None


def _timestamps(value: object, from_env: bool) -> str:
    """``true``/``false`` (TOML booleans, or the words in the environment) or ``"auto"``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    words = {"auto": "auto", "true": "on", "on": "on", "false": "off", "off": "off"}
    if isinstance(value, str) and value.lower() in words:
        return words[value.lower()]
    raise ValueError(f'must be true, false or "auto", got {_show(value)}')


def _size(value: object, from_env: bool) -> int:
    try:
        return parse_size(value if isinstance(value, int | str) else "?")
    except ValueError:
        raise ValueError(f"bad size {_show(value)} (use 512MiB, 1GiB, 10kB or a byte count)") from None


def _enum(allowed: tuple[str, ...]) -> Converter:
    def convert(value: object, from_env: bool) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(_show, allowed))}, got {_show(value)}")
        return str(value)

    return convert


def _addr(value: object, from_env: bool) -> tuple[str, int]:
    text = _str(value, from_env).strip()
    m = re.fullmatch(r"\[([^\[\]]+)\]:([0-9]+)|([^\[\]:]+):([0-9]+)", text, re.ASCII)
    if m is None:
        raise ValueError(f'expected "host:port" (IPv6 as "[::1]:8080"), got {_show(text)}')
    if int(m[2] or m[4]) > 65535:  # 0 is allowed: "any free port", handy in tests
        raise ValueError(f"port {int(m[2] or m[4])} out of range 0..65535")
    return (m[1] or m[3], int(m[2] or m[4]))


def _listen(value: object, from_env: bool) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str):  # env is comma-separated; a lone TOML string is one address
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise _wrong_type('a list of "host:port" strings', value)
    if not value:
        raise ValueError("needs at least one address")
    return tuple(_addr(item, from_env) for item in value)


def _locations(value: object, from_env: bool) -> tuple[str, ...]:
    """One location (a string) or several (an array of strings): http(s) URLs or file paths."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) and item.strip() for item in items):
        raise _wrong_type("a URL or path, or an array of them", value)
    return tuple(str(item).strip() for item in items)


# Every key, its converter and (for numbers) its minimum. The env override names,
# the "unknown key" suggestions and dump_config all come from this one table.
_KEYS: dict[str, dict[str, tuple[Converter, int | None]]] = {
    "server": {"listen": (_listen, None), "path_prefix": (_str, None), "workers": (_int, 1),
               "max_request_bytes": (_int, 100), "fast_http": (_bool, None),
               "keepalive_timeout": (_duration, None), "header_timeout": (_duration, None),
               "max_connections": (_int, 1)},
    "admin": {"listen": (_addr, None)},
    "database": {"dsn": (_str, None), "listen_dsn": (_str, None), "read_dsn": (_str, None),
                 "read_max_lag": (_duration, None), "lock_timeout": (_duration, None),
                 "statement_timeout": (_duration, None), "timeout": (_duration, None), "pool_size": (_int, 1)},
    "cache": {"max_entries": (_int, 1), "max_bytes": (_size, 1)},
    "responses": {"validity": (_duration, None), "backdate": (_duration, None),
                  "nonce": (_enum(get_args(Nonce)), None), "max_inflight_signatures": (_int, 1),
                  "max_certids_per_request": (_int, 1)},
    "log": {"format": (_enum(get_args(LogFormat)), None), "level": (_enum(get_args(LogLevel)), None),
            "timestamps": (_timestamps, None),
            "requests": (_bool, None)},
    "crl": {"poll": (_duration, None), "retry": (_duration, None), "timeout": (_duration, None),
            "max_bytes": (_size, 1), "max_redirects": (_int, 0), "stale": (_enum(get_args(CrlStale)), None)},
    "pkcs11": {"module": (_str, None), "sessions": (_int, 1), "probe": (_duration, None),
               "timeout": (_duration, None)},
    "issuers": {"id": (_str, None), "ca_cert": (_str, None), "responder_key": (_str, None),
                "responder_cert": (_str, None), "key_passphrase_file": (_str, None), "index": (_str, None),
                "unknown_serial": (_enum(get_args(UnknownSerial)), None),
                "responder_id": (_enum(get_args(ResponderId)), None), "crl": (_locations, None),
                "delta_crl": (_locations, None), "crl_signer": (_str, None),
                "crl_unlisted": (_enum(get_args(CrlUnlisted)), None), "pkcs11_module": (_str, None),
                "pkcs11_pin_file": (_str, None)},
}  # fmt: skip
_ISSUER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
# CA/Browser Forum Baseline Requirements bound OCSP validity; a private PKI may
# choose otherwise, so leaving this range is a warning, not an error.
_CABF_MIN, _CABF_MAX = dt.timedelta(hours=8), dt.timedelta(days=10)


# --- loading ---


@dataclass(frozen=True, slots=True)
class _Raw:
    value: object
    key: str  # what an error names: "server.workers" or "OCSPD_SERVER_WORKERS"
    from_env: bool


def _error(message: str, key: str | None, file: str) -> ConfigError:
    # The CLI prints str(err) as one line; a newline from a path must not break that.
    return ConfigError(message.replace("\r", "\\r").replace("\n", "\\n"), key=key, file=file)


def _suggest(word: str, options: list[str], fmt: str = "{!r}") -> str:
    match = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean {fmt.format(match[0])}?" if match else ""


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise _error("no such file", None, source) from None
    except (OSError, UnicodeError) as e:
        raise _error(f"cannot read config file: {getattr(e, 'strerror', None) or e}", None, source) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # Python 3.11's TOMLDecodeError has no lineno attribute; its message has the number.
        message, m = f"invalid TOML: {e}", re.search(r"at line ([0-9]+)", str(e))
        lines = text.splitlines()
        if m and 1 <= int(m[1]) <= len(lines):
            message += f"; the line reads {_show(lines[int(m[1]) - 1].strip())}"
        raise _error(message, None, source) from None


def _convert(section: str, raw: dict[str, _Raw], file: str) -> dict[str, Any]:
    """Type-convert and range-check one section's raw values (``section`` names the schema)."""
    values = {}
    for key, r in raw.items():
        convert, minimum = _KEYS[section][key]
        try:
            values[key] = convert(r.value, r.from_env)
        except ValueError as e:
            raise _error(str(e), r.key, file) from None
        if minimum is not None and values[key] < minimum:
            raise _error(f"must be at least {minimum}, got {r.value}", r.key, file)
    return values


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the config file, then apply ``OCSPD_<SECTION>_<KEY>`` overrides.

    ``path`` defaults to :func:`default_config_path`; ``environ`` to ``os.environ``.
    Raises ConfigError: one line naming the file, the dotted key or env variable, the problem.
    """
    env = os.environ if environ is None else environ
    cfg_path = Path(path) if path is not None else default_config_path(env)
    source = str(cfg_path)
    doc = _read_toml(cfg_path, source)
    sections = [s for s in _KEYS if s != "issuers"]
    raw: dict[str, dict[str, _Raw]] = {s: {} for s in sections}

    def where(section: str, key: str) -> str:
        return raw[section][key].key if key in raw[section] else f"{section}.{key}"

    for name, table in doc.items():
        if name == "issuers":
            continue
        if name not in _KEYS:
            if isinstance(table, dict):
                raise _error(f"unknown section [{name}]{_suggest(name, list(_KEYS), '[{}]')}", name, source)
            home = next((s for s in sections if name in _KEYS[s]), None)
            hint = f"; did you mean to put it under [{home}]?" if home else ""
            raise _error(f"key {name!r} is outside any section{hint}", name, source)
        if not isinstance(table, dict):
            raise _error(f"expected a table [{name}], got {_show(table)}", name, source)
        for key, value in table.items():
            if key not in _KEYS[name]:
                hint = _suggest(key, list(_KEYS[name]))
                raise _error(f"unknown key {key!r} in [{name}]{hint}", f"{name}.{key}", source)
            raw[name][key] = _Raw(value, f"{name}.{key}", False)

    for var in sorted(env):  # sorted: with several bad variables, always report the same one
        section = next((s for s in _KEYS if var.startswith(f"OCSPD_{s.upper()}_")), None)
        if section is None:
            continue  # OCSPD_CONFIG, or not OCSPD_<SECTION>_...: not an override
        if section == "issuers":
            raise _error("[[issuers]] cannot be set from the environment; edit the config file", var, source)
        key = var[len(f"OCSPD_{section}_") :].lower()
        if key not in _KEYS[section]:
            names = [f"OCSPD_{section}_{k}".upper() for k in _KEYS[section]]
            raise _error(f"unknown setting for [{section}]{_suggest(var, names, '{}')}", var, source)
        raw[section][key] = _Raw(env[var], var, True)

    server = ServerConfig(**_convert("server", raw["server"], source))
    if not server.path_prefix.startswith("/"):
        raise _error(f'must start with "/", got {_show(server.path_prefix)}', where("server", "path_prefix"), source)
    if not server.path_prefix.endswith("/"):
        server = dataclasses.replace(server, path_prefix=server.path_prefix + "/")
    if server.keepalive_timeout <= dt.timedelta(0):
        # aiohttp's side would close after every answer, the fast path never: refused, not guessed.
        raise _error("must be greater than 0", where("server", "keepalive_timeout"), source)
    if server.header_timeout <= dt.timedelta(0):
        raise _error("must be greater than 0", where("server", "header_timeout"), source)
    database = None
    # The section exists if the file has [database] or any OCSPD_DATABASE_* is set.
    if "database" in doc or raw["database"]:
        values = _convert("database", raw["database"], source)
        if not values.get("dsn"):
            raise _error("required: a PostgreSQL connection string", where("database", "dsn"), source)
        database = DatabaseConfig(**values)
        if database.timeout <= dt.timedelta(0):
            # No deadline would let a sick database hold every miss for ever.
            raise _error("must be greater than 0", where("database", "timeout"), source)
        if database.read_max_lag <= dt.timedelta(0):
            raise _error("must be greater than 0", where("database", "read_max_lag"), source)
    responses = ResponsesConfig(**_convert("responses", raw["responses"], source))
    validity, backdate = responses.validity, responses.backdate
    if validity <= dt.timedelta(0):
        raise _error("must be greater than 0", where("responses", "validity"), source)
    if backdate < dt.timedelta(0):
        raise _error("must not be negative", where("responses", "backdate"), source)
    if backdate >= validity:
        message = f"{format_duration(backdate)} must be shorter than validity ({format_duration(validity)})"
        raise _error(message, where("responses", "backdate"), source)
    crl = CrlConfig(**_convert("crl", raw["crl"], source))
    for key in ("poll", "retry", "timeout"):
        if getattr(crl, key) <= dt.timedelta(0):
            raise _error("must be greater than 0", where("crl", key), source)
    pkcs11 = Pkcs11Config(**_convert("pkcs11", raw["pkcs11"], source))
    for key in ("probe", "timeout"):
        if getattr(pkcs11, key) <= dt.timedelta(0):
            raise _error("must be greater than 0", where("pkcs11", key), source)
    warnings = []
    if not _CABF_MIN <= validity <= _CABF_MAX:
        warnings.append(
            f"{where('responses', 'validity')} = {format_duration(validity)} is outside the CA/Browser Forum "
            f"range {format_duration(_CABF_MIN)}..{format_duration(_CABF_MAX)}; allowed for a private PKI"
        )
    return Config(
        server=server,
        admin=AdminConfig(**_convert("admin", raw["admin"], source)),
        database=database,
        cache=CacheConfig(**_convert("cache", raw["cache"], source)),
        responses=responses,
        log=LogConfig(**_convert("log", raw["log"], source)),
        crl=crl,
        pkcs11=pkcs11,
        issuers=_load_issuers(
            doc.get("issuers"), source, cfg_path.absolute().parent, database is not None, pkcs11.module
        ),
        source=source,
        warnings=tuple(warnings),
    )


def _load_issuers(
    value: object, source: str, base: Path, have_db: bool, pkcs11_module: str = ""
) -> tuple[IssuerConfig, ...]:
    if value is None or value == []:
        raise _error("no [[issuers]] configured; at least one is required", "issuers", source)
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise _error(f"expected [[issuers]] tables, got {_show(value)}", "issuers", source)
    seen: dict[str, int] = {}
    issuers = []
    for i, table in enumerate(value):
        name = f"issuers[{i}]"
        for key in table:
            if key not in _KEYS["issuers"]:
                hint = _suggest(key, list(_KEYS["issuers"]))
                raise _error(f"unknown key {key!r} in [[issuers]]{hint}", f"{name}.{key}", source)
        values = _convert("issuers", {k: _Raw(v, f"{name}.{k}", False) for k, v in table.items()}, source)
        ident = values.get("id", "")
        if not _ISSUER_ID.fullmatch(ident):
            problem = f"bad issuer id {_show(ident)}" if ident else "required"
            message = f"{problem} (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)"
            raise _error(message, f"{name}.id", source)
        if ident in seen:
            raise _error(f"duplicate issuer id {_show(ident)} (also issuers[{seen[ident]}])", f"{name}.id", source)
        seen[ident] = i
        _pkcs11_keys(values, name, source, base, pkcs11_module)
        for key in (
            "ca_cert", "responder_cert", "responder_key", "key_passphrase_file", "index", "crl_signer",
            "pkcs11_pin_file",
        ):  # fmt: skip
            if isinstance(values.get(key), Pkcs11Uri):
                continue
            if isinstance(values.get(key), str) and is_pkcs11_uri(values[key]):  # not echoed: it may hold a PIN
                raise _error(
                    "a PKCS#11 URI is not a file here (responder_key and responder_cert take one)",
                    f"{name}.{key}",
                    source,
                )
            if values.get(key):  # "" means "not set", as in the SPEC example
                values[key] = base / values[key]  # an absolute path replaces base
                if key in ("key_passphrase_file", "pkcs11_pin_file") and credential_outside_the_service(values[key]):
                    continue  # only the running service has it: the signer reads it there
                private = key in ("responder_key", "key_passphrase_file", "pkcs11_pin_file")
                _check_file(values[key], private, f"{name}.{key}", source)
            elif key in ("ca_cert", "responder_key"):
                raise _error("required: a file path", f"{name}.{key}", source)
            else:
                values[key] = None
        for key in ("crl", "delta_crl"):
            if key in values:  # a file path is relative to the config's directory, as every path here
                values[key] = tuple(loc if _SCHEME.match(loc) else str(base / loc) for loc in values[key])
        if isinstance(values.get("responder_cert"), Pkcs11Uri) and not isinstance(values["responder_key"], Pkcs11Uri):
            raise _error("a certificate in a token needs its key there too", f"{name}.responder_cert", source)
        _check_crl_policy(values, name, source, have_db)
        if values["index"] is None and not have_db and not values.get("crl"):
            message = f"issuer {_show(ident)} has no status source: set index or crl, or configure [database]"
            raise _error(message, f"{name}.index", source)
        issuers.append(IssuerConfig(**values))
    return tuple(issuers)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")


def _pkcs11_keys(values: dict[str, Any], name: str, source: str, base: Path, default_module: str) -> None:
    """Parse PKCS#11 URIs in responder_key/responder_cert, and check what a token key needs."""
    for key in ("responder_key", "responder_cert"):
        text = values.get(key)
        if not isinstance(text, str) or not is_pkcs11_uri(text):
            continue
        try:
            uri = resolve_pin_source(parse_pkcs11_uri(text), base)
        except Pkcs11UriError as exc:
            raise _error(f"bad PKCS#11 URI: {exc}", f"{name}.{key}", source) from None
        wanted = "private" if key == "responder_key" else "cert"
        if uri.type not in (None, wanted):
            raise _error(f"type={uri.type}: {key} needs type={wanted}", f"{name}.{key}", source)
        values[key] = uri
    uris = [v for v in (values.get("responder_key"), values.get("responder_cert")) if isinstance(v, Pkcs11Uri)]
    if not uris:
        for key in ("pkcs11_module", "pkcs11_pin_file"):
            if values.get(key):
                raise _error(
                    'only for a key in a PKCS#11 token (responder_key = "pkcs11:...")', f"{name}.{key}", source
                )
        values["pkcs11_module"] = None  # "" (as check-config prints it) means not set
        return
    if values.get("key_passphrase_file") and isinstance(values.get("responder_key"), Pkcs11Uri):
        raise _error(
            "a token key has a PIN, not a passphrase: use pkcs11_pin_file", f"{name}.key_passphrase_file", source
        )
    if not (values.get("pkcs11_module") or all(u.module_path for u in uris) or default_module):
        message = 'no PKCS#11 module: set pkcs11_module (or [pkcs11] module), e.g. "/usr/lib/softhsm/libsofthsm2.so"'
        raise _error(message, f"{name}.pkcs11_module", source)
    values["pkcs11_module"] = values.get("pkcs11_module") or None
    key_uri = values.get("responder_key")
    if isinstance(key_uri, Pkcs11Uri) and key_uri.pin_source is not None:
        if values.get("pkcs11_pin_file"):
            raise _error("the URI has a pin-source already", f"{name}.pkcs11_pin_file", source)
        pin = Path(key_uri.pin_source)
        if not credential_outside_the_service(pin):
            _check_file(pin, True, f"{name}.responder_key (pin-source)", source)


def _is_url(location: str) -> bool:
    return bool(re.match(r"(?i)https?://", location))


def _check_crl_policy(values: dict[str, Any], name: str, source: str, have_db: bool) -> None:
    """A CRL lists revoked certificates only: what answers for the serials it does not list must be chosen."""
    crl, unlisted = values.get("crl", ()), values.get("crl_unlisted", "issuance")
    scheme = next((loc for loc in crl + values.get("delta_crl", ()) if _SCHEME.match(loc)), None)
    if scheme is not None and not _is_url(scheme):
        raise _error(f"unsupported location {_show(scheme)}: use an http(s) URL or a file path", f"{name}.crl", source)
    if not crl:
        for key in ("delta_crl", "crl_signer", "crl_unlisted"):
            if values.get(key) not in (None, (), "issuance"):
                raise _error("needs crl (the base CRL's location)", f"{name}.{key}", source)
        return
    if unlisted == "issuance" and values["index"] is None and not have_db:
        message = (
            "a CRL does not say which serials were issued: pair it with an issuance list (index, or "
            'configure [database]), or answer "good" for every serial it does not list (crl_unlisted = "good")'
        )
        raise _error(message, f"{name}.crl_unlisted", source)
    if unlisted == "good" and values["index"] is not None:
        raise _error('"good" ignores the issuance list in index: set one or the other', f"{name}.crl_unlisted", source)


def _is_credential(path: Path) -> bool:
    """A systemd credential (LoadCredential=): systemd itself restricts who reads it.

    Recent systemd keeps credentials root-owned 0440 with an ACL for the
    service user, which the mode check would otherwise refuse.
    """
    roots = [Path("/run/credentials")]
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        roots.append(Path(os.environ["CREDENTIALS_DIRECTORY"]))
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in roots)


def credential_outside_the_service(path: Path) -> bool:
    """A systemd credential that cannot be read here: LoadCredential= puts it in
    /run/credentials/<unit>/ for the running service only, so the CLI run by hand
    (check-config, db migrate, revoke, ...) works without it; ``ocspd serve``'s
    signer still refuses to start without it."""
    if not _is_credential(path):
        return False
    try:
        with path.open("rb"):
            return False
    except (FileNotFoundError, PermissionError):
        return True
    except OSError:  # a directory, say: the usual check says what is wrong
        return False


def _check_file(path: Path, private: bool, key: str, source: str) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _error(f"no such file: {path}", key, source) from None
    except OSError as e:
        raise _error(f"cannot access {path}: {e.strerror or e}", key, source) from None
    if not stat.S_ISREG(st.st_mode):  # also keeps open() below from blocking on a FIFO
        raise _error(f"not a regular file: {path}", key, source)
    if private and st.st_mode & 0o077 and not _is_credential(path):
        message = f"{path} is readable or writable by group/other (mode {st.st_mode & 0o777:04o})"
        raise _error(f"{message}; fix: chmod 600 {path}", key, source)
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise _error(f"cannot read {path}: {e.strerror or e}", key, source) from None


# --- rendering ---

_DSN_SECRET = re.compile(r"(://[^:/@]*:)[^@]*(@)|(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def _mask_dsn(dsn: str) -> str:
    # check-config output ends up in terminals and tickets; never print a password.
    return _DSN_SECRET.sub(lambda m: f"{m[1]}***{m[2]}" if m[1] else f"{m[3]}***", dsn)


def _toml(value: object, convert: Converter) -> str:
    if isinstance(value, dt.timedelta):
        value = format_duration(value)
    elif convert is _size and isinstance(value, int):
        value = format_size(value)
    elif convert is _listen and isinstance(value, tuple):
        return "[" + ", ".join(_toml(a, _addr) for a in value) + "]"
    elif convert is _locations and isinstance(value, tuple):
        return "[" + ", ".join(_toml(location, _str) for location in value) + "]"
    elif convert is _addr and isinstance(value, tuple):
        value = format_addr(value)
    elif convert is _timestamps and value != "auto":
        value = value == "on"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # TOML basic strings use JSON's escapes, except that DEL must be escaped too.
    return json.dumps("" if value is None else str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def dump_config(config: Config) -> str:
    """The effective config as TOML text (for ``ocspd check-config``); DSN passwords are masked."""
    out = [f"# effective configuration of {config.source}", *(f"# warning: {w}" for w in config.warnings)]
    for section, keys in _KEYS.items():
        if section == "database" and config.database is None:
            out += ["", "# [database] not configured: issuers read their index files"]
            continue
        tables = config.issuers if section == "issuers" else (getattr(config, section),)
        for table in tables:
            out += ["", "[[issuers]]" if section == "issuers" else f"[{section}]"]
            for key, (convert, _) in keys.items():
                value = getattr(table, key)
                if key == "delta_crl" and value is None:
                    out.append("# delta_crl: where the base CRL's Freshest CRL extension says (if it does)")
                    continue
                out.append(f"{key} = {_toml(_mask_dsn(value) if key.endswith('dsn') else value, convert)}")
    return "\n".join(out) + "\n"
