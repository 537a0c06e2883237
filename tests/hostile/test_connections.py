"""Idle sockets and slowloris heads cannot shut normal clients out (issue 11, item 5).

The real ``ocspd serve`` on the loop this test runs on (conftest.py), under the
file limit systemd gives a unit without ``LimitNOFILE=`` (1,024, soft and
hard: the issue's 1,100 idle sockets left a normal client 15 answers of 613
there), with a ``max_connections`` sized for it (``FILES`` minus ocspd's
reserve) and a short ``keepalive_timeout``. ``IDLE`` sockets are opened and
left silent, and a few connections send a request head one byte a second;
meanwhile a normal client asks for a cached answer over a fresh connection
every ``PROBE_INTERVAL``. What must hold:

- every one of the normal client's requests is answered (and none slowly);
- no idle or trickling connection stays open longer than the keep-alive
  timeout (plus the timer's slack); the ones closed sooner are exactly those
  the connection limit closed to make room (``ocspd_connections_limited_total``);
- the limit said so in one throttled log line, and nothing was logged as an error.
"""

from __future__ import annotations

import asyncio
import base64
import resource
from pathlib import Path
from urllib.parse import quote

import aiohttp

from ocspd.server import FILE_RESERVE
from tests.helpers import build_pki, request_der
from tests.hostile.clients import loop_name, probe, probe_once, start_ocspd, uses_uvloop
from tests.serving import wait_http

FILES = 1024  # systemd's default soft limit
MAX_CONNECTIONS = FILES - FILE_RESERVE - 256  # ocspd's reserve, and room to spare (no pool: index.txt)
IDLE = 2000
TRICKLING = 5
KEEPALIVE = 1.0  # seconds
SLACK = 1.5  # seconds: the keep-alive timer's own granularity (1 s) and a busy loop
PROBE_INTERVAL = 0.01
PROBE_P99 = 0.100  # seconds: a probe past the limit also makes room (closes one) first


def _raise_own_file_limit(needed: int) -> int:
    """This process's sockets: raise the soft limit up to the hard one; the count that fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return IDLE if soft == resource.RLIM_INFINITY else min(IDLE, soft - 256)


async def _open_idle(port: int, opened: dict[int, float], closed: dict[int, float], n: int) -> list[asyncio.Task[None]]:
    """``n`` silent connections; for each, when it was opened and when the server closed it."""
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened[i] = loop.time()
        try:
            await reader.read()  # b"" (or a reset) when the server closes it
        except ConnectionError:
            pass
        finally:
            closed[i] = loop.time()
            writer.close()

    tasks = []
    for start in range(0, n, 100):  # under the listen backlog, so no SYN waits on a retry
        batch = [asyncio.create_task(one(i)) for i in range(start, min(n, start + 100))]
        await asyncio.wait(batch, timeout=0.05)
        tasks += batch
    return tasks


async def _trickle(port: int, head: bytes) -> tuple[float, float]:
    """A head sent one byte a second until the server closes the connection: (opened, closed)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = loop.time()
    try:
        for byte in head:
            writer.write(bytes([byte]))
            try:
                if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                    break
            except TimeoutError:
                continue
    except ConnectionError:
        pass
    finally:
        writer.close()
    return opened, loop.time()


async def test_idle_and_trickling_connections_are_bounded_and_normal_clients_all_served(tmp_path: Path) -> None:
    idle = _raise_own_file_limit(IDLE + TRICKLING + 512)
    loop = loop_name()
    test_pki = build_pki(tmp_path / "pki")
    env = {"OCSPD_SERVER_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "OCSPD_SERVER_KEEPALIVE_TIMEOUT": f"{KEEPALIVE:g}s"}
    served = await start_ocspd(test_pki, env, loop=loop, file_limit=FILES)
    tasks: list[asyncio.Task[None]] = []
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        assert uses_uvloop(served.proc.pid) == (loop == "uvloop")
        der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
        get = f"GET /{quote(base64.b64encode(der).decode(), safe='')} HTTP/1.1\r\nHost: ocsp.test\r\n\r\n".encode()
        assert isinstance(await probe_once(served.port, get, None, 5.0), float)  # signed, now cached
        # The normal client is watched through the attack and a while after it (the p99's sample).
        watch_started = asyncio.get_running_loop().time()
        targets = {"ocsp GET": (served.port, get, None)}
        watching = asyncio.create_task(probe(targets, 3 * KEEPALIVE, PROBE_INTERVAL))
        opened: dict[int, float] = {}
        closed: dict[int, float] = {}
        tasks = await _open_idle(served.port, opened, closed, idle)
        slow = b"POST / HTTP/1.1\r\nHost: ocsp.test\r\nX-Slow: " + b"a" * 64
        trickles = await asyncio.gather(*(_trickle(served.port, slow) for _ in range(TRICKLING)))
        await asyncio.wait(tasks, timeout=KEEPALIVE + SLACK)
        probes = await watching
        watched = asyncio.get_running_loop().time() - watch_started
        assert len(closed) == len(opened) == idle, f"{idle - len(closed)} idle connections still open"
        idle_held = sorted(closed[i] - opened[i] for i in opened)
        trickle_held = sorted(end - start for start, end in trickles)
        print(
            f"{loop}: idle held {idle_held[0]:.2f}..{idle_held[-1]:.2f} s, trickling {trickle_held[0]:.2f}.."
            f"{trickle_held[-1]:.2f} s; {probes.summary('ocsp GET')}"
        )
        assert probes.failures["ocsp GET"] == [], probes.failures["ocsp GET"][:3]
        assert watched >= KEEPALIVE, watched  # the attack lasted as long as the timeouts let it
        assert len(probes.latencies["ocsp GET"]) >= watched / PROBE_INTERVAL / 4, probes.summary("ocsp GET")
        assert probes.quantile("ocsp GET", 0.99) <= PROBE_P99, probes.summary("ocsp GET")
        assert idle_held[-1] <= KEEPALIVE + SLACK and trickle_held[-1] <= KEEPALIVE + SLACK
        # Closed before the keep-alive timeout: only by the limit, and the limit closed no more.
        early = sum(1 for held in (*idle_held, *trickle_held) if held < KEEPALIVE - 0.25)
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{served.admin}/metrics") as r:
            metrics = await r.text()
        limited = {
            action: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith("ocspd_connections_limited_total{")
            for action in ("idle_closed", "refused") if f'action="{action}"' in line
        }  # fmt: skip
        assert limited["refused"] == 0  # there was always an idle one to close
        assert idle - MAX_CONNECTIONS <= early <= limited["idle_closed"], (early, limited)
    finally:
        for task in tasks:
            task.cancel()
        assert await served.stop() == 0
    log = (test_pki.directory / "serve.log").read_text()
    assert "level=error" not in log and "Traceback" not in log, log[-2000:]
    assert log.count("event=connection_limit") == 1, log[-2000:]  # the test is shorter than the throttle's 10 s
