"""The pipelining attack (issue 11): a normal client's latency with and without clients
pipelining memory hits at ocspd.

One ``ocspd serve`` (index.txt, P-256 responder) per event loop (and per front with
``--fronts``). A prober opens a fresh connection every ``--interval`` for ``/healthz``
on the admin listener and for an OCSP GET of a cached answer (5 s timeout), first with
no flood, then with 1, 4 and 16 flooding connections (``--floods``), each writing
``--batch`` pipelined GETs of the cached answer per write in a loop and reading the
answers (tests/hostile/flood.py, in a process of its own). Reported per phase: probe
success, p50, p99 and max, against the same probes without a flood, and the flood's
answers per second.

    python bench/pipelining.py                          # 5 s phases, uvloop and asyncio, fast path
    python bench/pipelining.py --fronts fast,aiohttp    # also with [server] fast_http = false
    python bench/pipelining.py --tree /tmp/wt-before    # ocspd from another checkout (before/after)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import common
from common import Row, log

from tests.helpers import build_pki, request_der
from tests.hostile.clients import Probes, probe, probe_once, start_flood, start_ocspd, stop_process, uses_uvloop
from tests.serving import wait_http

P99_TARGET_MS = 50.0


async def _phases(args: argparse.Namespace, loop: str, front: str, work: Path) -> list[dict[str, Any]]:
    test_pki = build_pki(work / f"pki-{loop}-{front}")
    env = {"OCSPD_SERVER_FAST_HTTP": "true" if front == "fast" else "false", "OCSPD_LOG_LEVEL": "warning"}
    served = await start_ocspd(test_pki, env, loop=loop, tree=Path(args.tree).resolve())
    phases: list[dict[str, Any]] = []
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        if uses_uvloop(served.proc.pid) != (loop == "uvloop"):
            raise SystemExit(f"ocspd does not run on {loop}")
        der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
        path = "/" + quote(base64.b64encode(der).decode(), safe="")
        get = f"GET {path} HTTP/1.1\r\nHost: ocsp.test\r\n\r\n".encode()
        for _ in range(2):  # signed, then a memory hit
            if not isinstance(await probe_once(served.port, get, None, 5.0), float):
                raise SystemExit("ocspd did not answer the warm-up request")
        targets = {
            "ocsp GET": (served.port, get, None),
            "/healthz": (served.admin, b"GET /healthz HTTP/1.1\r\nHost: admin.test\r\n\r\n", None),
        }
        for floods in [0, *args.floods]:
            flood = None
            if floods:
                flood = await start_flood(served.port, path, floods, args.batch, args.duration + 0.5)
                await asyncio.sleep(0.5)
            try:
                probes = await probe(targets, args.duration, args.interval)
                flood_result: dict[str, float] = {}
                if flood is not None:
                    out, _ = await asyncio.wait_for(flood.communicate(), args.duration + 30)
                    flood_result = json.loads(out)
            finally:
                if flood is not None:
                    await stop_process(flood, 0)
            phase = {"loop": loop, "front": front, "floods": floods, "flood": flood_result, "probes": _stats(probes)}
            phases.append(phase)
            rate = flood_result.get("answers", 0) / max(flood_result.get("seconds", 1), 1e-9)
            log(f"{loop} {front} {floods:2d} flooding: " + "; ".join(probes.summary(t) for t in targets)
                + (f"; flood {rate:,.0f} answers/s" if floods else ""))  # fmt: skip
    finally:
        await served.stop()
    return phases


def _stats(probes: Probes) -> dict[str, dict[str, float]]:
    out = {}
    for target, latencies in probes.latencies.items():
        n, failed = len(latencies), len(probes.failures[target])
        out[target] = {
            "answered": n, "failed": failed, "success_pct": 100.0 * n / max(n + failed, 1),
            "p50_ms": probes.quantile(target, 0.5) * 1000, "p99_ms": probes.quantile(target, 0.99) * 1000,
            "max_ms": probes.quantile(target, 1.0) * 1000,
        }  # fmt: skip
    return out


def _rows(phases: list[dict[str, Any]]) -> list[Row]:
    rows = []
    idle = {(p["loop"], p["front"]): p["probes"] for p in phases if p["floods"] == 0}
    for phase in phases:
        if not phase["floods"]:
            continue
        key, where = (phase["loop"], phase["front"]), f"{phase['loop']}, {phase['front']}, {phase['floods']} flooding"
        for target, stats in phase["probes"].items():
            base = idle[key][target]
            rows.append(Row.make(f"{target} probe p50 ({where})", stats["p50_ms"], base["p50_ms"], unit="ms",
                                 baseline_name="no flood"))  # fmt: skip
            rows.append(Row.make(f"{target} probe p99 ({where})", stats["p99_ms"], base["p99_ms"], unit="ms",
                                 baseline_name="no flood", target=f"<= {P99_TARGET_MS:g}", ratio=False))  # fmt: skip
            rows.append(Row.make(f"{target} probe success ({where})", stats["success_pct"], unit="%",
                                 target=">= 100", ratio=False))  # fmt: skip
        flood = phase["flood"]
        rows.append(Row.make(f"flood answers/s ({where})", flood["answers"] / flood["seconds"], unit="/s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of probing per phase (default 5)")
    parser.add_argument("--floods", default="1,4,16", help="flooding connections per phase (default 1,4,16)")
    parser.add_argument("--batch", type=int, default=2000, help="pipelined GETs per write (default 2000)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between probes (default 0.02)")
    parser.add_argument("--loops", default="uvloop,asyncio", help="event loops ocspd runs on (default both)")
    parser.add_argument("--fronts", default="fast", help="fast (fast_http = true) and/or aiohttp (default fast)")
    parser.add_argument("--tree", default=str(common.REPO), help="the checkout whose ocspd is served (PYTHONPATH)")
    parser.add_argument("--out", help="results name: bench/results/<out>.json (default pipelining)")
    args = parser.parse_args(argv)
    args.floods = [int(n) for n in args.floods.split(",") if n.strip()]
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    fronts = [name.strip() for name in args.fronts.split(",") if name.strip()]
    if not set(loops) <= {"uvloop", "asyncio"} or not set(fronts) <= {"fast", "aiohttp"}:
        parser.error("--loops: uvloop, asyncio; --fronts: fast, aiohttp")
    started = time.perf_counter()
    phases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ocspd-bench-pipelining-") as work:
        for loop in loops:
            for front in fronts:
                phases += asyncio.run(_phases(args, loop, front, Path(work)))
    details = {"tree": args.tree, "batch": args.batch, "interval": args.interval, "duration": args.duration,
               "phases": phases}  # fmt: skip
    common.report(args.out or "pipelining", _rows(phases), details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
