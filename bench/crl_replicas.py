"""The CRL source with replicas (issue 15): a revocation reaching every replica, and the merge of a big CRL.

Part 1, ``revocation``: a CA's CRL distribution point on 127.0.0.1 (tests/crls.py's
``CrlServer`` in this process, logging every request: when, which replica, 200 or 304)
and three ``ocspd serve`` processes whose issuer has ``crl`` pointing at it, each
replica at its own ``?replica=N`` of the same CRL (so the log says who fetched),
started one after the other so that their rounds are out of step (replica i's rounds
i thirds of a poll interval after replica 0's, plus up to a third at random).
Two setups, each at every ``--polls`` interval ([crl] poll and retry, by
OCSPD_CRL_POLL / OCSPD_CRL_RETRY):

- ``none``: no database, ``crl_unlisted = "good"``: each replica polls on its own;
- ``postgres``: ``[database]`` on one fresh database (the targets imported as
  "good" first, no ``index``): one replica a round claims the issuer's row in
  ocspd_crl_sources, fetches and merges the CRL into ocspd_certificates, and the
  table's trigger NOTIFYs every replica.

The base CRL (number 1) has ``--base-entries`` revoked 20-octet serials (bench/crl.py's
DER builder and P-256 signature) and one canary; once every replica answers
"revoked" for the canary and a poll interval more has passed, ``--revocations``
times: every replica answers "good" for the next target (twice: it is in memory),
the next CRL (number + 1, one more entry) is published, and an asyncio client asks
every replica (OCSP POST, no nonce, over HTTP, every ``--ask-ms``) until it says
"revoked", then goes on asking until a random pause (uniform over one poll interval:
the next CRL comes at a random moment of the poll phase) is over; an answer "good"
after a replica's first "revoked" is counted (must be 0), and so is any of the
earlier targets not answered "revoked" when they are all asked again before each
publication and at the end. Figures: publication to every replica's first "revoked",
p50/p99/max, in ms and in poll intervals; from the first fetch that delivered the
new CRL to every replica's "revoked" (fetch, parse, merge, NOTIFY, our next ask);
CRL fetches (HTTP requests, and of them full 200 answers) per poll interval.

Part 2, ``merge``: for each ``--merge-sizes`` (default 100,000 and 1,000,000), on a
fresh migrated database of the same server, ``Store(dsn).crls.merge(issuer,
revoked, listed)`` (ocspd/store/crls.py: 5,000 a statement, then the held
serials' query): the full merge into an empty table, the same again (all
unchanged), an incremental merge of one new entry (median of 5, and the held
serials' query alone), and the whole CRL again with one new entry (what a
replica that claims a round without the entries in memory merges).

    python bench/crl_replicas.py                                   # both parts: ~3 min here
    python bench/crl_replicas.py --parts revocation --revocations 5 --polls 1
    python bench/crl_replicas.py --parts merge --merge-sizes 100000   # skips the 1M merge (~1 min of it)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import common
import crl as crl_bench  # bench/crl.py: the DER CRL builder
import load
from aiohttp import web
from common import Row, log

from ocspd import crl as ocspd_crl
from ocspd.status import Status
from ocspd.store import CertRecord, ImportCounts, Store
from ocspd.store.crls import MERGE_BATCH
from tests.crls import CrlServer

REPLICAS = 3
MODES = ("none", "postgres")
PARTS = ("revocation", "merge")
MERGE_SIZES = (100_000, 1_000_000)
INCREMENTAL_RUNS = 5
START_TIMEOUT = 60.0  # seconds for every replica to have the first CRL in force
CANARY = common.SERIAL_BASE  # listed in the base CRL; the targets follow it
KEY_COMPROMISE = 1  # reasonCode of the targets' entries


def seconds_list(text: str) -> list[float]:
    """``1,3`` or ``1s,3s`` or ``500ms``: poll intervals in seconds (whole milliseconds, at least 100 ms)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        ms = float(part[:-2]) if part.endswith("ms") else float(part.removesuffix("s")) * 1000
        if ms < 100 or ms != round(ms):
            raise argparse.ArgumentTypeError(f"{part}: a poll interval of whole milliseconds, 100 ms or more")
        values.append(ms / 1000)
    return values


def choices(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}")
        return items

    return parse


def sizes(text: str) -> list[int]:
    """``100000,1000000``; ``0`` or empty: none."""
    values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    return [n for n in values if n > 0]


# -- the CRLs and their distribution point ------------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    """One request the distribution point answered."""

    at: float  # perf_counter when answered
    replica: str  # the ?replica= of the replica's crl URL
    status: int  # 200 or 304
    number: int  # the CRL number of what a 200 carried (that of the CRL published then)


class LoggingCrlServer(CrlServer):
    """tests/crls.py's distribution point, logging each request (``Fetch``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fetches: list[Fetch] = []
        self.number = 0

    def publish_number(self, path: str, data: bytes, number: int) -> None:
        self.number = number
        self.publish(path, data)

    async def _get(self, request: web.Request) -> web.Response:
        number = self.number  # CrlServer._get does not wait: it serves what is published now
        response = await super()._get(request)
        self.fetches.append(Fetch(time.perf_counter(), request.query.get("replica", "?"), response.status, number))
        return response


@dataclass
class CrlSeries:
    """The base CRL (number 1: the random entries and the canary) and CRL 1 + k listing targets 1..k too."""

    ders: list[bytes]  # ders[0]: CRL number 1
    targets: list[int]
    entries: int  # of the base CRL
    build_seconds: float


def build_series(ca: Any, base_entries: int, revocations: int, rng: random.Random) -> CrlSeries:
    t0 = time.perf_counter()
    now = int(time.time())
    entries = crl_bench.make_entries(base_entries, rng, now)
    entries.encode_one(CANARY.to_bytes(4, "big"), now - 60, KEY_COMPROMISE)
    targets = [CANARY + 1 + k for k in range(revocations)]
    ders = []
    for k in range(revocations + 1):
        if k:
            entries.encode_one(targets[k - 1].to_bytes(4, "big"), now, KEY_COMPROMISE)
        this_update = now - 60 + k  # later with each number
        tbs = crl_bench.tbs_cert_list(
            ca, b"".join(entries.der), number=1 + k, this_update=this_update, next_update=this_update + 86400
        )
        ders.append(crl_bench.certificate_list(ca, tbs))
    trusted = ocspd_crl.verify(ocspd_crl.load(ders[-1]), ca.cert)  # as a replica will check them
    if trusted.number != revocations + 1 or len(trusted.entries) != base_entries + 1 + revocations:
        raise RuntimeError("the last CRL does not say what was built")
    return CrlSeries(ders, targets, base_entries + 1, time.perf_counter() - t0)


# -- asking the replicas ---------------------------------------------------------------------------


async def ask(session: aiohttp.ClientSession, port: int, der: bytes) -> str:
    async with session.post(
        f"http://{common.HOST}:{port}/", data=der, headers={"Content-Type": "application/ocsp-request"}
    ) as resp:
        return common.certificate_status(await resp.read())


@dataclass
class Watched:
    """One replica after one publication."""

    first_revoked: float = math.inf  # seconds from the publication to the answer
    polls: int = 0
    good_after_revoked: int = 0
    other: Counter[str] = field(default_factory=Counter)  # answers neither good nor revoked


async def watch(
    session: aiohttp.ClientSession,
    port: int,
    der: bytes,
    t0: float,
    interval: float,
    timeout: float,
    seen: asyncio.Event,
    done: asyncio.Event,
) -> Watched:
    """Ask every ``interval`` until "revoked" (``seen`` set then, or at ``timeout``), and on until ``done``."""
    w = Watched()
    while True:
        sent = time.perf_counter()
        status = await ask(session, port, der)
        now = time.perf_counter()
        w.polls += 1
        if status == "revoked":
            if w.first_revoked == math.inf:
                w.first_revoked = now - t0
                seen.set()
        elif status == "good":
            if w.first_revoked != math.inf:
                w.good_after_revoked += 1
        else:
            w.other[status] += 1
        if w.first_revoked == math.inf and now - t0 > timeout:
            seen.set()
            return w
        if w.first_revoked != math.inf and done.is_set():
            return w
        pause = interval - (now - sent)
        if pause > 0:
            await asyncio.sleep(pause)


async def until_all(
    sessions: list[aiohttp.ClientSession], ports: list[int], der: bytes, wanted: str, timeout: float
) -> float:
    """Ask every replica until each says ``wanted``; seconds waited."""
    start = time.perf_counter()
    pending = set(range(len(ports)))
    while pending:
        for i in sorted(pending):
            if await ask(sessions[i], ports[i], der) == wanted:
                pending.discard(i)
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"replicas {sorted(pending)} did not answer {wanted} within {timeout:g} s")
        if pending:
            await asyncio.sleep(0.05)
    return time.perf_counter() - start


# -- part 1: one setup at one poll interval -----------------------------------------------------


@dataclass
class Setup:
    mode: str  # "none" or "postgres"
    poll: float  # seconds
    dsn: str | None
    work: Path
    bench_pki: common.BenchPki
    series: CrlSeries
    ask_interval: float
    rng: random.Random
    keep_logs: bool = False
    procs: list[load.Process] = field(default_factory=list)


def replica_config(setup: Setup, i: int, port: int, url: str) -> Path:
    name = f"ocspd-{setup.mode}-{round(setup.poll * 1000)}ms-{i}.toml"
    path = setup.bench_pki.write_config(setup.work / name, port, database=setup.dsn, use_index=False)
    policy = "" if setup.dsn else 'crl_unlisted = "good"\n'  # with the table: unlisted serials are unknown
    path.write_text(path.read_text() + f'crl = "{url}?replica={i}"\n{policy}')
    return path


async def first_fetch(server: LoggingCrlServer, replica: int, proc: load.Process, timeout: float) -> float:
    """When the distribution point answered replica ``replica``'s first request (perf_counter)."""
    start = time.perf_counter()
    while True:
        for f in server.fetches:
            if f.replica == str(replica):
                return f.at
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{proc.name} fetched no CRL within {timeout:g} s:\n{proc.log_tail()}")
        await asyncio.sleep(0.01)


async def start_replicas(
    setup: Setup, server: LoggingCrlServer, ports: list[int], env: dict[str, str], label: str
) -> list[float]:
    """Start the replicas one by one, out of step: replica i's rounds at i/3 of a poll interval after
    replica 0's, plus up to a third of one at random (started at once, replicas without a database poll
    together and all see a new CRL at the same moment; in service they started at unrelated times).
    Replica 0's start-up (to its first fetch) tells when to start the others; returns the phases aimed at."""
    poll = setup.poll
    tick = latency = 0.0
    aimed = [0.0]
    for i, port in enumerate(ports):
        if i:
            aimed.append(i * poll / REPLICAS + setup.rng.uniform(0, poll / REPLICAS))
            at = tick - latency + aimed[i]
            while at < time.perf_counter():
                at += poll
            await asyncio.sleep(at - time.perf_counter())
        config = replica_config(setup, i, port, server.url("ca.crl"))
        began = time.perf_counter()
        proc = load.start_process(f"ocspd-{label}-{i}", load.ocspd_args(config), setup.work, env=env)
        setup.procs.append(proc)
        if i == 0 or setup.dsn is None:  # with a database the others find the round claimed: no fetch
            fetched = await first_fetch(server, i, proc, START_TIMEOUT)
            if i == 0:
                tick, latency = fetched, fetched - began
        else:
            await asyncio.to_thread(load.wait_ready, proc, load.port_open(port))
    for proc, port in zip(setup.procs, ports, strict=True):
        await asyncio.to_thread(load.wait_ready, proc, load.port_open(port))
    return aimed


async def run_setup(setup: Setup) -> dict[str, Any]:
    """Start the distribution point and the replicas, measure every revocation, stop them all."""
    server = LoggingCrlServer()
    await server.start()
    series, poll = setup.series, setup.poll
    server.publish_number("ca.crl", series.ders[0], 1)
    ports = [common.free_port() for _ in range(REPLICAS)]
    env = {**load.OCSPD_ENV, "OCSPD_CRL_POLL": f"{round(poll * 1000)}ms", "OCSPD_CRL_RETRY": f"{round(poll * 1000)}ms"}
    sessions: list[aiohttp.ClientSession] = []
    label = f"{setup.mode}-{round(poll * 1000)}ms"
    try:
        phases = await start_replicas(setup, server, ports, env, label)
        timeout = aiohttp.ClientTimeout(total=10)
        sessions = [
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) for _ in range(REPLICAS)
        ]
        pki = setup.bench_pki
        started = await until_all(sessions, ports, pki.request_for(CANARY), "revoked", START_TIMEOUT)
        log(f"{label}: CRL 1 in force on every replica after {started:.2f} s; one poll interval more to settle")
        await asyncio.sleep(poll * 1.5)
        result = await revocations(setup, server, sessions, ports, started)
        result["phases_aimed_s"] = phases
        return result
    finally:
        for session in sessions:
            await session.close()
        for proc in setup.procs:
            await asyncio.to_thread(load.stop_process, proc)
        await server.close()


async def revocations(
    setup: Setup, server: LoggingCrlServer, sessions: list[aiohttp.ClientSession], ports: list[int], started: float
) -> dict[str, Any]:
    series, poll, pki = setup.series, setup.poll, setup.bench_pki
    timeout = 3 * poll + 15.0
    rows: list[dict[str, Any]] = []
    stale_sweeps = 0
    sweep_answers: Counter[str] = Counter()
    t_first = t_last = 0.0

    async def sweep(serials: list[int]) -> None:
        nonlocal stale_sweeps
        for serial in serials:
            der = pki.request_for(serial)
            for session, port in zip(sessions, ports, strict=True):
                status = await ask(session, port, der)
                sweep_answers[status] += 1
                stale_sweeps += status != "revoked"

    for k, serial in enumerate(series.targets, start=1):
        der = pki.request_for(serial)
        for session, port in zip(sessions, ports, strict=True):
            for _ in range(2):  # the second from memory: the new CRL must evict it
                status = await ask(session, port, der)
                if status != "good":
                    raise RuntimeError(f"replica on {port} answered {status} for target {k} before its CRL")
        seen = [asyncio.Event() for _ in ports]
        done = asyncio.Event()
        number = 1 + k
        t0 = time.perf_counter()
        server.publish_number("ca.crl", series.ders[k], number)
        t_first = t_first or t0
        tasks = [
            asyncio.create_task(watch(s, p, der, t0, setup.ask_interval, timeout, e, done))
            for s, p, e in zip(sessions, ports, seen, strict=True)
        ]
        await asyncio.gather(*(e.wait() for e in seen))
        all_seen = time.perf_counter() - t0
        gap = setup.rng.uniform(0, poll)  # the next publication: at a random moment of the poll phase
        await asyncio.sleep(gap)
        done.set()
        watched = await asyncio.gather(*tasks)
        t_last = time.perf_counter()
        deliveries = [f for f in server.fetches if f.status == 200 and f.number == number and f.at >= t0]
        first = min(deliveries, key=lambda f: f.at, default=None)
        per_replica_fetch = []
        for i in range(REPLICAS):
            own = [f.at - t0 for f in deliveries if f.replica == str(i)]
            per_replica_fetch.append(min(own) * 1000 if own else math.inf)
        replicas_ms = [w.first_revoked * 1000 for w in watched]
        row = {
            "number": number,
            "serial": f"{serial:x}",
            "replicas_ms": replicas_ms,
            "all_ms": max(replicas_ms),
            "all_seen_loop_ms": all_seen * 1000,
            "first_fetch_ms": (first.at - t0) * 1000 if first else math.inf,
            "first_fetch_replica": first.replica if first else None,
            "replica_fetch_ms": per_replica_fetch,
            "gap_s": gap,
            "polls": [w.polls for w in watched],
            "good_after_revoked": [w.good_after_revoked for w in watched],
            "other_answers": [dict(w.other) for w in watched],
        }
        rows.append(row)
        log(
            f"  CRL {number}: all revoked {row['all_ms']:.0f} ms (replicas "
            + ", ".join(f"{x:.0f}" for x in replicas_ms)
            + f"; first fetch {row['first_fetch_ms']:.0f} ms by replica {row['first_fetch_replica']})"
        )
        await sweep(series.targets[:k])
    await asyncio.sleep(poll)  # one more round (with a database: possibly claimed by a hollow replica)
    await sweep(series.targets)
    window = t_last - t_first
    # Each replica's rounds as the distribution point saw them: its first request of the window, after
    # replica 0's (modulo the poll interval).
    firsts = {f.replica: f.at for f in reversed(server.fetches) if t_first <= f.at <= t_last}
    phases = {r: round((at - firsts.get("0", at)) % poll, 3) for r, at in sorted(firsts.items())}
    log(f"  {len(series.targets)} revocations; phases of the replicas' requests after replica 0's: {phases}")
    in_window = [f for f in server.fetches if t_first <= f.at <= t_last]
    metrics = await asyncio.to_thread(crl_fetch_metrics, setup)
    return {
        "mode": setup.mode,
        "poll_s": poll,
        "start_s": started,
        "revocations": rows,
        "window_s": window,
        "fetches": len(in_window),
        "fetches_200": sum(1 for f in in_window if f.status == 200),
        "fetch_phases_s": phases,
        "fetches_by_replica": dict(sorted(Counter(f.replica for f in in_window).items())),
        "fetches_200_by_replica": dict(sorted(Counter(f.replica for f in in_window if f.status == 200).items())),
        "fetches_per_poll": len(in_window) * poll / window if window else math.nan,
        "fetches_200_per_poll": sum(1 for f in in_window if f.status == 200) * poll / window if window else math.nan,
        "fetch_log": [(round(f.at - t_first, 4), f.replica, f.status, f.number) for f in server.fetches],
        "stale_in_sweeps": stale_sweeps,
        "sweep_answers": dict(sweep_answers),
        "ocspd_crl_fetches_total": metrics,
    }


def crl_fetch_metrics(setup: Setup) -> list[dict[str, float]]:
    """Each replica's ``ocspd_crl_fetches_total`` by kind/result (its own count of its rounds' fetches)."""
    out = []
    for path in sorted(setup.work.glob(f"ocspd-{setup.mode}-{round(setup.poll * 1000)}ms-*.toml")):
        samples = common.metric_samples(common.admin_port(path), "ocspd_crl_fetches_total")
        out.append({f"{labels['crl']}/{labels['result']}": value for labels, value in samples if value})
    return out


def setup_rows(result: dict[str, Any]) -> list[Row]:
    mode, poll, measured = result["mode"], result["poll_s"], result["revocations"]
    label = f"{'no database' if mode == 'none' else 'PostgreSQL'}, poll {poll:g} s"
    all_ms = [r["all_ms"] for r in measured]
    lost = sum(1 for r in measured for x in r["replicas_ms"] if x == math.inf)
    good_after = sum(sum(r["good_after_revoked"]) for r in measured)
    polls = sum(sum(r["polls"]) for r in measured)
    others: Counter[str] = Counter()
    for r in measured:
        for answers in r["other_answers"]:
            others.update(answers)
    if mode == "none":  # each replica: its own fetch of the new CRL -> its first "revoked"
        processing = [
            x - f
            for r in measured
            for x, f in zip(r["replicas_ms"], r["replica_fetch_ms"], strict=True)
            if f != math.inf
        ]
        processing_what = "own fetch of the new CRL -> that replica revoked p50"
    else:  # the claimer's fetch -> every replica revoked (merge, NOTIFY, eviction, our next ask)
        processing = [r["all_ms"] - r["first_fetch_ms"] for r in measured if r["first_fetch_ms"] != math.inf]
        processing_what = "first fetch of the new CRL -> all replicas revoked p50"
    rows = []
    for q, name in ((50, "p50"), (99, "p99"), (100, "max")):
        value = common.percentile(all_ms, q)
        rows.append(Row.make(f"{label}: publish -> all {REPLICAS} revoked {name}", value, None, unit="ms"))
    for q, name in ((50, "p50"), (99, "p99"), (100, "max")):
        value = common.percentile(all_ms, q) / 1000 / poll
        target = "<= 1.25" if name == "max" else ""
        rows.append(Row.make(f"{label}: ... {name} / poll interval", value, None, target=target, ratio=False))
    rows += [
        Row.make(
            f"{label}: publish -> one replica revoked p50",
            common.percentile([x for r in measured for x in r["replicas_ms"]], 50),
            None,
            unit="ms",
        ),
        Row.make(f"{label}: {processing_what}", common.percentile(processing, 50), None, unit="ms"),
        Row.make(
            f'{label}: "good" after a replica said "revoked"',
            good_after + result["stale_in_sweeps"] + lost,
            None,
            target="<= 0",
            ratio=False,
            note=f"{good_after} while watched, {result['stale_in_sweeps']} in sweeps, {lost} never revoked;"
            f" {polls} asks" + (f"; other answers {dict(others)}" if others else ""),
        ),
        Row.make(
            f"{label}: CRL fetches per poll interval",
            result["fetches_per_poll"],
            None,
            target="<= 1.25" if mode == "postgres" else "",
            ratio=False,
            note=f"{result['fetches']} in {result['window_s']:.1f} s, by replica {result['fetches_by_replica']}",
        ),
        Row.make(
            f"{label}: ... of which full (200) per poll interval",
            result["fetches_200_per_poll"],
            None,
            note=f"{result['fetches_200']}, by replica {result['fetches_200_by_replica']}",
        ),
    ]
    return rows


def part_revocation(args: argparse.Namespace, details: dict[str, Any], pg: common.Postgres | None) -> list[Row]:
    rng = random.Random(args.seed)
    rows: list[Row] = []
    details["setups"] = []
    with common.work_dir("crl-replicas", args.keep) as work:
        bench_pki = common.make_pki(work, key_type="p256", issuer_id="bench")
        series = build_series(bench_pki.ca, args.base_entries, args.revocations, rng)
        log(
            f"built {len(series.ders)} CRLs in {series.build_seconds:.2f} s"
            f" ({series.entries:,} entries in the first, {len(series.ders[0]):,} B)"
        )
        details.update(crl_bytes_first=len(series.ders[0]), crl_bytes_last=len(series.ders[-1]))
        for mode in args.modes:
            for poll in args.polls:
                log(f"setup {mode}, poll {poll:g} s: {REPLICAS} replicas, {args.revocations} revocations")
                setup = Setup(mode, poll, None, work, bench_pki, series, args.ask_ms / 1000, rng)
                if mode == "none":
                    result = asyncio.run(run_setup(setup))
                else:
                    assert pg is not None
                    with common.fresh_database(pg, "crlrep") as dsn:
                        # the issued certificates: the canary and the targets are "good" until a CRL lists them
                        common.insert_serials(dsn, bench_pki.issuer_id, CANARY, args.revocations + 1)
                        setup.dsn = dsn
                        result = asyncio.run(run_setup(setup))
                new_rows = setup_rows(result)
                for row in new_rows:
                    log(f"  {row.measure}: {common._fmt(row.ocspd)} {row.unit} {row.note}".rstrip())
                rows += new_rows
                details["setups"].append(result)
    return rows


# -- part 2: the merge of a big CRL into ocspd_certificates --------------------------------------


def merge_records(n: int, rng: random.Random, now: int) -> list[CertRecord]:
    """``n`` revocations as a CRL gives them: distinct 20-octet serials, times over the past year,
    every third with a reason (bench/crl.py's choice of codes)."""
    octets = crl_bench.SERIAL_OCTETS
    raw = rng.randbytes(octets * n)
    records: list[CertRecord] = []
    seen: set[int] = set()
    for i in range(n):
        chunk = raw[octets * i : octets * (i + 1)]
        serial = int.from_bytes(bytes(((chunk[0] & 0x7F) or 1,)) + chunk[1:], "big")
        seen.add(serial)
        at = dt.datetime.fromtimestamp(rng.randrange(now - 365 * 86400, now - 3600), dt.UTC)
        code = crl_bench.REASON_CODES[rng.randrange(len(crl_bench.REASON_CODES))] if i % 3 == 0 else None
        reason = crl_bench.REASON_FLAGS[code] if code is not None else None
        records.append(CertRecord(serial, Status.REVOKED, at, reason))
    if len(seen) != n:
        raise RuntimeError("two random serials collided: another --seed")
    return records


def counts_dict(counts: ImportCounts) -> dict[str, int]:
    return {f.name: int(getattr(counts, f.name)) for f in dataclasses.fields(counts)}


async def merge_run(dsn: str, issuer: str, records: list[CertRecord], extra: list[CertRecord]) -> dict[str, Any]:
    """The merges of one size on an empty table (``extra``: the new entries, one at a time)."""
    store = Store(dsn)
    await store.open()
    result: dict[str, Any] = {}
    try:
        n = len(records)
        listed = {r.serial for r in records}

        async def timed(what: str, batch: list[CertRecord], expect: dict[str, int]) -> float:
            t0 = time.perf_counter()
            counts, released = await store.crls.merge(issuer, batch, listed)
            seconds = time.perf_counter() - t0
            got = counts_dict(counts)
            if any(got[key] != value for key, value in expect.items()) or released:
                raise RuntimeError(f"merge {what}: counts {got}, released {released}; expected {expect}")
            result.setdefault("counts", {})[what] = got
            return seconds

        log(f"  full merge of {n:,} revocations into an empty table")
        result["full_s"] = await timed("full", records, {"new": n})
        log(f"    {result['full_s']:.1f} s; the same again")
        result["again_s"] = await timed("again", records, {"unchanged": n, "new": 0})
        log(f"    {result['again_s']:.1f} s; {INCREMENTAL_RUNS} incremental merges of one new entry")
        incremental = []
        for record in extra[:INCREMENTAL_RUNS]:
            listed.add(record.serial)
            incremental.append(await timed("incremental", [record], {"new": 1}))
        result["incremental_s"] = incremental
        held = []
        for _ in range(INCREMENTAL_RUNS):
            t0 = time.perf_counter()
            await store.query("held_serials", {"issuer": issuer})
            held.append(time.perf_counter() - t0)
        result["held_serials_s"] = held
        last = extra[INCREMENTAL_RUNS]
        listed.add(last.serial)
        everything = [*records, *extra[:INCREMENTAL_RUNS], last]
        log("    the whole CRL again with one new entry (a hollow replica's round)")
        result["hollow_s"] = await timed(
            "hollow", everything, {"new": 1, "unchanged": n + INCREMENTAL_RUNS, "revoked": 0}
        )
        rows = await store.query("status", {"issuer": issuer, "serial": f"{last.serial:x}"})
        if not rows or rows[0][0] != "revoked":
            raise RuntimeError(f"the last merged serial reads {rows}")
    finally:
        await store.close()
    return result


def part_merge(args: argparse.Namespace, details: dict[str, Any], pg: common.Postgres) -> list[Row]:
    rng = random.Random(args.seed + 1)
    now = int(time.time())
    rows: list[Row] = []
    details["merges"] = {}
    for n in args.merge_sizes:
        log(f"merge of {n:,}: making the records")
        t0 = time.perf_counter()
        records = merge_records(n + INCREMENTAL_RUNS + 1, rng, now)
        extra = records[n:]
        del records[n:]
        made = time.perf_counter() - t0
        with common.fresh_database(pg, "crlmerge") as dsn:
            result = asyncio.run(merge_run(dsn, "bench", records, extra))
            result["table_bytes"] = common.sql_value(dsn, "SELECT pg_total_relation_size('ocspd_certificates')")
            result["rows"] = common.sql_value(dsn, "SELECT count(*) FROM ocspd_certificates")
        result["records_seconds"] = made
        details["merges"][str(n)] = result
        what = f"merge {n:,}"
        rows += [
            Row.make(
                f"{what}: full, into an empty table",
                result["full_s"],
                None,
                unit="s",
                note=f"{n / result['full_s']:,.0f} rows/s",
            ),
            Row.make(
                f"{what}: the same again (all unchanged)",
                result["again_s"],
                None,
                unit="s",
                note=f"{n / result['again_s']:,.0f} rows/s",
            ),
            Row.make(
                f"{what}: one new entry (incremental), median of {INCREMENTAL_RUNS}",
                statistics.median(result["incremental_s"]) * 1000,
                None,
                unit="ms",
                note="runs " + ", ".join(f"{x * 1000:.1f}" for x in result["incremental_s"]),
            ),
            Row.make(
                f"{what}: ... of which the held serials' query, median of {INCREMENTAL_RUNS}",
                statistics.median(result["held_serials_s"]) * 1000,
                None,
                unit="ms",
            ),
            Row.make(
                f"{what}: the whole CRL again with one new entry (a hollow replica's round)",
                result["hollow_s"],
                None,
                unit="s",
            ),
        ]
        for row in rows[-5:]:
            log(f"  {row.measure}: {common._fmt(row.ocspd)} {row.unit} {row.note}".rstrip())
        del records, extra
    return rows


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=choices(PARTS), default=list(PARTS), help="revocation,merge (default both)")
    parser.add_argument("--modes", type=choices(MODES), default=list(MODES), help="none,postgres (default both)")
    parser.add_argument("--polls", type=seconds_list, default=[1.0, 3.0], help="[crl] poll intervals (default 1s,3s)")
    parser.add_argument("--revocations", type=int, default=10, help="revocations per setup and poll (default 10)")
    parser.add_argument("--base-entries", type=int, default=10_000, help="entries of the base CRL (default 10000)")
    parser.add_argument("--ask-ms", type=float, default=5.0, help="ms between asks of one replica (default 5)")
    parser.add_argument(
        "--merge-sizes",
        type=sizes,
        default=list(MERGE_SIZES),
        help="revocations merged (default 100000,1000000; 100000 alone skips the 1M merge, ~3 min of the run)",
    )
    parser.add_argument("--dsn", help="PostgreSQL server to create the databases on (default: see cold_miss.py)")
    parser.add_argument("--seed", type=int, default=15, help="random serials, times and pauses (default 15)")
    parser.add_argument("--out", help="results name: bench/results/<out>.json (default crl_replicas)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, replica logs)")
    args = parser.parse_args(argv)
    if not 1 <= args.revocations <= 200:
        parser.error("--revocations: 1 to 200")
    if args.base_entries < 0 or args.ask_ms <= 0:
        parser.error("--base-entries must be 0 or more, --ask-ms more than 0")
    started = time.perf_counter()
    details: dict[str, Any] = {
        "replicas": REPLICAS,
        "parts": args.parts,
        "modes": args.modes,
        "polls_s": args.polls,
        "revocations_per_setup": args.revocations,
        "base_entries": args.base_entries,
        "ask_ms": args.ask_ms,
        "merge_sizes": args.merge_sizes,
        "merge_batch": MERGE_BATCH,
        "seed": args.seed,
    }
    rows: list[Row] = []
    need_pg = ("merge" in args.parts and args.merge_sizes) or ("revocation" in args.parts and "postgres" in args.modes)
    if not need_pg:
        rows += part_revocation(args, details, None)
    else:
        with common.postgres(args.dsn) as pg:
            details["postgres"] = pg.origin
            if "revocation" in args.parts:
                rows += part_revocation(args, details, pg)
            if "merge" in args.parts and args.merge_sizes:
                rows += part_merge(args, details, pg)
    if not rows:
        parser.error("nothing to measure")
    common.report(args.out or "crl_replicas", rows, details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
