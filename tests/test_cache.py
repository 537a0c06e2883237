"""The memory tier and singleflight (SPEC §1, invariants 4 and 8)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.x509 import ocsp

from ocspd.app import RESPONDER
from ocspd.cache import ENTRY_OVERHEAD, WINDOWS_MEMO, Entry, Flight, MemoryTier, Singleflight, windows
from ocspd.protocol import TRY_LATER
from ocspd.status import Served
from tests.conftest import AppClient
from tests.helpers import (
    T0,
    Clock,
    TestPki,
    build_pki,
    counting_signers,
    hold_after_fetch,
    request_der,
    verify_response,
)

WINDOWS = windows()


def entry(der: bytes = b"x" * 100, *, this_update: float = T0, hours: float = 24) -> Entry:
    return Entry(der, Served.GOOD, WINDOWS[(this_update, this_update + hours * 3600)])


def test_a_memo_makes_each_value_once_and_empties_when_full() -> None:
    from ocspd.memo import Memo

    made: list[int] = []

    def make(key: int) -> str:
        made.append(key)
        return str(key)

    memo = Memo(3, make)
    assert [memo[k] for k in (1, 2, 1, 3, 2)] == ["1", "2", "1", "3", "2"]
    assert made == [1, 2, 3] and len(memo) == 3
    assert memo[4] == "4" and dict(memo) == {4: "4"}  # full: emptied, then 4 kept
    assert memo.get(1) is None  # get() only looks
    with pytest.raises(ValueError, match="limit"):
        Memo(0, make)


def test_entries_of_one_window_share_it_and_the_memo_is_bounded() -> None:
    memo = windows()
    a, b = memo[(T0, T0 + 3600)], memo[(T0, T0 + 3600)]
    assert a is b
    assert (a.this.http, a.next.http) == ("Fri, 15 Jan 2027 08:00:00 GMT", "Fri, 15 Jan 2027 09:00:00 GMT")
    assert a.refresh_at == T0 + 1800
    for i in range(WINDOWS_MEMO + 10):
        memo[(T0 + i, T0 + i + 3600)]
    assert 0 < len(memo) <= WINDOWS_MEMO
    assert memo[(T0, T0 + 3600)] is not a  # made again once forgotten: the old one stays valid
    assert MemoryTier(1, 1, Clock()).windows is not MemoryTier(1, 1, Clock()).windows


def test_entry_is_served_until_its_refresh_point_only() -> None:
    clock = Clock()
    tier = MemoryTier(10, 10**6, clock)
    tier.put("k", entry())
    clock.now = T0 + 12 * 3600 - 1
    assert tier.get("k") is not None
    clock.now = T0 + 12 * 3600
    assert tier.get("k") is None
    assert len(tier) == 0


def test_entry_never_outlives_next_update() -> None:
    clock = Clock()
    tier = MemoryTier(10, 10**6, clock)
    e = entry(hours=1)
    assert e.refresh_at <= e.next_update
    clock.now = e.next_update
    assert tier.get("k") is None
    tier.put("k", e)  # already past its refresh point: not stored at all
    assert len(tier) == 0


def test_memory_tier_is_bounded_by_entries() -> None:
    tier = MemoryTier(3, 10**9, Clock())
    for i in range(10):
        tier.put(i, entry())
    assert len(tier) == 3
    assert tier.get(9) is not None and tier.get(0) is None


def test_memory_tier_is_bounded_by_bytes() -> None:
    size = 1000 + ENTRY_OVERHEAD
    tier = MemoryTier(10**6, 5 * size, Clock())
    for i in range(20):
        tier.put(i, entry(b"d" * 1000))
    assert len(tier) == 5
    assert tier.bytes == 5 * size


def test_memory_tier_evicts_least_recently_used() -> None:
    tier = MemoryTier(2, 10**9, Clock())
    tier.put("a", entry())
    tier.put("b", entry())
    tier.get("a")
    tier.put("c", entry())
    assert tier.get("a") is not None and tier.get("b") is None


def test_drop_and_clear_count_what_they_removed() -> None:
    tier = MemoryTier(10, 10**9, Clock())
    for key in "abc":
        tier.put(key, entry())
    assert tier.drop(["a", "z"]) == 1
    assert tier.clear() == 2


async def test_singleflight_runs_concurrent_work_once() -> None:
    flights: Singleflight[int] = Singleflight()
    runs = 0
    release = asyncio.Event()

    async def work(flight: Flight[int]) -> int:
        nonlocal runs
        runs += 1
        await release.wait()
        return 42

    callers = [asyncio.create_task(flights.do("k", work)) for _ in range(200)]
    await asyncio.sleep(0)
    assert len(flights) == 1
    release.set()
    assert await asyncio.gather(*callers) == [42] * 200
    assert runs == 1
    assert len(flights) == 0


async def test_singleflight_error_reaches_every_caller_and_leaves_no_entry() -> None:
    flights: Singleflight[int] = Singleflight()

    async def work(flight: Flight[int]) -> int:
        await asyncio.sleep(0)
        raise RuntimeError("signer broke")

    results = await asyncio.gather(*(flights.do("k", work) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(flights) == 0


async def test_singleflight_survives_cancelled_callers() -> None:
    flights: Singleflight[str] = Singleflight()
    release = asyncio.Event()

    async def work(flight: Flight[str]) -> str:
        await release.wait()
        return "done"

    first = asyncio.create_task(flights.do("k", work))
    second = asyncio.create_task(flights.do("k", work))
    await asyncio.sleep(0)
    first.cancel()  # the client that started the work went away
    await asyncio.sleep(0)
    release.set()
    assert await second == "done"
    assert first.cancelled()
    assert len(flights) == 0


async def test_singleflight_all_callers_cancelled_leaves_no_entry() -> None:
    flights: Singleflight[str] = Singleflight()

    async def work(flight: Flight[str]) -> str:
        await asyncio.sleep(0.01)
        return "done"

    callers = [asyncio.create_task(flights.do("k", work)) for _ in range(10)]
    await asyncio.sleep(0)
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    await flights.drain()
    assert len(flights) == 0


async def test_invalidate_marks_the_flight_stale() -> None:
    flights: Singleflight[bool] = Singleflight()
    started = asyncio.Event()
    release = asyncio.Event()

    async def work(flight: Flight[bool]) -> bool:
        started.set()
        await release.wait()
        return flight.stale

    task = asyncio.create_task(flights.do("k", work))
    await started.wait()
    flights.invalidate(["k"])
    release.set()
    assert await task is True


async def test_200_concurrent_misses_for_one_key_make_one_signature(ocspd_client: AppClient, test_pki: TestPki) -> None:
    signers = counting_signers(test_pki)
    client = await ocspd_client(test_pki, signers=signers)
    responder = client.app[RESPONDER]
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    # Hold the status read until all 200 requests have missed the memory tier,
    # so that they really are concurrent misses, not hits on a fast first answer.
    gate = asyncio.Event()
    source = responder.issuers["test-ca"].source
    real_fetch = source.fetch

    async def gated_fetch(*args: Any) -> Any:
        await gate.wait()
        return await real_fetch(*args)

    source.fetch = gated_fetch
    arrived = 0
    real_do = responder.flights.do

    async def counted_do(*args: Any) -> Any:
        nonlocal arrived
        arrived += 1
        return await real_do(*args)

    responder.flights.do = counted_do
    # 200 connections at once (the test client's pool stops at 100).
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def one() -> bytes:
        async with session.post(client.make_url("/"), data=der) as resp:
            return await resp.read()

    requests = [asyncio.create_task(one()) for _ in range(200)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while arrived < 200:
        assert loop.time() < deadline, f"only {arrived} misses arrived"
        await asyncio.sleep(0.001)
    assert len(responder.flights) == 1
    gate.set()
    bodies = await asyncio.gather(*requests)
    await session.close()
    assert signers["test-ca"].count == 1
    assert len(set(bodies)) == 1
    assert verify_response(bodies[0], test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert len(responder.flights) == 0


async def test_signer_error_is_internal_error_and_leaves_no_flight(ocspd_client: AppClient, test_pki: TestPki) -> None:
    signers = counting_signers(test_pki)
    signers["test-ca"].fail = True
    client = await ocspd_client(test_pki, signers=signers)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    responses = await asyncio.gather(*(client.post("/", data=der) for _ in range(50)))
    for resp in responses:
        assert resp.status == 200
        assert await resp.read() == bytes.fromhex("30030a0102")  # internalError: a real bug
    assert len(client.app[RESPONDER].flights) == 0
    signers["test-ca"].fail = False
    resp = await client.post("/", data=der)
    verify_response(await resp.read(), test_pki)


async def test_live_signatures_past_the_bound_get_try_later(ocspd_client: AppClient, tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path, responses="max_inflight_signatures = 1")
    client = await ocspd_client(test_pki)
    responder: Any = client.app[RESPONDER]
    responder.signing = 1  # one signature already in flight
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, nonce=b"n" * 16)
    resp = await client.post("/", data=der)
    assert await resp.read() == TRY_LATER
    responder.signing = 0
    resp = await client.post("/", data=der)
    verify_response(await resp.read(), test_pki)


async def test_second_request_is_served_from_memory(ocspd_client: AppClient, test_pki: TestPki) -> None:
    signers = counting_signers(test_pki)
    client = await ocspd_client(test_pki, signers=signers)
    der = request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert)
    first = await (await client.post("/", data=der)).read()
    second = await (await client.post("/", data=der)).read()
    assert first == second
    assert signers["test-ca"].count == 1


async def test_nonce_requests_are_signed_live_and_not_cached(ocspd_client: AppClient, test_pki: TestPki) -> None:
    signers = counting_signers(test_pki)
    client = await ocspd_client(test_pki, signers=signers)
    for i in range(3):
        der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, nonce=bytes([i + 1]) * 8)
        await (await client.post("/", data=der)).read()
    assert signers["test-ca"].count == 3
    assert len(client.app[RESPONDER].memory) == 0


@pytest.mark.parametrize("hours", [24])
async def test_expired_response_is_never_served(ocspd_client: AppClient, test_pki: TestPki, hours: int) -> None:
    """Invariant 8: once past the refresh point, a cached response is re-signed."""
    clock = Clock(__import__("time").time())
    signers = counting_signers(test_pki)
    client = await ocspd_client(test_pki, signers=signers, clock=clock)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    first = await (await client.post("/", data=der)).read()
    clock.now += hours * 3600 + 1  # past nextUpdate of the first response
    second = await (await client.post("/", data=der)).read()
    assert signers["test-ca"].count == 2
    assert first != second
    assert verify_response(second, test_pki).next_update_utc.timestamp() > clock.now  # type: ignore[union-attr]


async def test_produced_at_is_the_engines_clock_second(ocspd_client: AppClient, test_pki: TestPki) -> None:
    """producedAt, like thisUpdate, comes from the injected clock (in whole seconds), not the wall clock."""
    clock = Clock(T0 + 0.75)
    client = await ocspd_client(test_pki, clock=clock)
    backdate = test_pki.config().responses.backdate
    for nonce in (None, b"n" * 16):  # cached and live signatures
        second = dt.datetime.fromtimestamp(int(clock.now), dt.UTC)
        der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, nonce=nonce)
        response = ocsp.load_der_ocsp_response(await (await client.post("/", data=der)).read())
        assert response.produced_at_utc == second
        assert response.this_update_utc == second - backdate
        clock.now += 1


async def test_production_caught_by_a_reload_signs_with_the_new_key(ocspd_client: AppClient, test_pki: TestPki) -> None:
    """A miss under way when SIGHUP brings a new responder key must not cache an old-key answer."""
    from ocspd import pki
    from ocspd.app import reload_app

    client = await ocspd_client(test_pki)
    responder = client.app[RESPONDER]
    entered, release = hold_after_fetch(responder.issuers["test-ca"].source)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    request = asyncio.create_task(client.post("/", data=der))
    await asyncio.wait_for(entered.wait(), 10)
    rolled = pki.make_responder(test_pki.ca, common_name="rolled responder")
    assert test_pki.responder_path is not None
    pki.write_cert(test_pki.responder_path, rolled.cert)
    pki.write_key(test_pki.key_path, rolled.key)
    assert reload_app(client.app, test_pki.config()) == ["test-ca"]
    release.set()
    body = await (await request).read()
    assert ocsp.load_der_ocsp_response(body).certificates == [rolled.cert]
    cached = responder.memory.get(responder.key("test-ca", "sha1", test_pki.leaves["good"].cert.serial_number))
    assert cached is not None and ocsp.load_der_ocsp_response(cached.der).certificates == [rolled.cert]
