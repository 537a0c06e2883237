"""The hit-path baseline: a bare aiohttp handler returning fixed bytes.

It answers POST on / (reading the body, as ocspd does) and GET on any path
with the same response body and headers that ocspd sent for the request
under test, run the way ``ocspd serve`` runs its app (AppRunner, no access
log, one process). What ocspd does beyond this is its hit-path cost.

``--work`` adds one piece of ocspd's per-request work at a time, to
attribute the difference (hit_path.py --variants runs them):

- ``parse``: ocspd's ``parse_request`` (after ``decode_get_path`` for GET)
  and a dict lookup by (hash name, serial);
- ``parse-metrics``: that, plus a labelled prometheus_client Counter.inc()
  and Histogram.observe() per request, as ocspd counts requests;
- ``rawcache``: a dict from the raw request (POST body, GET path) to the
  cache key, parsing only a request never seen before;
- ``lowlevel``: no extra work, but served by aiohttp's low-level server
  (``web.Server``, no router) as ``ocspd serve`` serves its app
  (ocspd/web/runner.py): the bare handler ocspd's front competes with.
- ``protocol``: no aiohttp at all, a bare ``asyncio.Protocol`` that finds
  the end of each request (head, then Content-Length bytes) and writes the
  same response bytes: the ceiling for a Python server on this loop, next to
  which ocspd's fast path (ocspd/web/fast.py) shows what its parsing, checks
  and lookup cost.

    python bench/bare_server.py --port 8081 --body response.der --headers headers.json [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

WORK = ("none", "parse", "parse-metrics", "rawcache", "lowlevel", "protocol")


def make_work(work: str) -> Callable[[bytes | str], object]:
    """The per-request extra of ``--work``: called with the POST body or the GET path tail."""
    if work in ("none", "lowlevel", "protocol"):
        return lambda raw: None
    from ocspd.protocol import decode_get_path, parse_request

    table: dict[tuple[str, int], bytes] = {}

    def parse(raw: bytes | str) -> object:
        der = raw if isinstance(raw, bytes) else decode_get_path(raw)
        certid = parse_request(der).certids[0]
        return table.get((certid.hash_name, certid.serial))

    if work == "parse":
        return parse
    if work == "rawcache":
        seen: dict[bytes | str, tuple[str, int]] = {}

        def rawcache(raw: bytes | str) -> object:
            key = seen.get(raw)
            if key is None:
                der = raw if isinstance(raw, bytes) else decode_get_path(raw)
                certid = parse_request(der).certids[0]
                key = seen[raw] = (certid.hash_name, certid.serial)
            return table.get(key)

        return rawcache
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    requests = Counter("bench_requests", "requests", ["method", "status"], registry=registry)
    seconds = Histogram("bench_request_seconds", "latency", ["method"], registry=registry)
    counted = {m: requests.labels(m, "successful") for m in ("POST", "GET")}
    timed = {m: seconds.labels(m) for m in ("POST", "GET")}

    def parse_metrics(raw: bytes | str) -> object:
        started = time.perf_counter()
        found = parse(raw)
        method = "POST" if isinstance(raw, bytes) else "GET"
        counted[method].inc()
        timed[method].observe(time.perf_counter() - started)
        return found

    return parse_metrics


def make_app(body: bytes, headers: dict[str, str], work: str = "none") -> web.Application:
    extra = make_work(work)

    async def post(request: web.Request) -> web.Response:
        extra(await request.read())
        return web.Response(body=body, headers=headers)

    async def get(request: web.Request) -> web.Response:
        extra(request.raw_path[1:].split("?", 1)[0])
        return web.Response(body=body, headers=headers)

    app = web.Application(client_max_size=10000)
    app.router.add_post("/", post)
    app.router.add_get("/{tail:.*}", get)
    return app


def make_lowlevel(body: bytes, headers: dict[str, str]) -> web.Server:
    """The same answers from aiohttp's low-level server: a handler per method, no router."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            await request.read()
        return web.Response(body=body, headers=headers)

    return web.Server(handler, access_log=None)


class FixedAnswer(asyncio.Protocol):
    """Answers every complete request on the connection with ``answer`` (keep-alive, in order)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        while (end := buf.find(b"\r\n\r\n", pos)) >= 0:
            head = buf[pos:end].lower() + b"\r\n"
            at = head.find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
            if len(buf) < end + 4 + length:
                break
            pos = end + 4 + length
            assert self.transport is not None
            self.transport.write(self.answer)
        self.buf = buf[pos:]


async def serve_protocol(port: int, body: bytes, headers: dict[str, str]) -> None:
    head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    answer = f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FixedAnswer(answer), "127.0.0.1", port, reuse_address=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()


async def serve(port: int, app: web.Application | None, lowlevel: tuple[bytes, dict[str, str]] | None = None) -> None:
    runner: web.BaseRunner
    if lowlevel is not None:
        runner = web.ServerRunner(make_lowlevel(*lowlevel), handle_signals=False)
    else:
        assert app is not None
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--body", type=Path, required=True, help="file with the response body")
    parser.add_argument("--headers", type=Path, required=True, help="JSON object of response headers")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--work", choices=WORK, default="none", help="per-request work to add (default none)")
    args = parser.parse_args(argv)
    headers = {str(k): str(v) for k, v in json.loads(args.headers.read_text()).items()}
    body = args.body.read_bytes()
    if args.work == "lowlevel":
        main_coro = serve(args.port, None, (body, headers))
    elif args.work == "protocol":
        main_coro = serve_protocol(args.port, body, headers)
    else:
        main_coro = serve(args.port, make_app(body, headers, args.work))
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main_coro)
    else:
        asyncio.run(main_coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
