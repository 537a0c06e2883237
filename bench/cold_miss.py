"""Cold misses with the PostgreSQL tier vs the raw build+sign rate of `cryptography`.

A fresh database gets ``--rows`` certificates (INSERT ... SELECT
generate_series); ``ocspd serve`` (P-256 delegated responder, status from
PostgreSQL) then gets a different serial with every request, so each one is
a miss: one query for status and stored response, a signature, a
conditional write-back. The baseline is the rate at which this process
builds and signs one P-256 OCSP response with `cryptography` in a tight loop
(the same builder calls as ocspd's signer, responder certificate included),
measured before and after the load, in the same run.

PostgreSQL: --dsn, else $OCSPD_BENCH_DSN (a server where databases may be
created), else tests/pg.py's (a throwaway cluster, or the local server).

    python bench/cold_miss.py                  # wrk -t1 -c64, 10 s a run, 2 runs
    python bench/cold_miss.py --duration 3 --runs 1
    python bench/cold_miss.py --standby        # status reads from a hot standby (issue 13)

``--standby``: ocspd keeps ``dsn`` (write-backs) and ``listen_dsn`` on a
throwaway primary and reads statuses from a streaming hot standby of it
(``[database] read_dsn``, tests/pg.py; ``--apply-delay``, default 0: no
status changes here, so nothing is fenced out once the standby has the
rows). ``/metrics`` is scraped around each run: the fetch batches the
standby served, and those read again on the primary, by reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from typing import Any

import common
import load
from common import Row, log
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from load import LoadResult, LoadSpec


def raw_sign_rate(bench_pki: common.BenchPki, seconds: float) -> dict[str, float]:
    """Responses built and signed per second (and the bare sign() rate), one core, this process."""
    responder = bench_pki.responder
    this_update = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    next_update = this_update + dt.timedelta(hours=24)
    sha1, sha256 = hashes.SHA1(), hashes.SHA256()
    good = ocsp.OCSPCertStatus.GOOD
    der = serialization.Encoding.DER

    def build_and_sign(serial: int) -> bytes:
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            bench_pki.name_hash, bench_pki.key_hash, serial, sha1, good, this_update, next_update, None, None
        )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder.cert)
        builder = builder.certificates([responder.cert])
        return builder.sign(responder.key, sha256).public_bytes(der)

    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            build_and_sign(common.SERIAL_BASE + count)
            count += 1
    built = count / (time.perf_counter() - start)

    from cryptography.hazmat.primitives.asymmetric import ec

    key = responder.key
    data = b"x" * 400
    count, start = 0, time.perf_counter()
    deadline = start + seconds / 2
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = ec.ECDSA(sha256)
        while time.perf_counter() < deadline:
            for _ in range(50):
                key.sign(data, algorithm)
                count += 1
    signs = count / max(time.perf_counter() - start, 1e-9)
    return {"build_sign_per_s": built, "sign_only_per_s": signs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--runs", type=int, default=2, help="load runs, each on serials not asked before (default 2)")
    parser.add_argument(
        "--rows", type=int, default=0, help="certificates in the table (default: 30,000 per second of load, >= 100k)"
    )
    parser.add_argument("--sign-seconds", type=float, default=2.0, help="length of each raw-signing measurement")
    parser.add_argument("--dsn", help="PostgreSQL server to create the database on (default: see above)")
    what = "read statuses from a hot standby of a throwaway primary ([database] read_dsn, issue 13)"
    common.add_standby_args(parser, what=what, apply_delay="0")
    args = parser.parse_args(argv)
    if args.standby and args.dsn:
        parser.error("--standby makes its own primary and standby (tests/pg.py): --dsn is not used with it")
    started = time.perf_counter()
    client = load.choose_client(args.client)
    # Never ask the same serial twice: a repeat would be a memory hit. wrk has
    # no request-count bound, so the table holds more than the run can ask for.
    per_run = max(100_000, int(30_000 * args.duration) + 10_000)
    rows_wanted = max(args.rows, per_run * args.runs)
    details: dict[str, Any] = {"client": client, "duration": args.duration, "rows": rows_wanted}
    if args.standby:
        details.update(standby=True, apply_delay_ms=args.apply_delay)
    reads: list[dict[str, int]] = []  # --standby: fetch batches by "target/reason", per run
    scraped: list[dict[str, float]] = []  # --standby: ocspd_status_reads_total before the runs, after each

    standby_delay = args.apply_delay if args.standby else None
    with common.work_dir("miss", args.keep) as work, common.postgres_for(args.dsn, standby_delay, details) as pg:
        bench_pki = common.make_pki(work, key_type="p256")
        template = common.serial_template(bench_pki)
        sign_rates = [raw_sign_rate(bench_pki, args.sign_seconds)]
        log(f"raw build+sign: {sign_rates[0]['build_sign_per_s']:.0f}/s")
        with common.database_for(*pg, "miss") as (dsn, standby_dsn):
            log(f"inserting {rows_wanted:,} certificates")
            details["insert_seconds"] = common.insert_serials(dsn, bench_pki.issuer_id, common.SERIAL_BASE, rows_wanted)
            env = dict(load.OCSPD_ENV)
            if standby_dsn is not None:
                log("waiting for the standby to replay them")
                count = "SELECT count(*) FROM ocspd_certificates"
                details["standby_catch_up_s"] = common.wait_for_standby(dsn, standby_dsn, count)
                env["OCSPD_DATABASE_READ_DSN"] = standby_dsn
            port = common.free_port()
            config = bench_pki.write_config(work / "ocspd.toml", port, database=dsn, use_index=False)
            runs: list[LoadResult] = []
            cpu: list[dict[str, float]] = []
            with load.running("ocspd", load.ocspd_args(config), work, load.port_open(port), env=env) as proc:
                # Warm the pool with serials outside the measured range.
                for i in range(20):
                    warm = common.ocsp_post(port, template.der(rows_wanted - 1 - i))
                    if common.certificate_status(warm.body) != "good":
                        raise SystemExit(f"ocspd answered {warm.body[:40]!r} for a listed serial")
                stored_before = int(common.sql_value(dsn, "SELECT count(*) FROM ocspd_responses"))
                if standby_dsn is not None:
                    time.sleep(common.METRICS_SETTLE)
                    scraped.append(common.status_reads(common.admin_port(config)))
                offset = 0
                for rnd in range(args.runs):
                    shifted = common.SerialTemplate(template.prefix, template.suffix, template.base + offset)
                    spec = LoadSpec(
                        port=port,
                        template=shifted,
                        connections=args.connections,
                        threads=args.threads,
                        duration=args.duration,
                        check_body=True,
                    )
                    cpu0, busy0 = common.cpu_seconds(proc.pid), common.machine_busy_seconds()
                    result = load.run_load(spec, client, work, "miss")
                    per_request = 1e6 / max(result.requests, 1)
                    cpu.append(
                        {
                            "ocspd_us_per_request": (common.cpu_seconds(proc.pid) - cpu0) * per_request,
                            "machine_us_per_request": (common.machine_busy_seconds() - busy0) * per_request,
                        }
                    )
                    runs.append(result)
                    log(
                        f"run {rnd + 1}: {result.brief()}  ocspd cpu {cpu[-1]['ocspd_us_per_request']:.0f} us/req,"
                        f" machine {cpu[-1]['machine_us_per_request']:.0f} us/req"
                    )
                    if result.requests + 1000 > per_run:
                        log(f"WARNING: {result.requests} requests may have reached past {per_run} fresh serials")
                    offset += per_run
                    sign_rates.append(raw_sign_rate(bench_pki, args.sign_seconds))
                    log(f"raw build+sign: {sign_rates[-1]['build_sign_per_s']:.0f}/s")
                    if standby_dsn is not None:
                        time.sleep(max(0.0, common.METRICS_SETTLE - args.sign_seconds))
                        scraped.append(common.status_reads(common.admin_port(config)))
                        reads.append(common.status_reads_delta(scraped[-2:-1], scraped[-1:]))
                        log(f"run {rnd + 1}: fetch batches {reads[-1]}")
                stored = int(common.sql_value(dsn, "SELECT count(*) FROM ocspd_responses")) - stored_before

    ours = statistics.mean(r.rps for r in runs)
    raw = statistics.mean(s["build_sign_per_s"] for s in sign_rates)
    answered = sum(r.requests for r in runs)
    rows = [
        Row.make(
            "cold miss P-256 + Postgres, reads from a hot standby, req/s"
            if args.standby
            else "cold miss P-256 + Postgres, req/s",
            ours,
            raw,
            unit="/s",
            baseline_name="raw build+sign, 1 core",
            target=">= 0.5",
        ),
        Row.make("cold miss p50", statistics.median(r.p50_ms for r in runs), None, unit="ms"),
        Row.make("cold miss p99", max(r.p99_ms for r in runs), None, unit="ms"),
        Row.make(
            "cold miss: ocspd CPU per miss vs raw build+sign time",
            statistics.mean(c["ocspd_us_per_request"] for c in cpu),
            1e6 / raw,
            unit="us",
            baseline_name="raw",
        ),
        Row.make(
            "cold miss: whole-machine CPU per miss (ocspd, PostgreSQL, client)",
            statistics.mean(c["machine_us_per_request"] for c in cpu),
            None,
            unit="us",
        ),
    ]
    failures = sum((r.ocsp_errors or 0) + sum(r.errors.values()) for r in runs)
    if failures:
        rows[0].note = f"{failures} answers were errors (tryLater?) or failed"
    if args.standby:
        rows += standby_rows(reads, answered, details)
    details.update(
        raw_sign=sign_rates,
        cpu=cpu,
        stored_responses_written=stored,
        answered=answered,
        runs=[vars(r) for r in runs],
    )
    log(f"{answered} answers, {stored} responses written back to PostgreSQL (each a miss)")
    common.report(args.out or ("cold_miss_standby" if args.standby else "cold_miss"), rows, details, started)
    return 0


def standby_rows(reads: list[dict[str, int]], answered: int, details: dict[str, Any]) -> list[Row]:
    """--standby: the fetch batches of the runs, from the standby (fresh) and read again on the primary."""
    total: dict[str, int] = {}
    for run in reads:
        for key, n in run.items():
            total[key] = total.get(key, 0) + n
    primary = common.fallbacks(total)
    from_standby = sum(n for key, n in total.items() if key.split("/", 1)[0] != "primary")
    details.update(status_reads=total, status_reads_per_run=reads, primary_by_reason=primary)
    log(f"fetch batches over the runs: {total} (for {answered} misses)")
    rows = [
        Row.make(
            "fetch batches served by the standby (read_dsn/fresh)",
            from_standby,
            None,
            note=f"{answered / from_standby:.1f} misses a batch" if from_standby else "",
        ),
        Row.make(
            "fetch batches read again on the primary (all reasons)",
            sum(primary.values()),
            None,
            note=", ".join(f"{reason} {n}" for reason, n in primary.items()),
        ),
    ]
    rows += [Row.make(f"fetch batches read again on the primary: {reason}", n, None) for reason, n in primary.items()]
    return rows


if __name__ == "__main__":
    sys.exit(main())
