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
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
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


async def measure(
    dsn: str, ports: list[int], bench_pki: common.BenchPki, serials: list[int], interval: float, gap: float
) -> list[dict[str, Any]]:
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
                waits = await asyncio.gather(
                    *(wait_revoked(s, p, der, t0, interval) for s, p in zip(sessions, ports, strict=True))
                )
                seen = [w[0] for w in waits]
                results.append(
                    {
                        "serial": f"{serial:x}",
                        "commit_ms": committed * 1000,
                        "replicas_ms": [x * 1000 for x in seen],
                        "all_ms": max(seen) * 1000,
                        "polls": [w[1] for w in waits],
                    }
                )
                await asyncio.sleep(gap)
    finally:
        for session in sessions:
            await session.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, duration=None, connections=4)
    parser.add_argument("--revocations", type=int, default=50, help="revocations measured (default 50)")
    parser.add_argument("--rate", type=float, default=1000.0, help="background hits per second per replica (1000)")
    parser.add_argument("--poll-ms", type=float, default=1.0, help="poll interval per replica (default 1 ms)")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between revocations (default 20 ms)")
    parser.add_argument("--dsn", help="PostgreSQL server to create the database on (default: see cold_miss.py)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    client = load.choose_client(args.client)
    details: dict[str, Any] = {
        "client": client,
        "replicas": REPLICAS,
        "rate_per_replica": args.rate,
        "poll_ms": args.poll_ms,
        "load_connections": args.connections,
    }
    n = args.revocations + 1  # the first one (a canary) shows every listener is up; it is not counted
    load_serial = common.SERIAL_BASE
    targets = [common.SERIAL_BASE + 1 + i for i in range(n)]

    with common.work_dir("revoke", args.keep) as work, common.postgres(args.dsn) as server:
        details["postgres"] = server.origin
        bench_pki = common.make_pki(work, key_type="p256")
        with common.fresh_database(server, "revoke") as dsn:
            common.insert_serials(dsn, bench_pki.issuer_id, common.SERIAL_BASE, n + 1000)
            ports = [common.free_port() for _ in range(REPLICAS)]
            procs: list[load.Process] = []
            loads: list[BackgroundLoad] = []
            try:
                for i, port in enumerate(ports):
                    config = bench_pki.write_config(work / f"ocspd-{i}.toml", port, database=dsn, use_index=False)
                    proc = load.start_process(f"ocspd-{i}", load.ocspd_args(config), work, env=load.OCSPD_ENV)
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
                results = asyncio.run(measure(dsn, ports, bench_pki, targets, args.poll_ms / 1000, args.gap_ms / 1000))
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
    common.report(args.out or "revocation", rows, details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
