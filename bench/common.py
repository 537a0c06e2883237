"""Shared helpers of the bench/ scripts.

A PKI made for the run, ``ocspd serve`` and other servers as subprocesses
(started, waited for, stopped by PID), the load generator (``wrk`` with a
Lua script, or ``loadgen.py`` when wrk is absent), PostgreSQL databases made
for the run, and the JSON results and tables every script writes.

Everything listens on and targets 127.0.0.1 only, is bounded in time and
stops what it starts, in ``finally`` blocks. The scripts import this module
as a sibling (``python bench/<name>.py`` puts bench/ first on sys.path).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
# $OCSPD_BENCH_RESULTS moves the JSON elsewhere (the smoke test does).
RESULTS = Path(os.environ.get("OCSPD_BENCH_RESULTS") or BENCH / "results")
HOST = "127.0.0.1"
PYTHON = sys.executable

# The repository root must be importable (ocspd when not installed, tests.pg).
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

from ocspd import pki  # noqa: E402  (needs the sys.path line above when ocspd is not installed)
from tests.pg import PgServer, postgres_server  # noqa: E402  (likewise)

# -- small things ----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def log(message: str) -> None:
    """Progress on stderr (stdout carries the tables)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent outside idle and iowait since boot (from /proc/stat)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# -- PKI -------------------------------------------------------------------------------


@dataclass
class BenchPki:
    """A CA, its delegated responder and a few leaves on disk, with an index.txt."""

    directory: Path
    issuer_id: str
    ca: pki.Identity
    responder: pki.Identity
    ca_path: Path
    responder_path: Path
    key_path: Path
    index_path: Path
    leaves: list[pki.Identity] = field(default_factory=list)
    name_hash: bytes = b""  # SHA-1 CertID hashes of the CA
    key_hash: bytes = b""

    def request_for(self, serial: int, algorithm: hashes.HashAlgorithm | None = None) -> bytes:
        """A one-CertID OCSPRequest (no nonce) for ``serial`` of this CA, SHA-1 CertID by default."""
        algorithm = algorithm or hashes.SHA1()
        if isinstance(algorithm, hashes.SHA1):
            name_hash, key_hash = self.name_hash, self.key_hash
        else:
            probe = ocsp.OCSPRequestBuilder().add_certificate(self.leaves[0].cert, self.ca.cert, algorithm).build()
            name_hash, key_hash = probe.issuer_name_hash, probe.issuer_key_hash
        builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, algorithm)
        return builder.build().public_bytes(serialization.Encoding.DER)

    def write_config(
        self,
        path: Path,
        port: int,
        *,
        database: str | None = None,
        use_index: bool = True,
        cache: str = "",
        responses: str = "",
    ) -> Path:
        """An ocspd.toml serving this CA on 127.0.0.1:port (index.txt, or ``database`` when use_index is off)."""
        database_section = f"[database]\ndsn = {json.dumps(database)}\n" if database else ""
        index = 'index = "index.txt"\n' if use_index else ""
        text = (
            "# made by bench/: a throwaway PKI\n"
            f'[server]\nlisten = ["{HOST}:{port}"]\nworkers = 1\n\n'
            # Not used by ocspd yet; a distinct port keeps replicas from clashing once it is.
            f'[admin]\nlisten = "{HOST}:{free_port()}"\n\n'
            f"{database_section}\n[cache]\n{cache}\n\n[responses]\n{responses}\n\n"
            f'[[issuers]]\nid = "{self.issuer_id}"\nca_cert = "{self.ca_path.name}"\n'
            f'responder_cert = "{self.responder_path.name}"\nresponder_key = "{self.key_path.name}"\n{index}'
        )
        if path.parent != self.directory:
            raise ValueError("the config must sit next to the PKI files (relative paths)")
        path.write_text(text)
        return path


def make_pki(
    directory: Path,
    *,
    key_type: pki.KeyType = "p256",
    issuer_id: str = "bench",
    leaves: int = 1,
) -> BenchPki:
    """A CA and a delegated responder of ``key_type``, ``leaves`` good leaves in index.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca(f"ocspd bench CA {issuer_id}", key_type)
    responder = pki.make_responder(ca, key_type)
    result = BenchPki(
        directory=directory,
        issuer_id=issuer_id,
        ca=ca,
        responder=responder,
        ca_path=directory / "ca.pem",
        responder_path=directory / "responder.pem",
        key_path=directory / "responder.key",
        index_path=directory / "index.txt",
    )
    pki.write_cert(result.ca_path, ca.cert)
    pki.write_cert(result.responder_path, responder.cert)
    pki.write_key(result.key_path, responder.key)
    for n in range(max(1, leaves)):
        result.leaves.append(pki.make_leaf(ca, 0x1000 + n, f"leaf-{n}.bench.ocspd.test", key_type="p256"))
    result.index_path.write_text("".join(pki.index_line(leaf.cert) + "\n" for leaf in result.leaves))
    probe = ocsp.OCSPRequestBuilder().add_certificate(result.leaves[0].cert, ca.cert, hashes.SHA1()).build()
    result.name_hash, result.key_hash = probe.issuer_name_hash, probe.issuer_key_hash
    return result


@dataclass(frozen=True)
class SerialTemplate:
    """Request DER for serial ``base + i``: prefix + 4 big-endian serial octets + suffix.

    Lets wrk's Lua (and loadgen.py) send a different serial with every
    request without building DER: serials stay in 0x10000000..0x7fffffff so
    that their INTEGER encoding is always 4 octets.
    """

    prefix: bytes
    suffix: bytes
    base: int

    def der(self, i: int) -> bytes:
        return self.prefix + (self.base + i).to_bytes(4, "big") + self.suffix


SERIAL_BASE = 0x10000000
SERIAL_LIMIT = 0x7FFFFFFF


def serial_template(bench_pki: BenchPki, base: int = SERIAL_BASE) -> SerialTemplate:
    """The SerialTemplate of SHA-1 CertID requests of this CA (checked against real DER)."""
    if not SERIAL_BASE <= base < SERIAL_LIMIT:
        raise ValueError("base out of the 4-octet range")
    der = bench_pki.request_for(base)
    marker = b"\x02\x04" + base.to_bytes(4, "big")
    at = der.rfind(marker)
    if at < 0:
        raise RuntimeError("serial not found in request DER")
    template = SerialTemplate(der[: at + 2], der[at + 6 :], base)
    for i in (0, 1, 12345):
        if template.der(i) != bench_pki.request_for(base + i):
            raise RuntimeError("serial template does not reproduce the DER")
    return template


def get_path(der: bytes, prefix: str = "/") -> str:
    """The GET path of a request as clients send it: percent-encoded base64."""
    return prefix + urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def certificate_status(der: bytes) -> str:
    """'good', 'revoked', 'unknown', or the OCSP error status name of an unsuccessful response."""
    response = ocsp.load_der_ocsp_response(der)
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return response.response_status.name.lower()
    return response.certificate_status.name.lower()


# -- HTTP one-shots (blocking; for checks and warm-up, not for load) --------------------


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


def http_request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 10.0) -> HttpAnswer:
    """One request on a fresh connection that is closed after the answer (``Connection: close``)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/ocsp-request"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return HttpAnswer(response.status, dict(response.getheaders()), data)
    finally:
        conn.close()


def ocsp_post(port: int, der: bytes, path: str = "/", timeout: float = 10.0) -> HttpAnswer:
    return http_request(port, "POST", path, der, timeout)


# -- /metrics (the admin listener) ------------------------------------------------------

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def admin_port(config: Path) -> int:
    """The port of ``[admin] listen`` in a config ``BenchPki.write_config`` wrote (/metrics is served there)."""
    listen = tomllib.loads(config.read_text())["admin"]["listen"]
    return int(str(listen).rsplit(":", 1)[1])


def metric_samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` on 127.0.0.1:port/metrics: (labels, value)."""
    answer = http_request(port, "GET", "/metrics")
    if answer.status != 200:
        raise RuntimeError(f"/metrics on {port} answered HTTP {answer.status}")
    samples = []
    for line in answer.body.decode().splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        # Label values as written (ocspd's are plain words: no escapes to undo).
        samples.append((dict(_LABEL.findall(match.group(2) or "")), float(match.group(3))))
    return samples


def status_reads(port: int) -> dict[str, float]:
    """``ocspd_status_reads_total`` of one replica by "target/reason" (every label pair it has)."""
    reads: dict[str, float] = {}
    for labels, value in metric_samples(port, "ocspd_status_reads_total"):
        key = f"{labels.get('target', '')}/{labels.get('reason', '')}"
        reads[key] = reads.get(key, 0.0) + value
    return reads


def status_reads_delta(before: Sequence[dict[str, float]], after: Sequence[dict[str, float]]) -> dict[str, int]:
    """Fetch batches per "target/reason" between two scrapes of each replica, summed over the replicas."""
    total: dict[str, int] = {}
    for old, new in zip(before, after, strict=True):
        for key, value in new.items():
            total[key] = total.get(key, 0) + round(value - old.get(key, 0.0))
    return dict(sorted(total.items()))


def fallbacks(reads: dict[str, int]) -> dict[str, int]:
    """The batches read again on the primary, by reason (every target="primary" label, whatever its reason)."""
    return {key.split("/", 1)[1]: n for key, n in reads.items() if key.split("/", 1)[0] == "primary"}


# -- PostgreSQL ------------------------------------------------------------------------

# The test suite's server handle: a DSN to create databases on, and where it came from.
Postgres = PgServer


@contextlib.contextmanager
def postgres(dsn: str | None = None) -> Iterator[Postgres]:
    """``dsn``, else $OCSPD_BENCH_DSN, else the test suite's server (a throwaway cluster or the local one)."""
    explicit = dsn or os.environ.get("OCSPD_BENCH_DSN")
    if explicit:
        yield Postgres(explicit, "OCSPD_BENCH_DSN" if not dsn else "--dsn")
        return
    log("starting PostgreSQL (tests/pg.py: a throwaway cluster, else the local server)")
    with postgres_server() as server:
        yield server


@contextlib.contextmanager
def fresh_database(server: Postgres, label: str = "bench") -> Iterator[str]:
    """A new database with ocspd's migrations applied; dropped afterwards. Yields its DSN."""
    from ocspd.store import Store

    name = f"ocspd_{label}_{uuid.uuid4().hex[:10]}"
    server.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = server.dsn_for(name)
        asyncio.run(Store(dsn).migrate())
        yield dsn
    finally:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def insert_serials(
    dsn: str,
    issuer_id: str,
    first: int,
    count: int,
    *,
    chunk: int = 1_000_000,
    progress: bool = False,
) -> float:
    """Insert certificates ``first .. first+count-1`` (status good) with generate_series; returns seconds.

    Rows go in chunks of ``chunk``. When allowed (a superuser), triggers are
    off for the load (session_replication_role = replica): the table is new,
    no replica is listening yet, and the statement triggers would otherwise
    build a JSON list of every inserted key to invalidate nothing.
    """
    import psycopg2

    start = time.perf_counter()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            try:
                cur.execute("SET session_replication_role = replica")
            except psycopg2.Error:
                conn.rollback()
                chunk = min(chunk, 200_000)
            conn.commit()
            done = 0
            while done < count:
                n = min(chunk, count - done)
                low = first + done
                cur.execute(
                    "INSERT INTO ocspd_certificates (issuer_id, serial)"
                    " SELECT %s, to_hex(g) FROM generate_series(%s::bigint, %s::bigint) AS g",
                    (issuer_id, low, low + n - 1),
                )
                conn.commit()
                done += n
                if progress:
                    elapsed = time.perf_counter() - start
                    log(f"  inserted {done:,}/{count:,} rows ({elapsed:.0f} s)")
        conn.autocommit = True
        with conn.cursor() as cur:
            if progress:
                log("  VACUUM ANALYZE ocspd_certificates")
            cur.execute("VACUUM ANALYZE ocspd_certificates")
    finally:
        conn.close()
    return time.perf_counter() - start


def sql_value(dsn: str, query: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row of a query."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
            return None if row is None else row[0]
    finally:
        conn.close()


# -- a hot standby (issue 13: [database] read_dsn) ---------------------------------------

# ocspd folds its fetch-batch counts into the metrics once a second (ocspd/app.py
# GAUGE_SECONDS): a scrape made sooner than this after the last fetch may miss some.
METRICS_SETTLE = 1.5


def apply_delay_ms(text: str) -> int:
    """``recovery_min_apply_delay`` as whole milliseconds: "1s", "500ms", "0.5s", "2min", or a number (ms)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(ms|s|min)?\s*", text)
    if match is None:
        raise ValueError(f"not a delay: {text!r} (say 1s, 500ms or 0)")
    scale = {"ms": 1.0, "s": 1000.0, "min": 60_000.0}[match.group(2) or "ms"]
    return round(float(match.group(1)) * scale)


def add_standby_args(parser: Any, *, what: str, apply_delay: str) -> None:
    """``--standby`` (``what`` says what it does in this script) and ``--apply-delay`` (its default)."""
    parser.add_argument("--standby", action="store_true", help=what)
    parser.add_argument(
        "--apply-delay",
        type=apply_delay_ms,
        default=apply_delay,
        help=f"--standby: the standby's recovery_min_apply_delay (default {apply_delay})",
    )


@contextlib.contextmanager
def replication(delay_ms: int) -> Iterator[tuple[Postgres, Postgres]]:
    """A throwaway primary and a streaming hot standby of it replaying commits ``delay_ms`` late
    (tests/pg.py's ``throwaway_cluster`` and ``hot_standby``); both stopped afterwards."""
    from tests.pg import hot_standby, throwaway_cluster

    log(f"starting a throwaway primary and a hot standby of it (recovery_min_apply_delay {delay_ms} ms)")
    with throwaway_cluster() as primary, hot_standby(primary, apply_delay=f"{delay_ms}ms") as standby:
        yield primary, standby


def wait_for_standby(dsn: str, standby_dsn: str, query: str, timeout: float = 60.0) -> float:
    """Wait until ``query`` gives on the standby what it gave on the primary (read once, first); seconds waited."""
    import psycopg2

    start = time.perf_counter()
    wanted = sql_value(dsn, query)
    while True:
        with contextlib.suppress(psycopg2.Error):  # the database or the table is not replayed yet
            if sql_value(standby_dsn, query) == wanted:
                return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"the standby did not catch up within {timeout:g} s: {query}")
        time.sleep(0.05)


@contextlib.contextmanager
def replicated_database(primary: Postgres, standby: Postgres, label: str = "bench") -> Iterator[tuple[str, str]]:
    """A new database made and migrated on the primary, once the standby has replayed it: (DSN, standby DSN).

    Dropped on the primary afterwards (the standby replays the drop). For rows
    inserted later, ``wait_for_standby``.
    """
    from psycopg2.extensions import parse_dsn

    with fresh_database(primary, label) as dsn:
        standby_dsn = standby.dsn_for(str(parse_dsn(dsn)["dbname"]))
        wait_for_standby(dsn, standby_dsn, "SELECT max(version) FROM ocspd_migrations")
        yield dsn, standby_dsn


@contextlib.contextmanager
def postgres_for(
    dsn: str | None, standby_delay_ms: int | None, details: dict[str, Any]
) -> Iterator[tuple[Postgres, Postgres | None]]:
    """(server, None) as ``postgres(dsn)`` gives it, or with ``standby_delay_ms`` (--standby) a throwaway
    primary and its hot standby (``replication``); where they came from goes to ``details["postgres"]``."""
    if standby_delay_ms is None:
        with postgres(dsn) as server:
            details["postgres"] = server.origin
            yield server, None
        return
    with replication(standby_delay_ms) as (primary, standby):
        details["postgres"] = f"{primary.origin} + {standby.origin}"
        yield primary, standby


@contextlib.contextmanager
def database_for(server: Postgres, standby: Postgres | None, label: str) -> Iterator[tuple[str, str | None]]:
    """(DSN, None) as ``fresh_database`` gives it, or with a standby ``replicated_database``'s pair."""
    if standby is None:
        with fresh_database(server, label) as dsn:
            yield dsn, None
        return
    with replicated_database(server, standby, label) as (dsn, standby_dsn):
        yield dsn, standby_dsn


# -- results ---------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a table: a measure, ocspd's figure, the baseline's, and the target check."""

    measure: str
    ocspd: float | None
    baseline: float | None = None
    unit: str = ""
    baseline_name: str = ""
    value: float | None = None  # what the target is checked on: a ratio or ocspd's figure
    target: str = ""  # ">= 0.9", "<= 5", "" for information only
    met: bool | None = None
    note: str = ""

    @staticmethod
    def make(
        measure: str,
        ocspd: float | None,
        baseline: float | None = None,
        *,
        unit: str = "",
        baseline_name: str = "",
        target: str = "",
        ratio: bool = True,
        note: str = "",
    ) -> Row:
        """``ratio``: the target applies to ocspd/baseline, else to ocspd's figure."""
        value: float | None = ocspd
        if ratio and baseline is not None:
            value = ocspd / baseline if ocspd is not None and baseline else None
        met = check_target(value, target) if target else None
        return Row(measure, ocspd, baseline, unit, baseline_name, value, target, met, note)


def check_target(value: float | None, target: str) -> bool | None:
    if value is None or value != value:  # NaN
        return None
    op, _, number = target.partition(" ")
    limit = float(number)
    return value >= limit if op == ">=" else value <= limit


def _fmt(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: Sequence[Row]) -> str:
    """A plain-text (and Markdown) table of rows."""
    header = ["measure", "ocspd", "baseline", "ratio/value", "target", "met"]
    body = []
    for r in rows:
        ocspd_text = f"{_fmt(r.ocspd)} {r.unit}".strip()
        base = f"{_fmt(r.baseline)} {r.unit}".strip() if r.baseline is not None else "-"
        if r.baseline_name and r.baseline is not None:
            base += f" ({r.baseline_name})"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        body.append([r.measure, ocspd_text, base, _fmt(r.value), r.target or "-", met])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in body:
        out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
    return "\n".join(out)


def _version(args: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else ""


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for module in ("aiohttp", "cryptography", "uvloop", "psycopg"):
        try:
            versions[module] = str(__import__(module).__version__)
        except (ImportError, AttributeError):
            versions[module] = ""
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
        "wrk": _version(["wrk", "--version"]) if have_wrk() else "",
        "openssl": _version(["openssl", "version"]),
        "versions": versions,
    }


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def save_results(name: str, rows: Sequence[Row], details: dict[str, Any], started: float) -> Path:
    """Write bench/results/<name>.json: the rows, the details and the machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "command": " ".join([Path(PYTHON).name, *sys.argv]),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "rows": [dataclasses.asdict(r) for r in rows],
        "details": details,
    }
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(payload), indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def report(name: str, rows: Sequence[Row], details: dict[str, Any], started: float) -> Path:
    """Print the table and write the JSON."""
    path = save_results(name, rows, details, started)
    print(f"\n{name}\n")
    print(table(rows))
    print(f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path


@contextlib.contextmanager
def work_dir(name: str, keep: bool = False) -> Iterator[Path]:
    """A temporary directory for the PKI, configs and logs of one run."""
    path = Path(tempfile.mkdtemp(prefix=f"ocspd-bench-{name}-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def add_common_args(parser: Any, *, duration: float | None = 10.0, connections: int = 64) -> None:
    """--duration (unless None), --connections, --threads, --client, --out, --keep."""
    if duration is not None:
        parser.add_argument(
            "--duration", type=float, default=duration, help=f"seconds per load run (default {duration:g})"
        )
    parser.add_argument(
        "--connections", type=int, default=connections, help=f"client connections (default {connections})"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk if installed (auto), or bench/loadgen.py",
    )
    parser.add_argument("--out", help="results name: bench/results/<out>.json (default: the script's name)")
    parser.add_argument("--keep", action="store_true", help="keep the run's temporary directory (logs, PKI)")
