"""Revocation reaching every replica, while the hit path is under load.

Three ``ocspd serve`` processes (replicas) share one fresh database. Each
gets a steady, modest load of cache hits (wrk, or loadgen.py, with a delay
per connection). Then certificates are revoked one at a time by SQL
(``SELECT ocspd_revoke(...)``), each after every replica has its "good"
answer in memory; an asyncio client polls every replica about once a
millisecond and records when each first answers "revoked" (parsed with
cryptography). The figure per revocation is the time from sending the
revoking statement until the last replica answered "revoked".

    python bench/revocation.py                       # 50 revocations
    python bench/revocation.py --revocations 10 --rate 200 --client python
    python bench/revocation.py --standby             # read_dsn on a hot standby 1 s behind

``--standby`` (issue 13): the replicas keep ``dsn`` and ``listen_dsn`` on a
throwaway primary and get ``[database] read_dsn`` (OCSPD_DATABASE_READ_DSN)
on a streaming hot standby of it that replays commits ``--apply-delay`` late
(tests/pg.py). Each replica is then watched for ``--watch-ms`` after the
revocation (longer than the delay): an answer "good" to a poll sent after
the revoking statement returned is counted (and one after the replica had
answered "revoked" would be a stale standby read served). ``/metrics`` of
every replica is scraped before and after: how many fetch batches the
standby served and how many were read again on the primary, by reason.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import common
import load
import psycopg
from common import Row, log
from load import BackgroundLoad, LoadSpec

REPLICAS = 3
TIMEOUT = 5.0  # seconds a replica may take before the revocation counts as lost


async def ask(session: aiohttp.ClientSession, port: int, der: bytes) -> str:
    async with session.post(
        f"http://{common.HOST}:{port}/", data=der, headers={"Content-Type": "application/ocsp-request"}
    ) as resp:
        return common.certificate_status(await resp.read())


async def wait_revoked(
    session: aiohttp.ClientSession, port: int, der: bytes, t0: float, interval: float
) -> tuple[float, int]:
    """Poll until the replica says revoked: (seconds since t0, polls made); inf on timeout."""
    polls = 0
    while True:
        sent = time.perf_counter()
        status = await ask(session, port, der)
        polls += 1
        now = time.perf_counter()
        if status == "revoked":
            return now - t0, polls
        if now - t0 > TIMEOUT:
            return float("inf"), polls
        pause = interval - (now - sent)
        if pause > 0:
            await asyncio.sleep(pause)


# How one replica is watched after a commit: (session, port, request, t0, commit seconds) ->
# {"seen_s": seconds from t0 to its first "revoked", "polls": n, and what else it records}.
Follow = Callable[[aiohttp.ClientSession, int, bytes, float, float], Awaitable[dict[str, Any]]]


async def revoke_each(
    dsn: str, ports: list[int], bench_pki: common.BenchPki, serials: list[int], gap: float, follow: Follow
) -> list[dict[str, Any]]:
    """For each serial: every replica answers "good" from memory, the revocation commits, and
    ``follow`` watches each replica; one row per revocation (``follow``'s other keys, per replica)."""
    results: list[dict[str, Any]] = []
    sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        for _ in ports
    ]
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
            for serial in serials:
                der = bench_pki.request_for(serial)
                # Each replica has the "good" answer in memory: the revocation must evict it.
                for session, port in zip(sessions, ports, strict=True):
                    for _ in range(2):
                        status = await ask(session, port, der)
                        if status != "good":
                            raise RuntimeError(f"replica on {port} answered {status} before the revocation")
                t0 = time.perf_counter()
                await cur.execute(
                    "SELECT ocspd_revoke(%s, %s, 'keyCompromise', now())", (bench_pki.issuer_id, f"{serial:x}")
                )
                committed = time.perf_counter() - t0
                watched = await asyncio.gather(
                    *(follow(s, p, der, t0, committed) for s, p in zip(sessions, ports, strict=True))
                )
                seen = [w["seen_s"] for w in watched]
                row = {
                    "serial": f"{serial:x}",
                    "commit_ms": committed * 1000,
                    "replicas_ms": [x * 1000 for x in seen],
                    "all_ms": max(seen) * 1000,
                }
                row.update({key: [w[key] for w in watched] for key in watched[0] if key != "seen_s"})
                results.append(row)
                await asyncio.sleep(gap)
    finally:
        for session in sessions:
            await session.close()
    return results


async def measure(
    dsn: str, ports: list[int], bench_pki: common.BenchPki, serials: list[int], interval: float, gap: float
) -> list[dict[str, Any]]:
    """Time from the revocation to every replica's first "revoked" (``wait_revoked``)."""

    async def follow(session: aiohttp.ClientSession, port: int, der: bytes, t0: float, _: float) -> dict[str, Any]:
        seen, polls = await wait_revoked(session, port, der, t0, interval)
        return {"seen_s": seen, "polls": polls}

    return await revoke_each(dsn, ports, bench_pki, serials, gap, follow)


async def watch_replica(
    session: aiohttp.ClientSession,
    port: int,
    der: bytes,
    t0: float,
    committed: float,
    interval: float,
    watch: float,
) -> dict[str, Any]:
    """Poll one replica (as ``wait_revoked``: from when the commit returned, ``committed`` s after t0)
    until ``watch`` seconds after the commit and its first "revoked": when that came, and every
    "good" (or other) answer, as ms after the commit: before that first "revoked" (the notification
    not handled yet: the answer came from memory), or after it (a stale read cached again)."""
    first_revoked = float("inf")
    polls = 0
    good_in_flight: list[float] = []
    good_after_revoked: list[float] = []
    other: dict[str, int] = {}
    while True:
        sent = time.perf_counter()
        status = await ask(session, port, der)
        polls += 1
        now = time.perf_counter()
        if status == "revoked":
            first_revoked = min(first_revoked, now - t0)
        elif status == "good":
            late_ms = (sent - t0 - committed) * 1000
            (good_in_flight if first_revoked == float("inf") else good_after_revoked).append(late_ms)
        else:
            other[status] = other.get(status, 0) + 1
        if first_revoked == float("inf"):
            if now - t0 > TIMEOUT:
                break  # lost
        elif now - t0 > committed + watch:
            break
        pause = interval - (now - sent)
        if pause > 0:
            await asyncio.sleep(pause)
    return {
        "seen_s": first_revoked,
        "polls": polls,
        "good_in_flight_ms": good_in_flight,
        "good_after_revoked_ms": good_after_revoked,
        "other_answers": other,
    }


async def measure_standby(
    dsn: str,
    ports: list[int],
    bench_pki: common.BenchPki,
    serials: list[int],
    interval: float,
    gap: float,
    watch: float,
) -> list[dict[str, Any]]:
    """``measure``, each replica watched until ``watch`` seconds after the commit (``watch_replica``)."""

    async def follow(
        session: aiohttp.ClientSession, port: int, der: bytes, t0: float, committed: float
    ) -> dict[str, Any]:
        return await watch_replica(session, port, der, t0, committed, interval, watch)

    return await revoke_each(dsn, ports, bench_pki, serials, gap, follow)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, duration=None, connections=4)
    parser.add_argument("--revocations", type=int, default=50, help="revocations measured (default 50)")
    parser.add_argument("--rate", type=float, default=1000.0, help="background hits per second per replica (1000)")
    parser.add_argument("--poll-ms", type=float, default=1.0, help="poll interval per replica (default 1 ms)")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between revocations (default 20 ms)")
    parser.add_argument("--dsn", help="PostgreSQL server to create the database on (default: see cold_miss.py)")
    what = "read_dsn on a hot standby of a throwaway primary, replaying --apply-delay late (issue 13)"
    common.add_standby_args(parser, what=what, apply_delay="1s")
    parser.add_argument(
        "--watch-ms",
        type=float,
        help="--standby: how long every replica is watched after each commit (default: the delay + 500 ms)",
    )
    args = parser.parse_args(argv)
    if args.standby and args.dsn:
        parser.error("--standby makes its own primary and standby (tests/pg.py): --dsn is not used with it")
    watch = (args.watch_ms if args.watch_ms is not None else args.apply_delay + 500.0) / 1000
    started = time.perf_counter()
    client = load.choose_client(args.client)
    details: dict[str, Any] = {
        "client": client,
        "replicas": REPLICAS,
        "rate_per_replica": args.rate,
        "poll_ms": args.poll_ms,
        "load_connections": args.connections,
    }
    if args.standby:
        details.update(standby=True, apply_delay_ms=args.apply_delay, watch_ms=watch * 1000)
    n = args.revocations + 1  # the first one (a canary) shows every listener is up; it is not counted
    load_serial = common.SERIAL_BASE
    targets = [common.SERIAL_BASE + 1 + i for i in range(n)]

    standby_delay = args.apply_delay if args.standby else None
    with common.work_dir("revoke", args.keep) as work, common.postgres_for(args.dsn, standby_delay, details) as pg:
        bench_pki = common.make_pki(work, key_type="p256")
        with common.database_for(*pg, "revoke") as (dsn, standby_dsn):
            common.insert_serials(dsn, bench_pki.issuer_id, common.SERIAL_BASE, n + 1000)
            env = dict(load.OCSPD_ENV)
            if standby_dsn is not None:
                count = "SELECT count(*) FROM ocspd_certificates"
                log(f"waiting for the standby to replay the certificates ({args.apply_delay} ms behind)")
                details["standby_catch_up_s"] = common.wait_for_standby(dsn, standby_dsn, count)
                env["OCSPD_DATABASE_READ_DSN"] = standby_dsn
            ports = [common.free_port() for _ in range(REPLICAS)]
            admin_ports: list[int] = []
            procs: list[load.Process] = []
            loads: list[BackgroundLoad] = []
            try:
                for i, port in enumerate(ports):
                    config = bench_pki.write_config(work / f"ocspd-{i}.toml", port, database=dsn, use_index=False)
                    admin_ports.append(common.admin_port(config))
                    proc = load.start_process(f"ocspd-{i}", load.ocspd_args(config), work, env=env)
                    procs.append(proc)
                for proc, port in zip(procs, ports, strict=True):
                    load.wait_ready(proc, load.port_open(port))
                load_der = bench_pki.request_for(load_serial)
                for port in ports:
                    for _ in range(3):
                        common.ocsp_post(port, load_der)
                # Load: hits on every replica, at a modest steady rate (delay per connection).
                delay_ms = args.connections * 1000.0 / args.rate if args.rate > 0 else 0.0
                for i, port in enumerate(ports):
                    spec = LoadSpec(
                        port=port,
                        body=load_der,
                        connections=args.connections,
                        threads=1,
                        duration=3600,
                        delay_ms=delay_ms,
                        check_body=True,
                    )
                    loads.append(BackgroundLoad(spec, client, work, f"load-{i}"))
                time.sleep(1.0)
                log(f"{REPLICAS} replicas under load; revoking {args.revocations} certificates one at a time")
                interval, gap = args.poll_ms / 1000, args.gap_ms / 1000
                if standby_dsn is None:
                    results = asyncio.run(measure(dsn, ports, bench_pki, targets, interval, gap))
                else:
                    time.sleep(common.METRICS_SETTLE)
                    reads_before = [common.status_reads(p) for p in admin_ports]
                    results = asyncio.run(measure_standby(dsn, ports, bench_pki, targets, interval, gap, watch))
                    time.sleep(common.METRICS_SETTLE)
                    reads_after = [common.status_reads(p) for p in admin_ports]
                load_results = [background.stop() for background in loads]
            finally:
                for background in loads:
                    background.kill()
                for proc in procs:
                    load.stop_process(proc)

    canary, measured = results[0], results[1:]
    if canary["all_ms"] == float("inf"):
        raise SystemExit("the canary revocation never reached every replica: is LISTEN working?")
    all_ms = [r["all_ms"] for r in measured]
    per_replica = [x for r in measured for x in r["replicas_ms"]]
    lost = sum(1 for x in all_ms if x == float("inf"))
    rows = [
        Row.make(f"revoke -> all {REPLICAS} replicas p50", common.percentile(all_ms, 50), None, unit="ms"),
        Row.make(
            f"revoke -> all {REPLICAS} replicas p99",
            common.percentile(all_ms, 99),
            None,
            unit="ms",
            target="<= 20",
            ratio=False,
            note=f"{lost} of {len(all_ms)} not seen within {TIMEOUT:g} s" if lost else "",
        ),
        Row.make("revoke -> one replica p50", common.percentile(per_replica, 50), None, unit="ms"),
        Row.make(
            "revoke: the SQL statement alone p50",
            statistics.median(r["commit_ms"] for r in measured),
            None,
            unit="ms",
        ),
        Row.make(
            "background hits during it (all replicas)",
            sum(r.rps for r in load_results),
            None,
            unit="req/s",
        ),
    ]
    details.update(revocations=measured, canary=canary, load=[vars(r) for r in load_results])
    if args.standby:
        rows += standby_rows(measured, common.status_reads_delta(reads_before, reads_after), details)
    common.report(args.out or ("revocation_standby" if args.standby else "revocation"), rows, details, started)
    return 0


def standby_rows(measured: list[dict[str, Any]], reads: dict[str, int], details: dict[str, Any]) -> list[Row]:
    """The --standby figures: the maximum, the "good" answers after the commit, the fetch batches by
    target and reason (the canary's included: the scrapes bracket every revocation)."""
    all_ms = [r["all_ms"] for r in measured]
    in_flight = [ms for r in measured for replica in r["good_in_flight_ms"] for ms in replica]
    stale = [ms for r in measured for replica in r["good_after_revoked_ms"] for ms in replica]
    lost = sum(1 for r in measured for x in r["replicas_ms"] if x == float("inf"))
    other: dict[str, int] = {}
    for r in measured:
        for answers in r["other_answers"]:
            for status, n in answers.items():
                other[status] = other.get(status, 0) + n
    primary = common.fallbacks(reads)
    from_standby = {key: n for key, n in reads.items() if key.split("/", 1)[0] != "primary"}
    polls = sum(sum(r["polls"]) for r in measured)
    details.update(
        status_reads=reads,
        primary_by_reason=primary,
        good_after_commit_in_flight=len(in_flight),
        good_after_revoked=len(stale),
        replicas_never_revoked=lost,
        other_answers=other,
        polls=polls,
    )
    rows = [
        Row.make(f"revoke -> all {REPLICAS} replicas max", max(all_ms), None, unit="ms"),
        Row.make(
            '"good" after the replica had answered "revoked", or never "revoked"',
            len(stale) + lost,
            None,
            target="<= 0",
            ratio=False,
            note=f"{len(stale)} stale answers, {lost} replicas never revoked; of {polls} polls",
        ),
        Row.make(
            '"good" after the commit returned, before the replica\'s first "revoked"',
            len(in_flight),
            None,
            note=f"from memory, NOTIFY not handled yet: latest poll sent {max(in_flight):.2f} ms after the commit"
            if in_flight
            else "",
        ),
        Row.make(
            "fetch batches served by the standby (read_dsn/fresh)",
            sum(from_standby.values()),
            None,
            note=", ".join(f"{key} {n}" for key, n in from_standby.items()),
        ),
    ]
    rows += [Row.make(f"fetch batches read again on the primary: {reason}", n, None) for reason, n in primary.items()]
    if other:
        rows.append(Row.make("other answers while watched", sum(other.values()), None, note=str(other)))
    log(
        f"after the commits: {len(in_flight)} good answers before a replica's first revoked (NOTIFY in flight),"
        f" {len(stale)} after it, {lost} replicas never revoked; fetch batches {reads}"
    )
    return rows


if __name__ == "__main__":
    sys.exit(main())
