"""A real PostgreSQL for the tests (SPEC §6), never a mock.

Where it comes from, in order: ``OCSPD_TEST_DSN``; else a throwaway cluster
made with the installed server binaries (initdb/pg_ctl in a temp dir, run as
the ``postgres`` user when we are root); else the local server on its
default socket. Each test session migrates one template database and each
test that asks gets a fresh clone of it (CREATE DATABASE ... TEMPLATE).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn


@dataclass
class PgServer:
    """A server we may create databases on; ``dsn`` names its maintenance database."""

    dsn: str
    origin: str  # "OCSPD_TEST_DSN", "throwaway cluster", "local server"
    socket_dir: str | None = None
    port: int | None = None
    control: ClusterControl | None = None  # a throwaway cluster's: it may be stopped and started

    def dsn_for(self, dbname: str) -> str:
        return make_dsn(self.dsn, dbname=dbname)

    def execute(self, sql: str, dbname: str | None = None) -> None:
        conn = psycopg2.connect(self.dsn_for(dbname) if dbname else self.dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, template: str | None = None) -> str:
        name = f"ocspd_test_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class ClusterControl:
    """Stop and start a throwaway cluster (fault tests: PostgreSQL down, then back)."""

    start_command: list[str]
    stop_command: list[str]
    env: dict[str, str]
    promote_command: list[str] | None = None

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are terminated, as by systemctl stop; ``immediate``: as by a crash."""
        command = [*self.stop_command]
        command[command.index("immediate")] = mode
        subprocess.run(command, check=True, capture_output=True, env=self.env, timeout=60)

    def start(self) -> None:
        subprocess.run(self.start_command, check=True, capture_output=True, env=self.env, timeout=120)

    def promote(self) -> None:
        """A hot standby becomes a primary (``pg_ctl promote``, waiting until it accepts writes)."""
        assert self.promote_command is not None
        subprocess.run(self.promote_command, check=True, capture_output=True, env=self.env, timeout=120)


@contextlib.contextmanager
def throwaway_cluster(*, tcp: bool = False) -> Iterator[PgServer]:
    """A cluster of this test's own (one a test may stop), from the installed binaries;
    ``tcp``: reached on 127.0.0.1 (a refused TCP connect fails later than a missing socket)."""
    with _throwaway_cluster(tcp=tcp) as server:
        yield server


def _can_connect(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
    except psycopg2.Error:
        return False
    return True


def _server_binaries() -> tuple[str, str] | None:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.access(f"{bindir}/initdb", os.X_OK) and os.access(f"{bindir}/pg_ctl", os.X_OK):
            return f"{bindir}/initdb", f"{bindir}/pg_ctl"
    return None


def _as_server_user(args: list[str]) -> list[str]:
    """initdb refuses to run as root: run it as `postgres` then."""
    if os.geteuid() != 0:
        return args
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *args]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(_quote(a) for a in args)]


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _throwaway_cluster(*, tcp: bool = False) -> Iterator[PgServer]:
    binaries = _server_binaries()
    if binaries is None:
        raise RuntimeError("no initdb/pg_ctl found")
    initdb, pg_ctl = binaries
    workdir = _server_directory("ocspd-pg-")
    data, port, env = f"{workdir}/data", _free_port(), {**os.environ, "LC_ALL": "C"}
    initialise = [initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
    options = (
        f"-p {port} -k {workdir} -c listen_addresses='{'127.0.0.1' if tcp else ''}' -c fsync=off"
        " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    host = "127.0.0.1" if tcp else workdir
    yield from _started(pg_ctl, initialise, options, workdir, port, env, "throwaway cluster", host)


def _server_directory(prefix: str) -> str:
    """A temporary directory the server user owns (``postgres`` when run as root)."""
    workdir = tempfile.mkdtemp(prefix=prefix)
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(workdir, user.pw_uid, user.pw_gid)
    return workdir


def _started(
    pg_ctl: str, make: list[str], options: str, workdir: str, port: int, env: dict[str, str], what: str, host: str
) -> Iterator[PgServer]:
    """Make the data directory (``make``), start the server with ``options``, yield it, stop it."""
    data, log = f"{workdir}/data", f"{workdir}/server.log"
    start = _as_server_user([pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start"])
    try:
        subprocess.run(_as_server_user(make), check=True, capture_output=True, env=env, timeout=120)
        subprocess.run(start, check=True, capture_output=True, env=env, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"could not start a {what}: {exc}") from exc
    stop = _as_server_user([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"])
    watchdog = _watchdog(workdir, stop, env)
    try:
        yield PgServer(
            f"host={host} port={port} user=postgres dbname=postgres",
            what,
            workdir,
            port,
            ClusterControl(start, stop, env, _as_server_user([pg_ctl, "-D", data, "-w", "-t", "60", "promote"])),
        )
    finally:
        subprocess.run(stop, capture_output=True, env=env, timeout=60, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        watchdog.terminate()
        watchdog.wait(timeout=10)


def _watchdog(workdir: str, stop: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    """If this process is killed (a timeout, Ctrl-C twice), its finally blocks never run: a
    watchdog in its own session runs ``stop`` then, and removes ``workdir``."""
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), workdir, *stop],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


# argv: parent pid, cluster directory, the command that stops the cluster.
_WATCHDOG = """
import os, shutil, subprocess, sys, time
parent, workdir, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while os.path.isdir(workdir):
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        subprocess.run(stop, capture_output=True, timeout=60, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        break
    time.sleep(1)
"""


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer]:
    """The server for this test session (see the module docstring)."""
    explicit = os.environ.get("OCSPD_TEST_DSN")
    if explicit:
        params = parse_dsn(explicit)
        yield PgServer(explicit, "OCSPD_TEST_DSN", params.get("host"), int(params.get("port", 5432)))
        return
    errors = []
    try:
        with _throwaway_cluster() as server:
            yield server
            return
    except RuntimeError as exc:
        errors.append(str(exc))
    local = ("host=/var/run/postgresql user=postgres dbname=postgres", "host=127.0.0.1 user=postgres dbname=postgres")
    for dsn in local:
        if _can_connect(dsn):
            params = parse_dsn(dsn)
            yield PgServer(dsn, "local server", params["host"], 5432)
            return
    raise RuntimeError(
        "no PostgreSQL for the tests: set OCSPD_TEST_DSN, or install the server binaries "
        f"(apt-get install postgresql); tried: {'; '.join(errors)}"
    )


def socket_path(server: PgServer) -> tuple[str, int] | str:
    """Where a proxy should connect to reach this server: a unix socket path or (host, port)."""
    params = parse_dsn(server.dsn)
    host = params.get("host", "/var/run/postgresql")
    port = int(params.get("port", 5432))
    if host.startswith("/"):
        return str(Path(host) / f".s.PGSQL.{port}")
    return (host, port)


@contextlib.contextmanager
def hot_standby(primary: PgServer, *, apply_delay: str = "1s") -> Iterator[PgServer]:
    """A streaming hot standby of a throwaway cluster (``pg_basebackup -R``), replaying
    commits ``apply_delay`` behind it (``recovery_min_apply_delay``); stopped at the end.

    The throwaway cluster allows it as it is: initdb's ``-A trust`` admits local
    replication connections, and ``wal_level`` and ``max_wal_senders`` are the defaults.
    """
    binaries = _server_binaries()
    basebackup = shutil.which("pg_basebackup") or (
        str(Path(binaries[1]).with_name("pg_basebackup")) if binaries else None
    )
    if binaries is None or basebackup is None or not os.access(basebackup, os.X_OK):
        raise RuntimeError("no pg_basebackup found")
    if primary.control is None or primary.socket_dir is None or primary.port is None:
        raise RuntimeError("a hot standby needs a throwaway cluster as its primary")
    pg_ctl = binaries[1]
    workdir = _server_directory("ocspd-standby-")
    port, env = _free_port(), primary.control.env
    source = ["-h", primary.socket_dir, "-p", str(primary.port), "-U", "postgres"]
    backup = [basebackup, "-D", f"{workdir}/data", "-R", "-X", "stream", "-c", "fast", "--no-sync", *source]
    options = (
        f"-p {port} -k {workdir} -c listen_addresses='' -c fsync=off -c max_connections=200"
        f" -c hot_standby=on -c recovery_min_apply_delay={apply_delay}"
    )
    yield from _started(pg_ctl, backup, options, workdir, port, env, "hot standby", workdir)


@dataclass
class PgBouncer:
    """A PgBouncer in front of a server; ``dsn_for`` reaches one of its databases through it."""

    dsn: str
    pool_mode: str
    log: Path

    def dsn_for(self, dbname: str) -> str:
        return make_dsn(self.dsn, dbname=dbname)


@contextlib.contextmanager
def pgbouncer(
    server: PgServer,
    *,
    pool_mode: str = "transaction",
    pool_size: int = 20,
    users: tuple[str, ...] = (),
    settings: Mapping[str, str] | None = None,
) -> Iterator[PgBouncer]:
    """PgBouncer (the installed binary: Debian's ``pgbouncer``) in front of ``server``, in
    ``pool_mode``, listening on a unix socket of its own; stopped at the end (by its PID).

    RuntimeError("pgbouncer is not installed") without the binary. Every database of
    the server is reached through it (``* =``), as the server's own user or one of
    ``users`` (roles the server trusts); ``settings``: more of ``[pgbouncer]`` (where
    to listen and how to authenticate stay this fixture's).
    """
    binary = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        raise RuntimeError("pgbouncer is not installed")
    params = parse_dsn(server.dsn)
    target = socket_path(server)
    where = (
        f"host={Path(target).parent} port={server.port}"
        if isinstance(target, str)
        else (f"host={target[0]} port={target[1]}")
    )
    if "password" in params:
        where += f" password={params['password']}"
    user = params.get("user", "postgres")
    workdir = _server_directory("ocspd-pgbouncer-")
    port = _free_port()
    pidfile, logfile = f"{workdir}/pgbouncer.pid", Path(workdir) / "pgbouncer.log"
    (Path(workdir) / "users.txt").write_text("".join(f'"{name}" ""\n' for name in (user, *users)))
    chosen = {"pool_mode": pool_mode, "default_pool_size": str(pool_size), "max_client_conn": "500", **(settings or {})}
    own = {
        "listen_addr": "",
        "listen_port": str(port),
        "unix_socket_dir": workdir,
        "auth_type": "trust",
        "auth_file": f"{workdir}/users.txt",
        "logfile": str(logfile),
        "pidfile": pidfile,
    }
    lines = "".join(f"{key} = {value}\n" for key, value in {**chosen, **own}.items())
    (Path(workdir) / "pgbouncer.ini").write_text(f"[databases]\n* = {where}\n\n[pgbouncer]\n{lines}")
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("postgres")
        for name in os.listdir(workdir):
            os.chown(f"{workdir}/{name}", owner.pw_uid, owner.pw_gid)
    stop = ["sh", "-c", f'[ -f {pidfile} ] && kill "$(cat {pidfile})"']
    try:
        subprocess.run(
            _as_server_user([binary, "-d", "-q", f"{workdir}/pgbouncer.ini"]),
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"could not start pgbouncer: {exc}") from exc
    watchdog = _watchdog(workdir, stop, None)
    bouncer = PgBouncer(f"host={workdir} port={port} user={user} dbname=postgres", pool_mode, logfile)
    try:
        _wait_until_connects(bouncer.dsn, what="pgbouncer")
        yield bouncer
    finally:
        subprocess.run(stop, capture_output=True, timeout=30, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        watchdog.terminate()
        watchdog.wait(timeout=10)


def _wait_until_connects(dsn: str, *, what: str, seconds: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not _can_connect(dsn):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not accept connections within {seconds:g} s")
        time.sleep(0.05)
