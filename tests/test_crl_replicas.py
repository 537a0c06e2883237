"""CRLs with PostgreSQL (issue 15): one replica a round fetches and merges an issuer's CRLs into the
status table, and every replica learns each changed serial through the table's NOTIFY."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509

from ocspd.app import CRLS
from tests.conftest import AppClient
from tests.crls import CrlServer, Revoked, publish
from tests.helpers import (
    GOOD,
    REVOKED_AT,
    REVOKED_SERIAL,
    UNKNOWN,
    TestPki,
    answer,
    becomes,
    build_pki,
    eventually,
    revoked,
    row,
    sql,
    start_replicas,
    stays,
)

F = x509.ReasonFlags
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
AT = NOW - dt.timedelta(days=2)
POLL = {"OCSPD_CRL_POLL": "500ms", "OCSPD_CRL_RETRY": "500ms"}


def db_crl_pki(directory: Path, pg_dsn: str, server: CrlServer, extra: str = "") -> TestPki:
    test_pki = build_pki(directory, database=pg_dsn)
    delta = f'delta_crl = "{server.url("delta.crl")}"\n'
    with test_pki.config_path.open("a") as f:
        f.write(f'crl = "{server.url("ca.crl")}"\n{delta}{extra}')
    return test_pki


async def replicas(ocspd_client: AppClient, test_pki: TestPki, n: int = 2) -> list[TestClient[Any, Any]]:
    clients = await start_replicas(ocspd_client, test_pki, n=n, env=POLL)

    async def in_force() -> bool:
        return all(c.app[CRLS]["test-ca"].base is not None for c in clients)

    await eventually(in_force, timeout=10, what="a CRL in force on every replica")
    return clients


async def revoked_on_two_replicas(
    ocspd_client: AppClient, tmp_path: Path, pg_dsn: str, crl_server: CrlServer
) -> tuple[TestPki, list[TestClient[Any, Any]]]:
    """Two replicas of an issuer whose base CRL revokes REVOKED_SERIAL (and whose delta lists nothing), in force."""
    test_pki = db_crl_pki(tmp_path / "pki", pg_dsn, crl_server)
    publish(crl_server, test_pki.ca, [Revoked(REVOKED_SERIAL, F.key_compromise, REVOKED_AT)], number=1)
    publish(crl_server, test_pki.ca, [], number=2, delta_of=1)
    return test_pki, await replicas(ocspd_client, test_pki)


def applier_and_survivor(clients: list[TestClient[Any, Any]]) -> tuple[TestClient[Any, Any], TestClient[Any, Any]]:
    """The replica that applies the rounds (its CRL state holds the entries; the other's is hollow), and the other."""
    holding = [c for c in clients if not c.app[CRLS]["test-ca"].hollow]
    assert len(holding) == 1, [c.app[CRLS]["test-ca"].hollow for c in clients]
    (survivor,) = [c for c in clients if c is not holding[0]]
    return holding[0], survivor


async def test_two_replicas_learn_a_crl_revocation_through_notify_with_one_fetching_a_round(
    ocspd_client: AppClient, tmp_path: Path, pg_dsn: str, crl_server: CrlServer
) -> None:
    test_pki, clients = await revoked_on_two_replicas(ocspd_client, tmp_path, pg_dsn, crl_server)
    leaf = test_pki.leaves
    for client in clients:
        await stays(client, test_pki, leaf["revoked"].cert, revoked(F.key_compromise, REVOKED_AT))
        # paired with the table: a serial it does not list is unknown (no "good" for unissued serials)
        assert await answer(client, test_pki, leaf["good"].cert) == UNKNOWN
    requests_before = crl_server.requests.get("ca.crl", 0)
    appliers: set[str] = set()
    for _ in range(6):  # six rounds of 0.5 s
        await asyncio.sleep(0.5)
        appliers.update(a for (a,) in await sql(pg_dsn, "SELECT applier FROM ocspd_crl_sources"))
    assert len(appliers) == 1, appliers  # the replica holding the entries keeps the rounds
    per_round = (crl_server.requests["ca.crl"] - requests_before) / 6
    assert per_round <= 1.25, per_round  # one replica fetches a round, not each of them
    publish(crl_server, test_pki.ca, [Revoked(0x1001, F.superseded, AT)], number=3, delta_of=1)
    for client in clients:
        await becomes(client, test_pki, leaf["good"].cert, revoked(F.superseded, AT))
    stored = await row(pg_dsn, 0x1001)
    assert stored is not None and stored.status == "revoked"


async def test_a_hold_released_by_a_delta_is_released_in_the_table_for_every_replica(
    ocspd_client: AppClient, tmp_path: Path, pg_dsn: str, crl_server: CrlServer
) -> None:
    test_pki = db_crl_pki(tmp_path / "pki", pg_dsn, crl_server)
    publish(crl_server, test_pki.ca, [Revoked(0x1001, F.certificate_hold, AT)], number=1)
    publish(crl_server, test_pki.ca, [], number=2, delta_of=1)
    clients = await replicas(ocspd_client, test_pki)
    cert = test_pki.leaves["good"].cert
    for client in clients:
        await becomes(client, test_pki, cert, revoked(F.certificate_hold, AT))
    publish(crl_server, test_pki.ca, [Revoked(0x1001, F.remove_from_crl, NOW)], number=3, delta_of=1)
    for client in clients:
        await becomes(client, test_pki, cert, GOOD)


async def test_a_revocation_the_crl_drops_later_is_never_undone_in_the_table(
    ocspd_client: AppClient, tmp_path: Path, pg_dsn: str, crl_server: CrlServer
) -> None:
    test_pki = db_crl_pki(tmp_path / "pki", pg_dsn, crl_server, extra='crl_unlisted = "good"\n')
    publish(crl_server, test_pki.ca, [Revoked(0x1001, F.key_compromise, AT)], number=1)
    publish(crl_server, test_pki.ca, [], number=2, delta_of=1)
    (client,) = await replicas(ocspd_client, test_pki, n=1)
    cert = test_pki.leaves["good"].cert
    await becomes(client, test_pki, cert, revoked(F.key_compromise, AT))
    assert await answer(client, test_pki, test_pki.leaves["unissued"].cert) == GOOD  # crl_unlisted = "good"
    publish(crl_server, test_pki.ca, [], number=4)  # the certificate expired, the CA dropped its entry
    publish(crl_server, test_pki.ca, [], number=5, delta_of=4)

    async def new_base() -> bool:
        base = client.app[CRLS]["test-ca"].base
        return base is not None and base.number == 4

    await eventually(new_base, timeout=10, what="base CRL 4 in force")
    await stays(client, test_pki, cert, revoked(F.key_compromise, AT))


async def test_when_the_applying_replica_stops_another_takes_over_and_applies_the_next_crl(
    ocspd_client: AppClient, tmp_path: Path, pg_dsn: str, crl_server: CrlServer
) -> None:
    test_pki, clients = await revoked_on_two_replicas(ocspd_client, tmp_path, pg_dsn, crl_server)
    [(applier,)] = await sql(pg_dsn, "SELECT applier FROM ocspd_crl_sources")
    holding, survivor = applier_and_survivor(clients)
    await holding.close()
    full_answers = dict(crl_server.full_answers)
    publish(crl_server, test_pki.ca, [Revoked(0x1001, F.superseded, AT)], number=3, delta_of=1)
    await becomes(survivor, test_pki, test_pki.leaves["good"].cert, revoked(F.superseded, AT))
    # the new delta, and the unchanged base it lacked the entries of: each downloaded once
    assert crl_server.full_answers["delta.crl"] - full_answers["delta.crl"] == 1
    assert crl_server.full_answers["ca.crl"] - full_answers["ca.crl"] == 1
    await stays(survivor, test_pki, test_pki.leaves["revoked"].cert, revoked(F.key_compromise, REVOKED_AT))
    [(new_applier,)] = await sql(pg_dsn, "SELECT applier FROM ocspd_crl_sources")
    assert new_applier != applier
    assert not survivor.app[CRLS]["test-ca"].hollow  # it fetched the entries in full


async def test_a_replica_stopped_in_the_middle_of_its_round_hands_the_round_back(
    ocspd_client: AppClient, tmp_path: Path, pg_dsn: str, crl_server: CrlServer
) -> None:
    test_pki, clients = await revoked_on_two_replicas(ocspd_client, tmp_path, pg_dsn, crl_server)
    holding, survivor = applier_and_survivor(clients)  # the applier claims a due round first
    crl_server.stall = asyncio.Event()
    publish(crl_server, test_pki.ca, [Revoked(0x1001, F.superseded, AT)], number=3, delta_of=1)

    async def mid_round() -> bool:
        return crl_server.stalled > 0

    await eventually(mid_round, timeout=10, what="the applier's next round waiting for its fetch")
    await holding.close()  # stopped with the round claimed: its lease (over a minute) must not hold the others
    crl_server.stall.set()
    await becomes(survivor, test_pki, test_pki.leaves["good"].cert, revoked(F.superseded, AT))
    [(claimed_until_passed,)] = await sql(pg_dsn, "SELECT claimed_until < now() FROM ocspd_crl_sources")
    assert claimed_until_passed


@pytest.mark.parametrize("force", [False, True], ids=["round", "crl-sync"])
async def test_the_last_applier_claims_a_due_round_first_and_another_only_once_it_is_overdue(
    pg_dsn: str, force: bool
) -> None:
    from ocspd.store import Store

    store = Store(pg_dsn)
    await store.open()
    try:
        rows = store.crls
        assert await rows.claim("ca", "a", lease=60, grace=0.4)
        assert not await rows.claim("ca", "b", lease=60, grace=0.4)  # claimed
        await rows.record("ca", None, None, last_error=None, applied=False, delay=0, validators={})
        # due, but a applied last: b only claims it by force
        assert await rows.claim("ca", "b", lease=60, grace=0.4, force=force) is force
        if force:  # ocspd crl sync runs now, and leaves the round to the applier
            await rows.record("ca", None, None, last_error=None, applied=False, delay=0, validators={})
            [(applier,)] = await sql(pg_dsn, "SELECT applier FROM ocspd_crl_sources")
            assert applier == "a"
            return
        assert await rows.claim("ca", "a", lease=60, grace=0.4)
        await rows.record("ca", None, None, last_error=None, applied=False, delay=0, validators={})
        await asyncio.sleep(0.5)  # a missed its round by more than the grace
        assert await rows.claim("ca", "b", lease=60, grace=0.4)
    finally:
        await store.close()
