"""Floods of requests that cannot be answered from memory (issue 11): random serials,
nonces, 16-CertID requests, against a real ``ocspd serve`` process.

What must hold: every answer is an OCSP answer (a signed one or ``tryLater``:
never a 5xx, never internalError); past ``max_inflight_signatures`` the excess
gets ``tryLater`` within milliseconds; the memory tier stays within its
configured bounds; and a normal client asking for a cached answer meanwhile is
always served, with a p99 within ``NORMAL_P99`` (stated for these 2-core
machines, where the flood's own client shares the CPU with the server).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ocspd import pki
from tests.helpers import TestPki, build_pki, multi_request_der, outcome, request_der
from tests.serving import Served, start_serve, wait_http

FLOOD_SECONDS = float(os.environ.get("OCSPD_HOSTILE_SECONDS", "1.0"))  # each flood; slow mode: e.g. 30
FLOOD_CONNECTIONS = 48
MAX_INFLIGHT = 4
CACHE_ENTRIES = 2000
NORMAL_P99 = 0.25  # seconds
TRY_LATER_P99 = 0.10  # seconds: the excess is refused at once, not queued
RSS_GROWTH_LIMIT = 64 << 20  # bytes over the warmed-up process, after three floods


def _random_serial_request(template: ocsp.OCSPRequest, serial: int) -> bytes:
    """A request for ``serial`` with the template's issuer hashes (no certificate needed)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        template.issuer_name_hash, template.issuer_key_hash, serial, hashes.SHA1()
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _metric(session: aiohttp.ClientSession, served: Served, name: str) -> float:
    async with session.get(f"http://127.0.0.1:{served.admin}/metrics") as resp:
        text = await resp.text()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


async def _answer(session: aiohttp.ClientSession, url: str, der: bytes, test_pki: TestPki) -> str:
    async with session.post(url, data=der, headers={"Content-Type": "application/ocsp-request"}) as resp:
        return outcome(resp.status, await resp.read(), test_pki)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


async def _flood(
    served: Served, test_pki: TestPki, make: Callable[[int], bytes], normal: bytes
) -> tuple[Counter[str], list[float], list[float]]:
    """Flood for FLOOD_SECONDS; returns the flood's outcomes, tryLater latencies, normal latencies."""
    outcomes: Counter[str] = Counter()
    try_later: list[float] = []
    normal_times: list[float] = []
    stop = time.monotonic() + FLOOD_SECONDS
    counter = iter(range(1 << 40))
    connector = aiohttp.TCPConnector(limit=FLOOD_CONNECTIONS + 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def attacker() -> None:
            while time.monotonic() < stop:
                started = time.monotonic()
                got = await _answer(session, served.url, make(next(counter)), test_pki)
                outcomes[got] += 1
                if got == "tryLater":
                    try_later.append(time.monotonic() - started)

        async def client() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as own:
                while time.monotonic() < stop:
                    started = time.monotonic()
                    got = await _answer(own, served.url, normal, test_pki)
                    normal_times.append(time.monotonic() - started)
                    assert got == "signed", got
                    await asyncio.sleep(0.01)

        await asyncio.gather(client(), *(attacker() for _ in range(FLOOD_CONNECTIONS)))
    return outcomes, try_later, normal_times


@pytest.mark.timeout(120)
def test_floods_of_uncacheable_requests_are_bounded_and_a_normal_client_is_served(tmp_path: Path) -> None:
    asyncio.run(_floods(tmp_path))


async def _floods(tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path / "pki")
    env = {
        "OCSPD_RESPONSES_MAX_INFLIGHT_SIGNATURES": str(MAX_INFLIGHT),
        "OCSPD_CACHE_MAX_ENTRIES": str(CACHE_ENTRIES),
        "OCSPD_CACHE_MAX_BYTES": "4MiB",
    }
    served = await start_serve(test_pki, env)
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        await wait_http(f"http://127.0.0.1:{served.admin}/readyz")
        ca = test_pki.ca.cert
        normal = request_der(test_pki.leaves["good"].cert, ca)
        template = ocsp.load_der_ocsp_request(normal)
        leaves = [pki.make_leaf(test_pki.ca, 0x5000 + i, f"multi{i}.example.test").cert for i in range(16)]
        # Built once, a new nonce put in place each time: the flood's client must not be what is slow.
        multi = multi_request_der(leaves, ca, nonce=b"\xaa" * 16)
        at = multi.index(b"\xaa" * 16)
        floods: dict[str, Callable[[int], bytes]] = {
            "random serials": lambda n: _random_serial_request(template, int.from_bytes(os.urandom(8)) | 1 << 63),
            "nonces": lambda n: request_der(test_pki.leaves["good"].cert, ca, nonce=n.to_bytes(16, "big")),
            "16 CertIDs": lambda n: multi[:at] + n.to_bytes(16) + multi[at + 16 :],
        }
        async with aiohttp.ClientSession() as session:
            for _ in range(50):  # warm up: the normal answer cached, the process at its working size
                assert await _answer(session, served.url, normal, test_pki) == "signed"
            assert served.proc.pid is not None
            rss_before = _rss(served.proc.pid)
            report = {}
            for label, make in floods.items():
                outcomes, try_later, normal_times = await _flood(served, test_pki, make, normal)
                report[label] = (dict(outcomes), _p99(try_later), _p99(normal_times))
                assert set(outcomes) <= {"signed", "tryLater"}, (label, outcomes)
                assert outcomes["signed"] > 0, (label, outcomes)
                assert _p99(try_later) < TRY_LATER_P99, (label, report[label])
                assert _p99(normal_times) < NORMAL_P99, (label, report[label])
                entries = await _metric(session, served, "ocspd_memory_entries")
                assert entries <= CACHE_ENTRIES, (label, entries)
            growth = _rss(served.proc.pid) - rss_before
            print("floods:", report, f"RSS growth {growth / 2**20:.1f} MiB")
            assert growth < RSS_GROWTH_LIMIT, report
    finally:
        assert await served.stop() == 0
