"""Where ``ocspd serve`` spends its time under load: a py-spy profile, summarised.

Starts ocspd as the other scripts do (hit: index.txt, the same request
again and again, answered from memory; miss: PostgreSQL, a new serial with
every request), puts it under wrk (or loadgen.py) load, and samples the
server process with ``py-spy record`` (install it into the venv: ``pip
install py-spy``; run as root or with ptrace permission). Prints the top
functions by own time and by inclusive time, as shares of all samples, and
writes the collapsed stacks (for flamegraph tools) next to the JSON.

    python bench/profile.py --path hit                # 10 s of POST hits
    python bench/profile.py --path hit --method GET
    python bench/profile.py --path bare               # the bare aiohttp baseline, same load
    python bench/profile.py --path miss --native      # include C/Rust frames (signing, libpq)
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common
import load
from common import Row, log
from load import BackgroundLoad, LoadSpec

_LINE = re.compile(r":\d+\)$")


def summarise(collapsed: str, top: int) -> dict[str, Any]:
    """Own and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    return {
        "samples": total,
        "own": [{"function": f, "share": c / total} for f, c in own.most_common(top)] if total else [],
        "inclusive": [{"function": f, "share": c / total} for f, c in inclusive.most_common(top)] if total else [],
        "own_by_package": [{"function": p, "share": c / total} for p, c in packages.most_common()] if total else [],
    }


def _package(frame: str) -> str:
    """'aiohttp', 'ocspd', 'asyncio', ... from 'func (aiohttp/x.py)'; native frames by library."""
    inside = frame[frame.rfind("(") + 1 : -1] if frame.endswith(")") else frame
    if "/" in inside:
        return inside.split("/", 1)[0]
    return inside.split(".", 1)[0] or "?"


@contextlib.contextmanager
def server_under_test(args: argparse.Namespace, work: Path) -> Iterator[tuple[int, load.Process, LoadSpec]]:
    bench_pki = common.make_pki(work, key_type=args.key_type)
    port = common.free_port()
    if args.path in ("hit", "bare"):
        der = bench_pki.request_for(bench_pki.leaves[0].cert.serial_number)
        config = bench_pki.write_config(work / "ocspd.toml", port)
        get = args.method == "GET"
        spec = LoadSpec(
            port=port,
            method=args.method,
            path=common.get_path(der) if get else "/",
            body=b"" if get else der,
            connections=args.connections,
            duration=args.duration + 4,
        )
        with load.ocspd_server("ocspd", config, port, work) as proc:
            answer = common.ocsp_post(port, der)
            if args.path == "hit":
                yield port, proc, spec
                return
            wanted = ("Content-Type", "Cache-Control", "Last-Modified", "Expires", "ETag")
            (work / "body.der").write_bytes(answer.body)
            (work / "headers.json").write_text(json.dumps({k: v for k, v in answer.headers.items() if k in wanted}))
            loop = "uvloop" if proc.uses_uvloop() else "asyncio"
        bare_port = common.free_port()
        cmd = [common.PYTHON, str(common.BENCH / "bare_server.py"), "--port", str(bare_port), "--body",
               str(work / "body.der"), "--headers", str(work / "headers.json"), "--loop", loop]  # fmt: skip
        with load.running("bare", cmd, work, load.port_open(bare_port)) as bare:
            yield bare_port, bare, dataclasses.replace(spec, port=bare_port)
        return
    template = common.serial_template(bench_pki)
    rows = max(200_000, int(30_000 * (args.duration + 4)))
    with common.postgres(args.dsn) as server, common.fresh_database(server, "profile") as dsn:
        common.insert_serials(dsn, bench_pki.issuer_id, common.SERIAL_BASE, rows)
        config = bench_pki.write_config(work / "ocspd.toml", port, database=dsn, use_index=False)
        with load.ocspd_server("ocspd", config, port, work) as proc:
            common.ocsp_post(port, template.der(rows - 1))
            spec = LoadSpec(
                port=port, template=template, connections=args.connections, duration=args.duration + 4, check_body=True
            )
            yield port, proc, spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument(
        "--path",
        choices=("hit", "miss", "bare"),
        default="hit",
        help="hit, miss, or bare (the hit-path baseline server, for comparison); default hit",
    )
    parser.add_argument("--method", choices=("POST", "GET"), default="POST", help="hit path: POST or GET")
    parser.add_argument("--key-type", choices=("p256", "rsa2048", "ed25519", "p384"), default="p256")
    parser.add_argument("--native", action="store_true", help="sample native frames too (py-spy --native)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument("--top", type=int, default=25, help="functions to list (default 25)")
    parser.add_argument("--dsn", help="PostgreSQL server for --path miss (default: see cold_miss.py)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    py_spy = shutil.which("py-spy") or str(Path(common.PYTHON).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    client = load.choose_client(args.client)
    name = args.out or f"profile_{args.path}" + ("_get" if args.path != "miss" and args.method == "GET" else "")
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    collapsed_path = common.RESULTS / f"{name}.collapsed.txt"

    with common.work_dir("profile", args.keep) as work, server_under_test(args, work) as (_, proc, spec):
        background = BackgroundLoad(spec, client, work, "profile-load")
        try:
            time.sleep(2)
            command = [
                py_spy,
                "record",
                "--pid",
                str(proc.pid),
                "--duration",
                str(round(args.duration)),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--output",
                str(collapsed_path),
            ]
            # Non-blocking sampling disturbs the server least, but cannot unwind native frames.
            command.append("--native" if args.native else "--nonblocking")
            log(f"sampling pid {proc.pid} for {args.duration:g} s")
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60, check=False)
            if done.returncode != 0:
                raise SystemExit(f"py-spy failed: {done.stderr.strip()[-1000:]}")
            result = background.stop()
        finally:
            background.kill()
    log(f"load while sampled: {result.brief()}")
    summary = summarise(collapsed_path.read_text(), args.top)
    for kind in ("own_by_package", "own", "inclusive"):
        print(f"\ntop functions by {kind} time ({summary['samples']} samples)")
        for item in summary[kind]:
            print(f"  {item['share'] * 100:5.1f}%  {item['function']}")
    rows = [Row.make(f"{args.path} path req/s while sampled", result.rps, None, unit="req/s")]
    details = {"path": args.path, "method": args.method, "load": vars(result), "collapsed": str(collapsed_path),
               **summary}  # fmt: skip
    common.report(name, rows, details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
