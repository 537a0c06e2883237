"""How values travel to and from PostgreSQL: serial spelling, reason names, status columns, array literals,
session settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509
from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ocspd.exceptions import StoreError
from ocspd.status import REASON_BY_FLAG, REASON_BY_NAME, STATUS_BY_VALUE, UNKNOWN, CertStatus, Status, served_reason


def checked_dsn(dsn: str, what: str) -> dict[str, str]:
    """The keywords of ``dsn`` (libpq's syntax), or StoreError naming ``what`` and the fault."""
    try:
        return {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    except ProgrammingError as exc:
        raise StoreError(f"{what}: {' '.join(str(exc).split())}") from None


def dsn_target(dsn: str, what: str) -> str:
    """Where ``dsn`` leads, for humans: ``user@host:port[,host:port]/dbname`` (never a password);
    StoreError naming ``what`` if libpq cannot read it."""
    given = checked_dsn(dsn, what)
    hosts = (given.get("host") or given.get("hostaddr") or "local socket").split(",")
    ports = (given.get("port") or "5432").split(",")
    ports += [ports[-1]] * (len(hosts) - len(ports))
    where = ",".join(f"{host}:{port}" for host, port in zip(hosts, ports, strict=False))
    user = f"{given['user']}@" if given.get("user") else ""
    attrs = f" ({given['target_session_attrs']})" if given.get("target_session_attrs") else ""
    return f"{user}{where}/{given.get('dbname') or '(default)'}{attrs}"


def database_roles(dsn: str, listen_dsn: str, read_dsn: str, read_max_lag: str) -> list[str]:
    """What each ``[database]`` DSN is used for and where it leads, one line each
    (``ocspd check-config``, the start-up summary); StoreError for one libpq cannot read."""
    lines = [
        f"dsn (the primary, or a pooler in front of it: writes, write-backs, refresh, presign, the CLI): "
        f"{dsn_target(dsn, '[database] dsn')}",
        f"listen_dsn (a direct connection to the primary: LISTEN, db migrate): "
        f"{dsn_target(listen_dsn, '[database] listen_dsn')}" + (" (= dsn)" if listen_dsn == dsn else ""),
    ]
    if read_dsn:
        lines.append(
            f"read_dsn (the request path's status reads, fenced; left out when down or past read_max_lag "
            f"{read_max_lag}): {dsn_target(read_dsn, '[database] read_dsn')}"
        )
    else:
        lines.append("read_dsn: not set (the request path reads from dsn)")
    return lines


def primary_dsn(dsn: str, what: str = "[database] dsn") -> str:
    """``dsn`` for what must reach the primary (writes, LISTEN, migrations): unless it says
    otherwise, ``target_session_attrs=read-write``, so that libpq never settles on a hot
    standby, and of a multi-host DSN (failover) takes the host that is the primary now."""
    if "target_session_attrs" in checked_dsn(dsn, what):
        return dsn
    return make_conninfo(dsn, target_session_attrs="read-write")


def session_dsn(
    dsn: str,
    *,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    what: str = "[database] dsn",
    primary: bool = True,
) -> str:
    """``dsn`` with ocspd's session settings: ``application_name`` (unless set), so that
    its backends can be told apart in pg_stat_activity, ``lock_timeout`` and
    ``statement_timeout`` (seconds; None or 0: not set) in ``options``, and for the
    ``primary``'s connections what :func:`primary_dsn` adds. A fault in ``dsn`` is a
    StoreError naming ``what``."""
    if primary:
        dsn = primary_dsn(dsn, what)
    given = checked_dsn(dsn, what)
    extra: dict[str, str] = {}
    if "application_name" not in given:
        extra["application_name"] = "ocspd"
    settings = [
        f"-c {name}={round(seconds * 1000)}ms"
        for name, seconds in (("lock_timeout", lock_timeout), ("statement_timeout", statement_timeout))
        if seconds
    ]
    if settings:
        extra["options"] = " ".join([str(given.get("options") or ""), *settings]).strip()
    return make_conninfo(dsn, **extra) if extra else dsn


def reason_name(reason: x509.ReasonFlags | None) -> str | None:
    """The stored name of a revocation reason: its RFC 5280 name, and no reason for
    ``unspecified`` (which answers never carry: ``status.served_reason``)."""
    served = served_reason(reason)
    return None if served is None else REASON_BY_FLAG[served].name


def reason_flag(name: str | None) -> x509.ReasonFlags | None:
    """The reason a stored name stands for (None: no reason)."""
    return REASON_BY_NAME[name].flag if name else None


def row_status(row: Sequence[Any]) -> CertStatus:
    """CertStatus from (status, revoked_at, reason, version) columns."""
    status, revoked_at, reason, version = row[:4]
    if status is None:
        return UNKNOWN
    if STATUS_BY_VALUE.get(status) is Status.REVOKED:
        return CertStatus(Status.REVOKED, revoked_at, reason_flag(reason), version)
    return CertStatus(Status.GOOD, None, None, version)


def serial_hex(serial: int) -> str:
    """The stored spelling of a serial: lower-case hex without leading zeros."""
    return format(serial, "x")


# Array parameters are sent as array literals (one string each): the driver
# adapts a Python list element by element, which cost more than the rest of
# the query's work on the client (bench/README.md).


def text_array(values: Sequence[str | None]) -> str:
    """A PostgreSQL array literal of text or NULLs (text[]; timestamptz[] of ISO 8601 strings).

    Every element is quoted, so any text is safe.
    """
    return (
        "{"
        + ",".join(["NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values])
        + "}"
    )


def number_array(values: Sequence[float]) -> str:
    """A PostgreSQL numeric array literal (int[], bigint[], float8[])."""
    return "{" + ",".join(map(repr, values)) + "}"
