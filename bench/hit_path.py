"""ocspd's memory-hit path vs a bare aiohttp handler returning the same bytes.

One ``ocspd serve`` (index.txt, P-256 responder by default) and one
``bare_server.py`` process (plus one on uvloop when it is installed) run
side by side. The same request is sent to both, POST and GET, after a
warm-up that puts the answer in ocspd's memory tier; the baseline returns
the very bytes and headers ocspd answered. Runs alternate (baseline, ocspd,
baseline, ocspd, ...) so that the machine's noise hits both alike, and the
ratio is taken against the baseline on the event loop ocspd runs on.

    python bench/hit_path.py                     # wrk -t1 -c64, 10 s a run, 2 rounds
    python bench/hit_path.py --duration 3 --rounds 1 --methods POST
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import common
import load
from common import Row, log
from load import LoadResult, LoadSpec

from ocspd.pki import KEY_TYPES


def _summary(results: list[LoadResult]) -> dict[str, float]:
    return {
        "rps": statistics.mean(r.rps for r in results),
        "p50_ms": statistics.median(r.p50_ms for r in results),
        "p99_ms": max(r.p99_ms for r in results),
        "errors": sum(sum(r.errors.values()) for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of baseline and ocspd (default 2)")
    parser.add_argument("--methods", default="POST,GET", help="comma-separated: POST, GET (default both)")
    parser.add_argument("--key-type", choices=KEY_TYPES, default="p256", help="responder key type")
    parser.add_argument("--no-uvloop", action="store_true", help="skip the uvloop baseline")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also run the baseline with parts of ocspd's work added (bare_server.py --work), on ocspd's loop",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    client = load.choose_client(args.client)
    methods = [m.strip().upper() for m in args.methods.split(",") if m.strip()]
    if not set(methods) <= {"POST", "GET"}:
        parser.error("--methods: POST and/or GET")
    details: dict[str, Any] = {"client": client, "duration": args.duration, "rounds": args.rounds}

    with common.work_dir("hit", args.keep) as work:
        bench_pki = common.make_pki(work, key_type=args.key_type)
        der = bench_pki.request_for(bench_pki.leaves[0].cert.serial_number)
        port = common.free_port()
        config = bench_pki.write_config(work / "ocspd.toml", port)
        with load.ocspd_server("ocspd", config, port, work) as ocspd_proc:
            # Warm-up: the first answer is signed and cached; later ones are hits.
            first = common.ocsp_post(port, der)
            if first.status != 200 or common.certificate_status(first.body) != "good":
                raise SystemExit(f"ocspd answered {first.status} {first.body[:40]!r}")
            answer = common.ocsp_post(port, der)
            get_path = common.get_path(der)
            by_get = common.http_request(port, "GET", get_path)
            if answer.body != first.body or by_get.body != first.body:
                raise SystemExit("ocspd's answers differ between requests: not a cache hit")
            wanted = ("Content-Type", "Cache-Control", "Last-Modified", "Expires", "ETag")
            headers = {k: v for k, v in answer.headers.items() if k in wanted}
            (work / "body.der").write_bytes(answer.body)
            (work / "headers.json").write_text(json.dumps(headers))
            ocspd_uvloop = ocspd_proc.uses_uvloop()
            details.update(
                response_bytes=len(answer.body),
                request_bytes=len(der),
                headers=headers,
                ocspd_loop="uvloop" if ocspd_uvloop else "asyncio",
                key_type=args.key_type,
            )
            log(f"response {len(answer.body)} bytes; ocspd runs on {details['ocspd_loop']}")

            loops = ["asyncio"]
            if not args.no_uvloop and common.have_uvloop():
                loops.append("uvloop")
            ocspd_loop = details["ocspd_loop"]
            variants = [(loop, "none") for loop in loops]
            if args.variants:
                variants += [(ocspd_loop, w) for w in ("parse", "parse-metrics", "rawcache", "lowlevel", "protocol")]
            servers: dict[str, int] = {"ocspd": port}
            pids: dict[str, int] = {"ocspd": ocspd_proc.pid}
            bare_procs = []
            try:
                for loop, extra in variants:
                    bare_port = common.free_port()
                    name = f"bare-{loop}" + ("" if extra == "none" else f"+{extra}")
                    cmd = [
                        common.PYTHON,
                        str(common.BENCH / "bare_server.py"),
                        "--port",
                        str(bare_port),
                        "--body",
                        str(work / "body.der"),
                        "--headers",
                        str(work / "headers.json"),
                        "--loop",
                        loop,
                        "--work",
                        extra,
                    ]
                    proc = load.start_process(name, cmd, work, env={"PYTHONPATH": str(common.REPO)})
                    bare_procs.append(proc)
                    load.wait_ready(proc, load.port_open(bare_port))
                    servers[name] = bare_port
                    pids[name] = proc.pid
                    check = common.ocsp_post(bare_port, der)
                    if check.body != answer.body:
                        raise SystemExit("the baseline does not return ocspd's bytes")

                runs: dict[str, dict[str, list[LoadResult]]] = {m: {s: [] for s in servers} for m in methods}
                # Server CPU time per request: steadier than req/s on a shared machine.
                cpu_us: dict[str, dict[str, list[float]]] = {m: {s: [] for s in servers} for m in methods}
                order = [s for s in servers if s != "ocspd"]
                for method in methods:
                    for rnd in range(args.rounds):
                        # baseline(s), ocspd; next round ocspd first, so neither always follows the other
                        sequence = [*order, "ocspd"] if rnd % 2 == 0 else ["ocspd", *order]
                        for server in sequence:
                            spec = LoadSpec(
                                port=servers[server],
                                method=method,
                                path="/" if method == "POST" else get_path,
                                body=der if method == "POST" else b"",
                                connections=args.connections,
                                threads=args.threads,
                                duration=args.duration,
                            )
                            cpu0 = common.cpu_seconds(pids[server])
                            result = load.run_load(spec, client, work, f"{server}-{method}")
                            cpu = common.cpu_seconds(pids[server]) - cpu0
                            runs[method][server].append(result)
                            cpu_us[method][server].append(cpu / max(result.requests, 1) * 1e6)
                            log(
                                f"{method} round {rnd + 1} {server:27s} {result.brief()}"
                                f"  cpu {cpu_us[method][server][-1]:.0f} us/req"
                            )
            finally:
                for proc in bare_procs:
                    load.stop_process(proc)

    same_loop = "bare-uvloop" if ocspd_uvloop and "bare-uvloop" in servers else "bare-asyncio"
    rows: list[Row] = []
    summaries: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        summaries[method] = {s: _summary(r) for s, r in runs[method].items()}
        for server, values in cpu_us[method].items():
            summaries[method][server]["cpu_us_per_request"] = statistics.mean(values)
        ours, base = summaries[method]["ocspd"], summaries[method][same_loop]
        rows.append(
            Row.make(
                f"hit {method} req/s", ours["rps"], base["rps"], unit="req/s", baseline_name=same_loop, target=">= 0.9"
            )
        )
        rows.append(Row.make(f"hit {method} p50", ours["p50_ms"], base["p50_ms"], unit="ms", baseline_name=same_loop))
        rows.append(
            Row.make(
                f"hit {method} p99 ({args.connections} conns)",
                ours["p99_ms"],
                base["p99_ms"],
                unit="ms",
                baseline_name=same_loop,
                target="<= 5",
                ratio=False,
            )
        )
        rows.append(
            Row.make(
                f"hit {method} server CPU per request",
                ours["cpu_us_per_request"],
                base["cpu_us_per_request"],
                unit="us",
                baseline_name=same_loop,
            )
        )
        for server in servers:
            if server in ("ocspd", same_loop):
                continue
            other = summaries[method][server]
            if "+" not in server:  # the baseline on the other event loop
                rows.append(
                    Row.make(
                        f"hit {method} req/s vs {server} (info)",
                        ours["rps"],
                        other["rps"],
                        unit="req/s",
                        baseline_name=server,
                    )
                )
            else:  # a baseline with part of ocspd's work added: its figure in the ocspd column
                rows.append(
                    Row.make(
                        f"variant {server} / {same_loop} req/s (info)",
                        other["rps"],
                        base["rps"],
                        unit="req/s",
                        baseline_name=same_loop,
                    )
                )
    details["summary"] = summaries
    details["runs"] = {m: {s: [vars(r) for r in rs] for s, rs in per.items()} for m, per in runs.items()}
    common.report(args.out or "hit_path", rows, details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
