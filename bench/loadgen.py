"""A pure-Python load generator, used by the bench scripts when wrk is absent.

N concurrent keep-alive connections (aiohttp client, uvloop when installed)
send the request of a LoadSpec (see common.py) until the duration or the
request count is reached, or SIGINT/SIGTERM arrives; then one line
``LOADGEN_JSON {...}`` with the same fields as a wrk run goes to stdout.

It is much slower than wrk (the client, not the server, is then often the
limit), so ratios measured with it understate a fast server: use wrk.

    python bench/loadgen.py --port 8080 --duration 5 --body-hex 3045...
    python bench/loadgen.py --spec spec.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
from common import HOST, percentile
from load import LoadResult, LoadSpec


async def generate(spec: LoadSpec) -> LoadResult:
    """Run the load described by ``spec``; returns its summary."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    url = f"http://{HOST}:{spec.port}{spec.path}"
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "status": 0, "timeout": 0}
    ocsp_errors = 0
    issued = 0
    headers = {"Content-Type": "application/ocsp-request"}
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    connector = aiohttp.TCPConnector(limit=spec.connections, limit_per_host=spec.connections)
    start = time.perf_counter()
    deadline = start + spec.duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued, ocsp_errors
        while not stop.is_set() and time.perf_counter() < deadline:
            if spec.max_requests and issued >= spec.max_requests:
                return
            i = issued
            issued += 1
            body: bytes | None = None
            if spec.template is not None:
                body = spec.template.der(i)
            elif spec.method == "POST":
                body = spec.body
            t0 = time.perf_counter()
            try:
                async with session.request(spec.method, url, data=body, headers=headers if body else None) as resp:
                    data = await resp.read()
                    if resp.status >= 400:
                        errors["status"] += 1
                    if spec.check_body and (resp.status != 200 or len(data) < 16):
                        ocsp_errors += 1
            except TimeoutError:
                errors["timeout"] += 1
                continue
            except aiohttp.ClientConnectionError:
                errors["read"] += 1
                await asyncio.sleep(0.01)
                continue
            latencies.append(time.perf_counter() - t0)
            if spec.delay_ms > 0:
                await asyncio.sleep(spec.delay_ms / 1000)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        # Workers end at the deadline, at the count, or after their request in
        # flight once SIGINT/SIGTERM has set ``stop``.
        tasks = [asyncio.create_task(worker(session)) for _ in range(spec.connections)]
        try:
            await asyncio.gather(*tasks)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    return LoadResult(
        client="python",
        requests=len(latencies),
        duration_s=elapsed,
        rps=len(latencies) / elapsed if elapsed else 0.0,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        max_ms=max(ms) if ms else float("nan"),
        errors={k: v for k, v in errors.items() if v},
        connections=spec.connections,
        ocsp_errors=ocsp_errors if spec.check_body else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, help="a LoadSpec as JSON (what the bench scripts pass)")
    parser.add_argument("--port", type=int, help="server port on 127.0.0.1 (without --spec)")
    parser.add_argument("--path", default="/", help="request path (default /)")
    parser.add_argument("--body-hex", default="", help="POST this body (hex); without it: GET")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=0, help="stop after this many (0: duration only)")
    args = parser.parse_args(argv)
    if args.spec is not None:
        spec = LoadSpec.from_json(json.loads(args.spec.read_text()))
    elif args.port is not None:
        body = bytes.fromhex(args.body_hex)
        spec = LoadSpec(
            port=args.port,
            method="POST" if body else "GET",
            path=args.path,
            body=body,
            connections=args.connections,
            duration=args.duration,
            max_requests=args.max_requests,
        )
    else:
        parser.error("give --spec or --port")
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(generate(spec))
    else:
        result = uvloop.run(generate(spec))
    print("LOADGEN_JSON " + json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
