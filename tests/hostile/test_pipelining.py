"""Clients pipelining thousands of memory hits per write cannot starve the others (issue 11, item 1).

The real ``ocspd serve`` (fast path on, as by default) on the loop this test runs
on (conftest.py: asyncio's, then uvloop's). A flood process keeps 1, then 4,
connections writing ``BATCH`` pipelined GETs of a cached answer per write, and
reads its answers; meanwhile a prober opens a fresh connection every
``PROBE_INTERVAL`` for ``/healthz`` on the admin listener and for an OCSP GET
of the cached answer. Every probe must succeed with the right body, within
``P99_BOUND`` at the 99th percentile. Before the fast path answered a bounded
share of a pipeline per loop turn (ocspd/web/fast.py), one such connection
made 3 of 4 probes time out at 5 s on uvloop.

The bound is stated for these machines: 2 shared vCPUs, so the flood's two
threads per connection, the server and the prober share two cores. With the
fix, p99 was 4-20 ms with 1 and 4 connections there (bench/README.md,
"Pipelining fairness"); 50 ms leaves room for the VM's noise and is still
50x under what broke (seconds, or timeouts).
``OCSPD_HOSTILE_SECONDS`` lengthens each phase (slow mode: e.g. 30).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from urllib.parse import quote

from tests.helpers import build_pki, request_der
from tests.hostile.clients import loop_name, probe, probe_once, start_flood, start_ocspd, stop_process, uses_uvloop
from tests.serving import wait_http

PHASE_SECONDS = float(os.environ.get("OCSPD_HOSTILE_SECONDS", "1.5"))
BATCH = 2000
PROBE_INTERVAL = 0.005
PROBE_TIMEOUT = 5.0
WARM_UP = 0.2  # seconds: the flood's connections are open and writing (tests/hostile/flood.py starts in ms)
P99_BOUND = 0.050  # seconds
# The flood is real: its connections get this many answers per second at least (~40k/s here).
FLOOD_MIN_RATE = 2000


async def test_pipelining_floods_leave_every_probe_answered_within_the_bound(tmp_path: Path) -> None:
    loop = loop_name()
    test_pki = build_pki(tmp_path / "pki")
    served = await start_ocspd(test_pki, {}, loop=loop)
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        assert uses_uvloop(served.proc.pid) == (loop == "uvloop")
        der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
        path = "/" + quote(base64.b64encode(der).decode(), safe="")
        get = f"GET {path} HTTP/1.1\r\nHost: ocsp.test\r\n\r\n".encode()
        assert isinstance(await probe_once(served.port, get, None, PROBE_TIMEOUT), float)  # signed, now cached
        body = await _body(served.port, get)
        targets = {
            "ocsp GET": (served.port, get, body),
            "/healthz": (served.admin, b"GET /healthz HTTP/1.1\r\nHost: admin.test\r\n\r\n", None),
        }
        for connections in (1, 4):
            flood = await start_flood(served.port, path, connections, BATCH, PHASE_SECONDS + 2 * WARM_UP)
            try:
                await asyncio.sleep(WARM_UP)
                probes = await probe(targets, PHASE_SECONDS, PROBE_INTERVAL, PROBE_TIMEOUT)
                out, _ = await asyncio.wait_for(flood.communicate(), PHASE_SECONDS + 30)
            finally:
                await stop_process(flood, 0)
            result = json.loads(out)
            assert result["answers"] >= FLOOD_MIN_RATE * result["seconds"], result
            for target in targets:
                summary = f"{connections} flooding connection(s) on {loop}: {probes.summary(target)}"
                print(summary)
                assert not probes.failures[target], (summary, probes.failures[target][:3])
                assert len(probes.latencies[target]) >= PHASE_SECONDS / PROBE_INTERVAL / 4, summary
                assert probes.quantile(target, 0.99) <= P99_BOUND, summary
    finally:
        assert await served.stop() == 0


async def _body(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        return await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()
