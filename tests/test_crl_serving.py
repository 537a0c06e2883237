"""Serving OCSP from a CA's CRLs (issue 15): CRLs fetched over HTTP from 127.0.0.1, kept current,
checked before use, and bounding every answer's freshness."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509

from ocspd import pki
from ocspd.app import CRLS, METRICS, app_readiness
from ocspd.protocol import TRY_LATER
from tests.conftest import AppClient
from tests.crls import CrlServer, Revoked, make_crl, publish
from tests.helpers import (
    GOOD,
    REVOKED_SERIAL,
    UNKNOWN,
    ServedAnswer,
    TestPki,
    answer,
    assert_verified,
    build_pki,
    eventually,
    openssl_ocsp,
    request_der,
    revoked,
    verify_response,
)

F = x509.ReasonFlags
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
AT = NOW - dt.timedelta(days=2)
POLL = {"OCSPD_CRL_POLL": "300ms", "OCSPD_CRL_RETRY": "300ms"}


def crl_pki(directory: Path, server: CrlServer, *, index: bool = False, extra: str = "") -> TestPki:
    """A PKI whose issuer's status comes from the CRL at ``server``'s ``ca.crl`` (and ``delta.crl``);
    with ``index``, paired with its index.txt (which lists "good" and "revoked"), else unlisted is good."""
    test_pki = build_pki(directory)
    text = test_pki.config_path.read_text()
    if not index:
        text = text.replace('index = "index.txt"\n', 'crl_unlisted = "good"\n')
    test_pki.config_path.write_text(text + f'crl = "{server.url("ca.crl")}"\n{extra}')
    return test_pki


def cert(test_pki: TestPki, name: str) -> x509.Certificate:
    return test_pki.leaves[name].cert


async def started(ocspd_client: AppClient, test_pki: TestPki, **env: str) -> TestClient[Any, Any]:
    client = await ocspd_client(test_pki, env={**POLL, **env})

    async def loaded() -> bool:
        return all(state.base is not None for state in client.app[CRLS].values())

    await eventually(loaded, timeout=10, what="a CRL in force")
    return client


async def served_within(
    client: TestClient[Any, Any], test_pki: TestPki, name: str, expected: ServedAnswer, limit: float
) -> float:
    """Seconds until ``expected`` is served (cached and live) for ``name``; fails past ``limit``."""
    started_at = time.monotonic()

    async def served() -> bool:
        if await _post(client, test_pki, name, nonce=False) == TRY_LATER:
            return False  # no CRL in force that may be served yet
        return await answer(client, test_pki, cert(test_pki, name)) == expected

    await eventually(served, timeout=limit, what=f"{name} served {expected}")
    assert await answer(client, test_pki, cert(test_pki, name), live=True) == expected
    return time.monotonic() - started_at


def fetches(client: TestClient[Any, Any], kind: str, result: str) -> float:
    value = client.app[METRICS].crl_fetches.labels("test-ca", kind, result)._value.get()
    return float(value)


async def test_crl_entries_are_revoked_with_their_date_and_reason_and_unlisted_is_good_when_chosen(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server)
    publish(crl_server, test_pki.ca, [Revoked(REVOKED_SERIAL, F.superseded, AT)], number=1)
    client = await started(ocspd_client, test_pki)
    assert await answer(client, test_pki, cert(test_pki, "revoked")) == revoked(F.superseded, AT)
    assert await answer(client, test_pki, cert(test_pki, "good")) == GOOD
    assert await answer(client, test_pki, cert(test_pki, "unissued")) == GOOD  # crl_unlisted = "good"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("good", GOOD, id="on-the-index-not-on-the-crl-is-good"),
        pytest.param("unissued", UNKNOWN, id="on-neither-is-unknown"),
        pytest.param("revoked", revoked(F.key_compromise, AT), id="on-the-crl-is-revoked"),
    ],
)
async def test_a_crl_paired_with_an_issuance_list_keeps_unissued_serials_unknown(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer, name: str, expected: ServedAnswer
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server, index=True)
    # index.txt has "revoked" revoked too, at another time: the CRL's entry is what is served
    publish(crl_server, test_pki.ca, [Revoked(REVOKED_SERIAL, F.key_compromise, AT)], number=1)
    client = await started(ocspd_client, test_pki)
    assert await answer(client, test_pki, cert(test_pki, name)) == expected


async def test_a_revocation_published_in_a_new_crl_is_served_within_one_poll(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server)
    publish(crl_server, test_pki.ca, [], number=1)
    client = await started(ocspd_client, test_pki, OCSPD_CRL_POLL="1s")
    assert await answer(client, test_pki, cert(test_pki, "good")) == GOOD  # now in the memory tier
    publish(crl_server, test_pki.ca, [Revoked(0x1001, F.key_compromise, AT)], number=2)
    seconds = await served_within(client, test_pki, "good", revoked(F.key_compromise, AT), limit=5)
    assert seconds <= 1.0 + 0.5  # one poll, and a margin for a loaded machine
    assert fetches(client, "base", "applied") == 2


async def test_a_revocation_in_a_delta_crl_and_a_hold_released_by_one(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server, extra=f'delta_crl = "{crl_server.url("delta.crl")}"\n')
    publish(crl_server, test_pki.ca, [Revoked(REVOKED_SERIAL, F.certificate_hold, AT)], number=10)
    publish(crl_server, test_pki.ca, [], number=11, delta_of=10)
    client = await started(ocspd_client, test_pki)
    assert await answer(client, test_pki, cert(test_pki, "revoked")) == revoked(F.certificate_hold, AT)
    assert await answer(client, test_pki, cert(test_pki, "good")) == GOOD
    publish(
        crl_server,
        test_pki.ca,
        [Revoked(REVOKED_SERIAL, F.remove_from_crl, NOW), Revoked(0x1001, F.ca_compromise, AT)],
        number=12,
        delta_of=10,
    )
    await served_within(client, test_pki, "good", revoked(F.ca_compromise, AT), limit=5)
    await served_within(client, test_pki, "revoked", GOOD, limit=5)


async def test_the_delta_named_by_the_base_crls_freshest_crl_extension_is_followed(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server)
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_server.url("delta.crl"))], None, None, None)
    publish(crl_server, test_pki.ca, [], number=5, extensions=[x509.FreshestCRL([point])])
    publish(crl_server, test_pki.ca, [Revoked(0x1001, F.key_compromise, AT)], number=6, delta_of=5)
    client = await started(ocspd_client, test_pki)
    await served_within(client, test_pki, "good", revoked(F.key_compromise, AT), limit=5)


def _other_ca_crl(test_pki: TestPki, number: int) -> x509.CertificateRevocationList:
    impostor = pki.make_ca("impostor", "p256")
    signed_by_another_key = pki.Identity(test_pki.ca.cert, impostor.key)
    return make_crl(signed_by_another_key, [Revoked(0x1001)], number=number, next_update=NOW + dt.timedelta(days=1))


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda p: _other_ca_crl(p, 9), id="bad-signature"),
        pytest.param(lambda p: make_crl(p.ca, [Revoked(0x1001)], number=3), id="lower-crl-number"),
        pytest.param(
            lambda p: make_crl(p.ca, [Revoked(0x1001)], number=9, issuer=pki.make_ca("other", "p256").cert.subject),
            id="wrong-issuer",
        ),
        pytest.param(lambda p: make_crl(p.ca, [Revoked(0x1001)], number=9, delta_of=4), id="a-delta-as-the-base"),
    ],
)
async def test_a_crl_that_fails_a_check_is_not_applied_and_is_counted(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer, bad: Any, caplog: pytest.LogCaptureFixture
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server)
    publish(crl_server, test_pki.ca, [], number=4)
    client = await started(ocspd_client, test_pki)
    crl_server.publish("ca.crl", bad(test_pki))

    async def refused() -> bool:
        return fetches(client, "base", "refused") >= 1

    await eventually(refused, timeout=5, what="the bad CRL refused")
    full_answers = crl_server.full_answers["ca.crl"]
    for _ in range(3):
        assert await answer(client, test_pki, cert(test_pki, "good"), live=True) == GOOD
    await eventually(lambda: _later(crl_server.requests["ca.crl"] >= 4), timeout=5, what="more polls")
    assert fetches(client, "base", "refused") == 1  # polled again: 304, not fetched and refused again
    assert crl_server.full_answers["ca.crl"] == full_answers
    assert client.app[CRLS]["test-ca"].base.number == 4
    errors = [r for r in caplog.records if r.name == "ocspd.crl" and r.levelname == "ERROR"]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # once per bad CRL
    readiness = await app_readiness(client.app)
    assert readiness.ready and readiness.degraded, readiness.text()


async def test_a_delta_for_a_base_not_in_force_is_not_applied(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server, extra=f'delta_crl = "{crl_server.url("delta.crl")}"\n')
    publish(crl_server, test_pki.ca, [], number=4)
    publish(crl_server, test_pki.ca, [Revoked(0x1001)], number=8, delta_of=7)  # made over base 7: we have 4
    client = await started(ocspd_client, test_pki)

    async def refused() -> bool:
        return fetches(client, "delta", "refused") >= 1

    await eventually(refused, timeout=5, what="the mismatched delta refused")
    assert await answer(client, test_pki, cert(test_pki, "good"), live=True) == GOOD


async def _later(value: bool) -> bool:
    return value


async def test_a_crl_past_its_next_update_gives_try_later(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server)
    soon = dt.datetime.fromtimestamp(int(time.time()) + 3, dt.UTC)
    publish(crl_server, test_pki.ca, [], number=1, next_update=soon)
    client = await started(ocspd_client, test_pki)
    response = verify_response(await _post(client, test_pki, "good"), test_pki)
    assert response.next_update_utc is not None and response.next_update_utc <= soon

    async def try_later() -> bool:
        return await _post(client, test_pki, "good") == TRY_LATER

    await eventually(try_later, timeout=8, what="tryLater past the CRL's nextUpdate")
    assert time.time() >= soon.timestamp()
    readiness = await app_readiness(client.app)
    assert readiness.ready and readiness.degraded and "past its nextUpdate" in readiness.text()
    # a newer CRL published: answers again
    publish(crl_server, test_pki.ca, [], number=2)
    await served_within(client, test_pki, "good", GOOD, limit=5)


async def test_a_stale_crl_keeps_serving_when_chosen_with_a_short_validity_and_a_metric(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server)
    publish(crl_server, test_pki.ca, [], number=1, this_update=NOW - dt.timedelta(days=2), next_update=NOW)
    client = await started(ocspd_client, test_pki, OCSPD_CRL_STALE="serve", OCSPD_CRL_RETRY="30s")
    response = verify_response(await _post(client, test_pki, "good"), test_pki)
    assert response.next_update_utc is not None
    assert response.next_update_utc <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=31)
    assert client.app[METRICS].crl_stale_answers._value.get() >= 1


async def test_no_crl_yet_is_try_later_and_not_ready(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server)  # nothing published: 404
    client = await ocspd_client(test_pki, env=POLL)
    assert await _post(client, test_pki, "good") == TRY_LATER
    readiness = await app_readiness(client.app)
    assert not readiness.ready, readiness.text()
    await eventually(lambda: _later(fetches(client, "base", "failed") >= 1), timeout=5, what="a failed fetch")


async def test_an_unchanged_crl_is_polled_with_conditional_requests(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer
) -> None:
    test_pki = crl_pki(tmp_path / "pki", crl_server)
    publish(crl_server, test_pki.ca, [], number=1)
    client = await started(ocspd_client, test_pki)
    await eventually(lambda: _later(fetches(client, "base", "not_modified") >= 3), timeout=5, what="three polls")
    assert crl_server.full_answers["ca.crl"] == 1


async def _post(client: TestClient[Any, Any], test_pki: TestPki, name: str, *, nonce: bool = True) -> bytes:
    der = request_der(cert(test_pki, name), test_pki.ca.cert, nonce=os.urandom(16) if nonce else None)
    resp = await client.post("/", data=der)
    assert resp.status == 200
    return await resp.read()


@pytest.mark.parametrize(
    ("name", "status"),
    [
        pytest.param("good", "good", id="good"),
        pytest.param("revoked", "revoked", id="revoked-with-reason"),
        pytest.param("unissued", "revoked", id="on-hold"),
    ],
)
async def test_openssl_verifies_crl_derived_answers_within_the_crls_next_update(
    ocspd_server: Any, tmp_path: Path, crl_server: CrlServer, name: str, status: str
) -> None:
    from ocspd.app import init_app

    test_pki = crl_pki(tmp_path / "pki", crl_server)
    next_update = NOW + dt.timedelta(hours=2)  # before thisUpdate + validity (24h): the CRL's bound applies
    entries = [Revoked(REVOKED_SERIAL, F.key_compromise, AT), Revoked(0x1003, F.certificate_hold, AT)]
    publish(crl_server, test_pki.ca, entries, number=1, next_update=next_update)
    app = init_app(test_pki.config(**POLL))
    server = await ocspd_server(app)

    async def loaded() -> bool:
        return app[CRLS]["test-ca"].base is not None

    await eventually(loaded, timeout=10, what="a CRL in force")
    code, output = await openssl_ocsp(test_pki, f"http://127.0.0.1:{server.port}/", name, extra=("-no_nonce",))
    assert_verified(code, output, test_pki.leaf_paths[name], status)
    if name == "revoked":
        assert "Reason: keyCompromise" in output, output
    if name == "unissued":
        assert "Reason: certificateHold" in output, output
    shown = next(line for line in output.splitlines() if "Next Update:" in line).split("Next Update:")[1].strip()
    assert dt.datetime.strptime(shown, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC) <= next_update


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda url: f'crl = "{url}2"\n', id="crl-location"),
        pytest.param(lambda url: f'crl = "{url}"\ndelta_crl = []\n', id="delta-crl"),
    ],
)
async def test_a_reload_that_changes_crl_settings_needs_a_restart_and_keeps_serving(
    ocspd_client: AppClient, tmp_path: Path, crl_server: CrlServer, change: Any
) -> None:
    from ocspd.app import reload_app
    from ocspd.exceptions import ConfigError

    test_pki = crl_pki(tmp_path / "pki", crl_server)
    publish(crl_server, test_pki.ca, [], number=1)
    client = await started(ocspd_client, test_pki)
    url = crl_server.url("ca.crl")
    text = test_pki.config_path.read_text()
    test_pki.config_path.write_text(text.replace(f'crl = "{url}"\n', change(url)))
    with pytest.raises(ConfigError, match="need a restart"):
        reload_app(client.app, test_pki.config())
    assert await answer(client, test_pki, cert(test_pki, "good"), live=True) == GOOD
