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
    args = parser.parse_args(argv)
    started = time.perf_counter()
    client = load.choose_client(args.client)
    # Never ask the same serial twice: a repeat would be a memory hit. wrk has
    # no request-count bound, so the table holds more than the run can ask for.
    per_run = max(100_000, int(30_000 * args.duration) + 10_000)
    rows_wanted = max(args.rows, per_run * args.runs)
    details: dict[str, Any] = {"client": client, "duration": args.duration, "rows": rows_wanted}

    with common.work_dir("miss", args.keep) as work, common.postgres(args.dsn) as server:
        details["postgres"] = server.origin
        bench_pki = common.make_pki(work, key_type="p256")
        template = common.serial_template(bench_pki)
        sign_rates = [raw_sign_rate(bench_pki, args.sign_seconds)]
        log(f"raw build+sign: {sign_rates[0]['build_sign_per_s']:.0f}/s")
        with common.fresh_database(server, "miss") as dsn:
            log(f"inserting {rows_wanted:,} certificates")
            details["insert_seconds"] = common.insert_serials(dsn, bench_pki.issuer_id, common.SERIAL_BASE, rows_wanted)
            port = common.free_port()
            config = bench_pki.write_config(work / "ocspd.toml", port, database=dsn, use_index=False)
            runs: list[LoadResult] = []
            cpu: list[dict[str, float]] = []
            with load.ocspd_server("ocspd", config, port, work) as proc:
                # Warm the pool with serials outside the measured range.
                for i in range(20):
                    warm = common.ocsp_post(port, template.der(rows_wanted - 1 - i))
                    if common.certificate_status(warm.body) != "good":
                        raise SystemExit(f"ocspd answered {warm.body[:40]!r} for a listed serial")
                stored_before = int(common.sql_value(dsn, "SELECT count(*) FROM ocspd_responses"))
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
                stored = int(common.sql_value(dsn, "SELECT count(*) FROM ocspd_responses")) - stored_before

    ours = statistics.mean(r.rps for r in runs)
    raw = statistics.mean(s["build_sign_per_s"] for s in sign_rates)
    answered = sum(r.requests for r in runs)
    rows = [
        Row.make(
            "cold miss P-256 + Postgres, req/s",
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
    details.update(
        raw_sign=sign_rates,
        cpu=cpu,
        stored_responses_written=stored,
        answered=answered,
        runs=[vars(r) for r in runs],
    )
    log(f"{answered} answers, {stored} responses written back to PostgreSQL (each a miss)")
    common.report(args.out or "cold_miss", rows, details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
