"""ocspd (one process, index.txt) vs ``openssl ocsp`` as a responder (one process).

Both serve the same PKI made for the run — the same index.txt, CA,
delegated responder certificate and key (RSA-2048 by default) — and get
the same request DER by POST from the same client. openssl signs every
answer; ocspd answers from its memory tier after the first. Runs alternate
(openssl, ocspd, ocspd, openssl, ...).

`openssl ocsp` 3.0 spins forever on a connection that closes without a
request, which wrk's connections do at the end of a run: every openssl run
gets a fresh process, stopped by PID afterwards. (openssl cannot bind
127.0.0.1 only: it listens on all addresses for the few seconds it runs;
the clients only ever connect to 127.0.0.1.)

    python bench/vs_openssl.py                 # RSA-2048, 10 s a run, 2 rounds
    python bench/vs_openssl.py --key-type p256 --duration 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from typing import Any

import common
import load
from common import Row, log
from load import LoadResult, LoadSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of openssl and ocspd (default 2)")
    parser.add_argument(
        "--key-type", choices=("rsa2048", "p256"), default="rsa2048", help="CA and responder key type (rsa2048)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    client = load.choose_client(args.client)
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("the openssl CLI is not installed (apt-get install openssl)")
    details: dict[str, Any] = {"client": client, "duration": args.duration, "key_type": args.key_type}

    with common.work_dir("openssl", args.keep) as work:
        bench_pki = common.make_pki(work, key_type=args.key_type)
        der = bench_pki.request_for(bench_pki.leaves[0].cert.serial_number)
        port = common.free_port()
        config = bench_pki.write_config(work / "ocspd.toml", port)
        runs: dict[str, list[LoadResult]] = {"openssl": [], "ocspd": []}

        def spec(target_port: int) -> LoadSpec:
            return LoadSpec(
                port=target_port,
                body=der,
                connections=args.connections,
                threads=args.threads,
                duration=args.duration,
                check_body=True,
            )

        def openssl_run(rnd: int) -> None:
            openssl_port = common.free_port()
            cmd = [
                openssl, "ocsp", "-index", bench_pki.index_path.name, "-port", str(openssl_port),
                "-rsigner", bench_pki.responder_path.name, "-rkey", bench_pki.key_path.name,
                "-CA", bench_pki.ca_path.name, "-ndays", "1",
            ]  # fmt: skip
            # Readiness by a real request: a bare connect would make it spin.
            probe = load.answers_ocsp(openssl_port, der)
            with load.running(f"openssl-{rnd}", cmd, work, probe, cwd=work) as _:
                check = common.ocsp_post(openssl_port, der)
                if common.certificate_status(check.body) != "good":
                    raise SystemExit(f"openssl answered {check.body[:40]!r}")
                details.setdefault("openssl_response_bytes", len(check.body))
                result = load.run_load(spec(openssl_port), client, work, "openssl")
            runs["openssl"].append(result)
            log(f"round {rnd + 1} openssl {result.brief()}")

        def ocspd_run(rnd: int) -> None:
            result = load.run_load(spec(port), client, work, "ocspd")
            runs["ocspd"].append(result)
            log(f"round {rnd + 1} ocspd   {result.brief()}")

        with load.ocspd_server("ocspd", config, port, work):
            warm = common.ocsp_post(port, der)
            if warm.status != 200 or common.certificate_status(warm.body) != "good":
                raise SystemExit(f"ocspd answered {warm.status} {warm.body[:40]!r}")
            details["ocspd_response_bytes"] = len(warm.body)
            for rnd in range(args.rounds):
                if rnd % 2 == 0:
                    openssl_run(rnd)
                    ocspd_run(rnd)
                else:
                    ocspd_run(rnd)
                    openssl_run(rnd)

    ours = statistics.mean(r.rps for r in runs["ocspd"])
    theirs = statistics.mean(r.rps for r in runs["openssl"])
    rows = [
        Row.make(
            f"vs openssl ocsp ({args.key_type}) req/s",
            ours,
            theirs,
            unit="req/s",
            baseline_name="openssl ocsp",
            target=">= 8",
        ),
        Row.make(
            "vs openssl p50",
            statistics.median(r.p50_ms for r in runs["ocspd"]),
            statistics.median(r.p50_ms for r in runs["openssl"]),
            unit="ms",
            baseline_name="openssl ocsp",
        ),
    ]
    bad = sum((r.ocsp_errors or 0) + sum(r.errors.values()) for rs in runs.values() for r in rs)
    if bad:
        rows[0].note = f"{bad} errors or non-successful answers during the runs"
    details["runs"] = {k: [vars(r) for r in v] for k, v in runs.items()}
    common.report(args.out or "vs_openssl", rows, details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
