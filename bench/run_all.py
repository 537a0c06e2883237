"""Run every bench script in sequence and print one combined table.

Each script runs as its own process with short default settings and writes
bench/results/<name>.json; this one then writes bench/results/all.json
(every row, every command, the machine) and prints the table. One
PostgreSQL serves the scripts that need it (--dsn, $OCSPD_BENCH_DSN, or
tests/pg.py's throwaway cluster or local server). A script that fails is
reported and the others still run.

    python bench/run_all.py                      # ~5 minutes: 3 s load runs, 1M rows for scale
    python bench/run_all.py --full               # 10 s load runs, 10M rows (the insert takes minutes)
    python bench/run_all.py --only hit_path,memory
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from typing import Any

import common
from common import Row, log

SCRIPTS = ("hit_path", "vs_openssl", "cold_miss", "revocation", "memory", "scale")
NEEDS_POSTGRES = {"cold_miss", "revocation", "scale"}


def script_args(name: str, args: argparse.Namespace) -> list[str]:
    duration = ["--duration", f"{args.duration:g}"]
    client = ["--client", args.client]
    if name == "hit_path":
        return [*duration, *client, "--rounds", str(args.rounds)]
    if name == "vs_openssl":
        return [*duration, *client, "--rounds", str(args.rounds)]
    if name == "cold_miss":
        return [*duration, *client, "--runs", str(args.rounds)]
    if name == "revocation":
        return [*client, "--revocations", str(args.revocations)]
    if name == "memory":
        return ["--entries", str(args.entries)]
    if name == "scale":
        return ["--rows", str(args.scale_rows), "--requests", str(args.scale_requests)]
    raise AssertionError(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run (default 3; --full: 10)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds / runs per script (default 2)")
    parser.add_argument("--revocations", type=int, default=50, help="revocations measured (default 50)")
    parser.add_argument("--entries", type=int, default=100_000, help="memory-tier entries (default 100,000)")
    parser.add_argument("--scale-rows", type=int, default=1_000_000, help="large table for scale (1M; --full: 10M)")
    parser.add_argument("--scale-requests", type=int, default=1000, help="misses per table for scale (1000)")
    parser.add_argument("--full", action="store_true", help="the design's settings: 10 s runs, 10M rows")
    parser.add_argument("--only", help="comma-separated scripts to run (default all)")
    parser.add_argument("--skip", default="", help="comma-separated scripts to leave out")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto", help="load generator")
    parser.add_argument("--dsn", help="PostgreSQL server for the database scripts (default: see cold_miss.py)")
    parser.add_argument("--out", default="all", help="results name (default all)")
    args = parser.parse_args(argv)
    if args.full:
        args.duration = max(args.duration, 10.0)
        args.scale_rows = max(args.scale_rows, 10_000_000)
        args.scale_requests = max(args.scale_requests, 2000)
    started = time.perf_counter()
    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SCRIPTS)
    skipped = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = [s for s in [*chosen, *skipped] if s not in SCRIPTS]
    if unknown:
        parser.error(f"unknown scripts {unknown}; choose from {', '.join(SCRIPTS)}")
    chosen = [s for s in SCRIPTS if s in chosen and s not in skipped]

    outcomes: dict[str, dict[str, Any]] = {}
    rows: list[Row] = []
    database = common.postgres(args.dsn) if NEEDS_POSTGRES & set(chosen) else contextlib.nullcontext(None)
    with database as server:
        for name in chosen:
            command = [common.PYTHON, str(common.BENCH / f"{name}.py"), *script_args(name, args), "--out", name]
            if name in NEEDS_POSTGRES and server is not None:
                command += ["--dsn", server.dsn]
            log(f"== {name}: {' '.join(command[1:])}")
            t0 = time.perf_counter()
            done = subprocess.run(command, check=False)
            outcome: dict[str, Any] = {
                "command": " ".join(["python", *command[1:]]),
                "exit_status": done.returncode,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            path = common.RESULTS / f"{name}.json"
            if done.returncode == 0 and path.exists():
                result = json.loads(path.read_text())
                outcome["rows"] = result["rows"]
                rows.extend(Row(**row) for row in result["rows"])
            else:
                rows.append(Row(f"{name}: FAILED (exit {done.returncode})", None))
            outcomes[name] = outcome

    common.report(args.out, rows, {"scripts": outcomes}, started)
    failed = [name for name, o in outcomes.items() if o["exit_status"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
