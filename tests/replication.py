"""Replication for the tests: a migrated database on a primary and its hot standby, and the
watch of answers around a revocation that the standby, failover and bench tests share
(tests/test_standby.py, tests/test_failover.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.x509 import ocsp

from ocspd.app import METRICS, update_gauges
from ocspd.protocol import TRY_LATER
from ocspd.store import Store
from ocspd.store.source import READ_TARGETS
from tests.helpers import GOOD_SERIAL, ISSUER, UNISSUED_SERIAL, TestPki, eventually, query, status_of
from tests.pg import PgServer

Status = ocsp.OCSPCertStatus
Answer = Status | bytes  # a certificate status, or the body of an unsuccessful response
WATCH = 2.5  # how long answers are watched after a revocation (longer than a standby's 1 s apply delay)
NOTIFY_BOUND = 0.5  # a replica still answering from memory after a commit: the NOTIFY is on its way
REVOKED_WITHIN = 2.0


async def replicated_database(primary: PgServer, standby: PgServer) -> tuple[str, str]:
    """A migrated database on the primary with two good certificates, once the standby has it too."""
    name = primary.create_database()
    dsn, standby_dsn = primary.dsn_for(name), standby.dsn_for(name)
    await Store(dsn).migrate()
    for serial in (GOOD_SERIAL, UNISSUED_SERIAL):
        query(dsn, "SELECT ocspd_add_certificate(%s, %s)", ISSUER, f"{serial:x}")

    async def standby_has_them() -> bool:
        try:
            rows = await asyncio.to_thread(query, standby_dsn, "SELECT count(*) FROM ocspd_certificates")
        except Exception:
            return False
        return bool(rows[0][0] == 2)

    await eventually(standby_has_them, timeout=15, what="the database on the standby")
    return dsn, standby_dsn


Timeline = list[tuple[float, int, Answer]]  # (loop time, replica, answer)


async def watch(
    clients: list[TestClient[Any, Any]], der: bytes, test_pki: TestPki, revoke: Callable[[], Awaitable[object]]
) -> tuple[float, Timeline]:
    """Poll every replica every few ms while ``revoke`` runs and for WATCH seconds after it
    returned (the revocation committed), then once more; returns the commit time and the answers."""
    loop = asyncio.get_running_loop()
    timeline: Timeline = []
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            for n, client in enumerate(clients):
                timeline.append((loop.time(), n, await status_of(client, der, test_pki)))
            await asyncio.sleep(0.003)

    poller = asyncio.create_task(poll())
    try:
        await asyncio.wait_for(revoke(), 60)
        committed = loop.time()
        await asyncio.sleep(WATCH)
    finally:
        done.set()
        await poller
    await asyncio.sleep(0.2)
    for n, client in enumerate(clients):
        timeline.append((loop.time(), n, await status_of(client, der, test_pki)))
    return committed, timeline


def assert_never_good_after(committed: float, timeline: Timeline, replicas: int, *, try_later: bool) -> None:
    """Per replica: "good" only before its first "revoked" and within NOTIFY_BOUND of the commit;
    "revoked" from then on, and within REVOKED_WITHIN; tryLater only if ``try_later``."""
    for n in range(replicas):
        answers = [(t, a) for t, m, a in timeline if m == n]
        first_revoked = next((t for t, a in answers if a == Status.REVOKED), None)
        assert first_revoked is not None, f"replica {n} never answered revoked: {summary(answers)}"
        assert first_revoked - committed <= REVOKED_WITHIN, (n, first_revoked - committed)
        for t, a in answers:
            if a == Status.GOOD:
                assert t < first_revoked, f"replica {n} answered good again after revoked: {summary(answers)}"
                assert t - committed < NOTIFY_BOUND, f"replica {n} good {t - committed:.3f}s after the commit"
            elif a != Status.REVOKED:
                assert try_later and a == TRY_LATER, f"replica {n} answered {a!r}"
                assert t < first_revoked, f"replica {n}: tryLater after revoked"
        assert answers[-1][1] == Status.REVOKED


def summary(answers: list[tuple[float, Answer]]) -> str:
    """The answers as runs: 'GOOD x12, REVOKED x40'."""
    runs: list[list[Any]] = []
    for _, a in answers:
        label = a.name if isinstance(a, Status) else "tryLater" if a == TRY_LATER else repr(a)
        if runs and runs[-1][0] == label:
            runs[-1][1] += 1
        else:
            runs.append([label, 1])
    return ", ".join(f"{label} x{n}" for label, n in runs)


def reads(client: TestClient[Any, Any]) -> dict[tuple[str, str], float]:
    """ocspd_status_reads_total of a replica, by (target, reason)."""
    update_gauges(client.app)
    registry = client.app[METRICS].registry
    return {
        pair: registry.get_sample_value("ocspd_status_reads_total", {"target": pair[0], "reason": pair[1]}) or 0.0
        for pair in READ_TARGETS
    }


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
