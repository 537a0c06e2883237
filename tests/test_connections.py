"""``[server] max_connections`` (ocspd/web/connections.py) on both fronts, and the file
limit ``ocspd serve`` asks for at start (ocspd/server.py): past the limit the
longest-idle connection is closed, or the new one refused when none is idle,
counted and logged in one throttled line; the count stays right through
hand-overs, refusals and closes."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from ocspd.app import METRICS, RESPONDER
from ocspd.web.connections import NONE_IDLE_SECONDS, BoundedServer
from tests.conftest import OcspTestServer, Serve
from tests.helpers import TestPki, hold_after_fetch, post_bytes, read_answer, request_der

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[..., Awaitable[Conn]]

FRONTS = pytest.mark.parametrize("fast_http", [True, False], ids=["fast-path", "aiohttp"])


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open a client connection to a server (closed at the end of the test, whatever happens)."""
    writers: list[asyncio.StreamWriter] = []

    async def open_one(server: OcspTestServer, pause: float = 0.02) -> Conn:
        conn = await asyncio.open_connection("127.0.0.1", server.port)
        writers.append(conn[1])
        await asyncio.sleep(pause)  # accepted, and (aiohttp's side) waiting for its first request
        return conn

    yield open_one
    for writer in writers:
        writer.close()


def front(server: OcspTestServer) -> BoundedServer:
    assert server.runner is not None
    bounded = server.runner.server
    assert isinstance(bounded, BoundedServer)
    return bounded


def limited(server: OcspTestServer, action: str) -> float:
    value = server.app[METRICS].registry.get_sample_value("ocspd_connections_limited_total", {"action": action})
    assert value is not None
    return value


async def answered(conn: Conn, request: bytes) -> int:
    reader, writer = conn
    writer.write(request)
    return (await asyncio.wait_for(read_answer(reader), 10)).status


async def closed_by_server(conn: Conn, within: float = 2.0) -> bool:
    try:
        return await asyncio.wait_for(conn[0].read(), within) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def settle(server: OcspTestServer, expected_open: int) -> None:
    """Wait for the connections closed meanwhile to be gone from the count."""
    for _ in range(200):
        if front(server).open == expected_open:
            return
        await asyncio.sleep(0.01)
    assert front(server).open == expected_open


@FRONTS
async def test_past_the_limit_the_longest_idle_connection_is_closed_first(
    serve: Serve, connect: Connect, test_pki: TestPki, fast_http: bool, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(test_pki, fast_http, max_connections=3)
    request = post_bytes(request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
    a, b, c = [await connect(server) for _ in range(3)]
    for conn in (a, b, c, a):  # b is now the one idle longest
        assert await answered(conn, request) == 200
    caplog.set_level(logging.INFO, logger="ocspd.http")
    d = await connect(server)
    assert await closed_by_server(b)
    for conn in (c, a, d):
        assert await answered(conn, request) == 200
    assert limited(server, "idle_closed") == 1 and limited(server, "refused") == 0
    # Again: c is the longest idle now; one line for both, the second held back by the throttle.
    e = await connect(server)
    assert await closed_by_server(c)
    assert await answered(e, request) == 200
    assert limited(server, "idle_closed") == 2
    lines = [r for r in caplog.records if r.getMessage() == "connection_limit"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    for _, writer in (a, b, c, d, e):
        writer.close()
    await settle(server, 0)


@FRONTS
async def test_past_the_limit_with_none_idle_the_new_connection_is_refused(
    serve: Serve, connect: Connect, test_pki: TestPki, fast_http: bool
) -> None:
    server = await serve(test_pki, fast_http, max_connections=2)
    der = request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert)
    entered, release = hold_after_fetch(server.app[RESPONDER].issuers["test-ca"].source)
    busy = [await connect(server) for _ in range(2)]
    for _, writer in busy:
        writer.write(post_bytes(der))  # a miss each, held: an answer being produced on both
    await asyncio.wait_for(entered.wait(), 10)
    await asyncio.sleep(0.05)
    looks = 0
    look = front(server).idle_connections

    def counted() -> Iterator[tuple[float, object, Callable[[], None]]]:
        nonlocal looks
        looks += 1
        return look()

    front(server).idle_connections = counted  # type: ignore[method-assign]
    refused = await connect(server, 0)
    again = await connect(server, 0)  # right after: refused without another look over the connections
    assert await closed_by_server(refused) and await closed_by_server(again)
    assert limited(server, "refused") == 2 and limited(server, "idle_closed") == 0
    assert looks == 1
    release.set()
    for reader, _ in busy:
        assert (await asyncio.wait_for(read_answer(reader), 10)).status == 200
    await settle(server, 2)
    await asyncio.sleep(NONE_IDLE_SECONDS)
    # Idle now: a new connection makes room instead of being refused.
    late = await connect(server)
    assert await answered(late, post_bytes(der)) == 200
    assert limited(server, "idle_closed") == 1 and limited(server, "refused") == 2
    for _, writer in (*busy, refused, again, late):
        writer.close()
    await settle(server, 0)


async def test_a_connection_handed_over_to_aiohttp_counts_once(
    serve: Serve, connect: Connect, test_pki: TestPki
) -> None:
    server = await serve(test_pki, True, max_connections=2)
    good = post_bytes(request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
    handed = await connect(server)
    assert await answered(handed, good.replace(b"POST", b"PUT", 1)) == 405  # aiohttp's now
    fast = await connect(server)
    assert await answered(fast, good) == 200
    assert front(server).open == 2
    assert limited(server, "idle_closed") == 0  # two connections, limit two: nothing closed
    assert await answered(handed, good) == 200  # still open, on aiohttp's side
    third = await connect(server)  # the fast one is idle longest now
    assert await closed_by_server(fast)
    assert await answered(third, good) == 200 and await answered(handed, good) == 200
    for _, writer in (handed, fast, third):
        writer.close()
    await settle(server, 0)


@FRONTS
async def test_the_count_goes_back_to_zero_after_a_burst(
    serve: Serve, connect: Connect, test_pki: TestPki, fast_http: bool
) -> None:
    server = await serve(test_pki, fast_http, max_connections=5)
    good = post_bytes(request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
    conns = await asyncio.gather(*(connect(server, 0) for _ in range(40)))
    for i, (_, writer) in enumerate(conns):
        # Some hand over (PUT), some send half a head, some nothing; many are closed for room.
        writer.write(good.replace(b"POST", b"PUT", 1) if i % 3 == 0 else good[:20] if i % 3 == 1 else b"")
    await asyncio.sleep(0.2)
    assert front(server).open <= 5 + 1  # the limit (one may be arriving while another's close is pending)
    for _, writer in conns:
        writer.close()
    await settle(server, 0)
    assert limited(server, "idle_closed") >= 35


# -- the file limit at start ------------------------------------------------------------------------

_CHECK = """
import json, resource, sys
from ocspd import logs
from ocspd.config import load_config
from ocspd.server import ensure_file_limit, files_needed
logs.setup()
config = load_config(sys.argv[1], environ={"OCSPD_SERVER_MAX_CONNECTIONS": sys.argv[2]})
ensure_file_limit(config)
print(json.dumps([files_needed(config), *resource.getrlimit(resource.RLIMIT_NOFILE)]))
"""


def _check_file_limit(test_pki: TestPki, max_connections: int, soft: int, hard: int) -> tuple[list[int], str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    result = subprocess.run(
        [sys.executable, "-c", _CHECK, str(test_pki.config_path), str(max_connections)],
        capture_output=True, text=True, timeout=60, preexec_fn=limit, check=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    return json.loads(result.stdout), result.stderr


def test_start_up_raises_the_soft_file_limit_to_what_max_connections_needs(test_pki: TestPki) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2500:
        pytest.skip(f"hard file limit {hard} is below what this test raises to")
    (needed, soft, new_hard), log = _check_file_limit(test_pki, 2000, 1024, hard)
    assert needed > 2000 and soft == needed and new_hard == hard
    assert "event=file_limit_raised" in log and "level=warning" not in log, log


def test_start_up_warns_when_the_hard_file_limit_is_below_what_max_connections_needs(test_pki: TestPki) -> None:
    (needed, soft, hard), log = _check_file_limit(test_pki, 2000, 512, 1024)
    assert needed > 2000 and (soft, hard) == (1024, 1024)  # as far as it goes
    assert "event=file_limit_low" in log and "level=warning" in log and "max_connections=2000" in log, log
