"""Responder keys in a PKCS#11 token (issue 16), against SoftHSM2: `openssl ocsp` verifies what
the token signs; start-up refuses what cannot sign; a token that goes away gives tryLater for
misses (hits and stored answers still served) and comes back by itself; SIGHUP rolls over to a
new token key with no failed request; no PIN in any log line. In-process: an invalidation that
arrives while a token key signs is not lost (SPEC §3.1)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ocspd import pki
from ocspd.app import RESPONDER, TOKENS, RefreshSettings, reload_app
from ocspd.exceptions import ConfigError
from ocspd.hsm import _module_lock
from ocspd.keys import load_signers, tokens_for
from ocspd.protocol import TRY_LATER, CertId
from ocspd.signer import Answer, Signer
from tests.conftest import AppClient, add_status_rows
from tests.helpers import (
    TestPki,
    assert_one_line_error,
    assert_verified,
    build_pki,
    eventually,
    openssl_ocsp,
    query,
    readme_block,
    request_der,
    run,
    status_of,
)
from tests.serving import Served, start_serve, wait_http
from tests.softhsm import MODULE, USER_PIN, SoftHsm, key_uri, skip_without_softhsm

Status = ocsp.OCSPCertStatus
TRY_LATER_BODY = bytes(TRY_LATER)
README_SECTION = "## Keys in an HSM (PKCS#11)"


@pytest.fixture
def softhsm(tmp_path: Path) -> SoftHsm:
    skip_without_softhsm()
    hsm = SoftHsm(tmp_path / "softhsm")
    hsm.init_token("ocsp")
    return hsm


def token_pki(
    directory: Path,
    hsm: SoftHsm,
    key_type: pki.KeyType = "p256",
    *,
    label: str = "responder",
    ident: str = "01",
    extra: str = "",
    database: str | None = None,
) -> TestPki:
    """A test PKI whose delegated responder key is in ``hsm`` (and not on disk); its status from
    ``database`` (with the good and the revoked certificate) when given."""
    test_pki = build_pki(directory, key_type=key_type, database=database)
    if database is not None:
        add_status_rows(database)
    assert test_pki.responder is not None
    hsm.import_key(test_pki.responder.key, label, ident)
    test_pki.key_path.unlink()
    text = test_pki.config_path.read_text()
    token_lines = (
        f"responder_key = {json.dumps(key_uri(label, extra=extra))}\n"
        f'pkcs11_module = "{MODULE}"\npkcs11_pin_file = "{hsm.pin_file}"\n'
    )
    test_pki.config_path.write_text(text.replace(f'responder_key = "{test_pki.key_path.name}"\n', token_lines))
    return test_pki


async def serving(test_pki: TestPki, hsm: SoftHsm, **env: str) -> Served:
    served = await start_serve(test_pki, {**hsm.env, "OCSPD_LOG_LEVEL": "debug", **env})
    await wait_http(f"http://127.0.0.1:{served.admin}/livez")
    return served


def serve_log(test_pki: TestPki) -> str:
    return (test_pki.directory / "serve.log").read_text()


def assert_no_pin_logged(text: str) -> None:
    assert USER_PIN not in text
    assert text.strip(), "nothing was logged: the check would pass on anything"


async def post(session: aiohttp.ClientSession, url: str, der: bytes) -> ocsp.OCSPResponse:
    async with session.post(url, data=der, headers={"Content-Type": "application/ocsp-request"}) as resp:
        assert resp.status == 200
        return ocsp.load_der_ocsp_response(await resp.read())


async def admin_text(served: Served, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{served.admin}{path}") as resp:
        return resp.status, await resp.text()


# -- interop: openssl ocsp verifies what the token signs --------------------------------------------------------


@pytest.mark.parametrize("key_type", ["rsa2048", "p256", "p384", "ed25519"])
async def test_openssl_verifies_responses_signed_in_the_token(
    tmp_path: Path, softhsm: SoftHsm, key_type: pki.KeyType
) -> None:
    test_pki = token_pki(tmp_path / "pki", softhsm, key_type)
    served = await serving(test_pki, softhsm)
    try:
        for name, status, extra in (
            ("good", "good", ("-no_nonce",)),  # cacheable: signed once, then from memory
            ("revoked", "revoked", ()),  # openssl sends a nonce: signed live, the nonce echoed
            ("good", "good", ()),
        ):
            code, output = await openssl_ocsp(test_pki, served.url, name, extra=extra)
            assert_verified(code, output, test_pki.leaf_paths[name], status)
    finally:
        await served.stop()
    assert "token_down" not in serve_log(test_pki)
    assert_no_pin_logged(serve_log(test_pki))


# -- the README's walk-through --------------------------------------------------------------------------------------


async def test_the_readme_softhsm_walk_through_runs_as_written_and_serves(tmp_path: Path) -> None:
    skip_without_softhsm()
    test_pki = build_pki(tmp_path / "pki")
    key = test_pki.key_path.rename(test_pki.directory / "responder.key")
    recipe = readme_block(README_SECTION, "sh")
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    done = subprocess.run(
        ["sh", "-e", "-c", recipe], cwd=test_pki.directory, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not key.exists(), "the recipe removes the key file"
    issuer = readme_block(README_SECTION, "toml", after="and in the issuer's table")
    text = test_pki.config_path.read_text()
    assert f'responder_key = "{test_pki.key_path.name}"\n' in text
    test_pki.config_path.write_text(text.replace(f'responder_key = "{test_pki.key_path.name}"\n', issuer))
    hsm_env = {"SOFTHSM2_CONF": str(test_pki.directory / "softhsm2.conf")}
    result = run("check-config", "--config", str(test_pki.config_path), env=hsm_env)
    assert result.returncode == 0, result.stderr
    assert "# issuer test-ca: ecdsa-secp256r1, signed by the delegated responder" in result.stderr
    served = await start_serve(test_pki, {**hsm_env, "OCSPD_LOG_LEVEL": "debug"})
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/livez")
        for name in ("good", "revoked"):
            code, output = await openssl_ocsp(test_pki, served.url, name)
            assert_verified(code, output, test_pki.leaf_paths[name], name)
    finally:
        assert await served.stop() == 0
    pin = (test_pki.directory / "token.pin").read_text().strip()
    log = serve_log(test_pki)
    assert pin not in log + result.stdout + result.stderr and log.strip()


async def test_each_worker_process_logs_in_to_the_token(tmp_path: Path, softhsm: SoftHsm) -> None:
    test_pki = token_pki(tmp_path / "pki", softhsm)
    served = await serving(test_pki, softhsm, OCSPD_SERVER_WORKERS="2")
    try:
        await wait_http(served.url)  # the workers listen after the supervisor's admin port
        for name in ("good", "revoked", "good", "revoked"):  # fresh connections: either worker answers
            code, output = await openssl_ocsp(test_pki, served.url, name)
            assert_verified(code, output, test_pki.leaf_paths[name], name)
    finally:
        assert await served.stop() == 0
    log = serve_log(test_pki)
    assert log.count("event=worker_started") == 2 and "Traceback" not in log, log
    assert_no_pin_logged(log)


# -- start-up refuses what cannot sign ------------------------------------------------------------------------------


def _wrong_pin(test_pki: TestPki, hsm: SoftHsm) -> None:
    hsm.pin_file.write_text("not-the-pin\n")


def _missing_object(test_pki: TestPki, hsm: SoftHsm) -> None:
    text = test_pki.config_path.read_text()
    test_pki.config_path.write_text(text.replace("object=responder;", "object=responder-2099;"))


def _missing_token(test_pki: TestPki, hsm: SoftHsm) -> None:
    text = test_pki.config_path.read_text()
    test_pki.config_path.write_text(text.replace("token=ocsp;", "token=no-such-token;"))


def _mismatched_key(test_pki: TestPki, hsm: SoftHsm) -> None:
    hsm.import_key(pki.new_key("p256"), "other", "02")
    text = test_pki.config_path.read_text()
    test_pki.config_path.write_text(text.replace("object=responder;", "object=other;"))


def _key_of_another_type(test_pki: TestPki, hsm: SoftHsm) -> None:
    hsm.import_key(pki.new_key("rsa2048"), "rsa", "03")  # the certificate's key is P-256
    text = test_pki.config_path.read_text()
    test_pki.config_path.write_text(text.replace("object=responder;", "object=rsa;"))


def _pin_in_the_uri(test_pki: TestPki, hsm: SoftHsm) -> None:
    text = test_pki.config_path.read_text()
    test_pki.config_path.write_text(text.replace(";type=private", f";type=private?pin-value={USER_PIN}"))


REFUSALS = {
    "wrong_pin": (_wrong_pin, "wrong PIN for token token=ocsp"),
    "missing_object": (_missing_object, "no private key object=responder-2099 on token token=ocsp"),
    "missing_token": (_missing_token, "no token matching token=no-such-token"),
    "mismatched_key": (_mismatched_key, "does not match the certificate"),
    "key_of_another_type": (_key_of_another_type, "the token key is RSA, the certificate's key EC: not a pair"),
    "pin_in_the_uri": (_pin_in_the_uri, "pin-value puts the PIN in the configuration"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_start_up_refuses_a_token_key_that_cannot_sign(
    tmp_path: Path, softhsm: SoftHsm, case: str, command: str
) -> None:
    test_pki = token_pki(tmp_path / "pki", softhsm)
    spoil, cause = REFUSALS[case]
    spoil(test_pki, softhsm)
    env = {**softhsm.env, "OCSPD_SERVER_LISTEN": "127.0.0.1:0", "OCSPD_ADMIN_LISTEN": "127.0.0.1:0"}
    result = run(command, "--config", str(test_pki.config_path), env=env)
    assert_one_line_error(result, "issuers[0].responder_key", cause)
    if case != "pin_in_the_uri":
        assert "issuer test-ca: pkcs11:token=" in result.stderr  # the URI it could not use
    assert USER_PIN not in result.stderr + result.stdout
    assert "not-the-pin" not in result.stderr + result.stdout


def test_check_config_signs_a_test_message_in_the_token(tmp_path: Path, softhsm: SoftHsm) -> None:
    test_pki = token_pki(tmp_path / "pki", softhsm, "rsa2048")
    result = run("check-config", "--config", str(test_pki.config_path), env=softhsm.env)
    assert result.returncode == 0, result.stderr
    assert "# issuer test-ca: rsa-2048, signed by the delegated responder" in result.stderr
    assert f'pkcs11_module = "{MODULE}"' in result.stdout
    assert USER_PIN not in result.stdout + result.stderr


def test_the_certificate_can_be_read_from_the_token(tmp_path: Path, softhsm: SoftHsm) -> None:
    test_pki = token_pki(tmp_path / "pki", softhsm)
    assert test_pki.responder is not None and test_pki.responder_path is not None
    softhsm.import_cert(test_pki.responder.cert, "responder", "01")
    test_pki.responder_path.unlink()
    text = test_pki.config_path.read_text()
    cert_line = 'responder_cert = "pkcs11:token=ocsp;object=responder;type=cert"\n'
    test_pki.config_path.write_text(text.replace('responder_cert = "responder.pem"\n', cert_line))
    result = run("check-config", "--config", str(test_pki.config_path), env=softhsm.env)
    assert result.returncode == 0, result.stderr
    assert "signed by the delegated responder" in result.stderr


# -- a token that goes away -----------------------------------------------------------------------------------------


async def test_a_token_that_goes_away_gives_trylater_for_misses_and_recovers_by_itself(
    tmp_path: Path, softhsm: SoftHsm
) -> None:
    test_pki = token_pki(tmp_path / "pki", softhsm)
    good = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    revoked = request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert)
    served = await serving(test_pki, softhsm, OCSPD_PKCS11_PROBE="1s")
    try:
        async with aiohttp.ClientSession() as session:
            assert (await post(session, served.url, good)).certificate_status is Status.GOOD  # now in memory
            softhsm.take_away()
            # The next miss finds the token gone: tryLater, not a crash, not a 5xx.
            down = await post(session, served.url, revoked)
            assert down.response_status is ocsp.OCSPResponseStatus.TRY_LATER
            assert (await post(session, served.url, good)).certificate_status is Status.GOOD  # hits still served
            status, text = await admin_text(served, "/readyz")
            assert (status, text.splitlines()[0]) == (200, "degraded"), text
            assert "token token=ocsp: down" in text
            _, metrics = await admin_text(served, "/metrics")
            assert 'ocspd_hsm_token_up{token="token=ocsp"} 0.0' in metrics
            softhsm.bring_back()

            async def answers_again() -> bool:
                response = await post(session, served.url, revoked)
                return response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL

            await eventually(answers_again, timeout=20, what="a miss signed once the token is back")
            assert (await post(session, served.url, revoked)).certificate_status is Status.REVOKED
            status, text = await admin_text(served, "/readyz")
            assert (status, text.splitlines()[0]) == (200, "ready"), text
            _, metrics = await admin_text(served, "/metrics")
            assert 'ocspd_hsm_token_up{token="token=ocsp"} 1.0' in metrics
            assert 'ocspd_hsm_reopens_total{result="ok",token="token=ocsp"} 1.0' in metrics
    finally:
        assert await served.stop() == 0
    log = serve_log(test_pki)
    assert "event=token_down" in log and "event=token_reopened" in log, log
    assert "Traceback" not in log
    assert_no_pin_logged(log)


async def test_the_probe_notices_an_idle_token_going_away(tmp_path: Path, softhsm: SoftHsm) -> None:
    test_pki = token_pki(tmp_path / "pki", softhsm)
    served = await serving(test_pki, softhsm, OCSPD_PKCS11_PROBE="200ms")
    try:
        softhsm.take_away()

        async def degraded() -> bool:
            return (await admin_text(served, "/readyz"))[1].startswith("degraded")

        await eventually(degraded, timeout=10, what="/readyz degraded without any request")
        softhsm.bring_back()

        async def ready() -> bool:
            return (await admin_text(served, "/readyz"))[1].startswith("ready")

        await eventually(ready, timeout=20, what="/readyz ready again")
    finally:
        assert await served.stop() == 0
    assert_no_pin_logged(serve_log(test_pki))


# -- with PostgreSQL: presign through the token, stored answers while it is down -------------------------------


async def test_presign_signs_through_the_token_and_a_down_token_still_serves_stored_answers(
    tmp_path: Path, softhsm: SoftHsm, pg_dsn: str
) -> None:
    test_pki = token_pki(tmp_path / "pki", softhsm, database=pg_dsn)
    query(
        pg_dsn,
        "INSERT INTO ocspd_certificates (issuer_id, serial) SELECT 'test-ca', to_hex(g) FROM generate_series(1, 300) g",
    )
    env = {**softhsm.env, "OCSPD_PKCS11_SESSIONS": "3"}
    result = run("presign", "--config", str(test_pki.config_path), "--issuer", "test-ca", env=env)
    assert result.returncode == 0, result.stderr
    assert "presigned issuer=test-ca hash=sha1 stored=302" in result.stderr
    assert "presigned issuer=test-ca hash=sha256 stored=302" in result.stderr
    assert USER_PIN not in result.stderr
    assert test_pki.responder is not None
    public_key: Any = test_pki.responder.cert.public_key()
    for (der,) in query(pg_dsn, "SELECT der FROM ocspd_responses ORDER BY random() LIMIT 20"):
        response = ocsp.load_der_ocsp_response(bytes(der))
        assert response.signature_hash_algorithm is not None
        public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
    # Every stored answer due for refresh, and the token gone: a replica serves them while they are
    # valid (nothing to sign), and gives tryLater only where there is no stored answer.
    query(pg_dsn, "UPDATE ocspd_responses SET refresh_at = now() - interval '1 hour'")
    served = await serving(test_pki, softhsm)
    try:
        softhsm.take_away()
        async with aiohttp.ClientSession() as session:
            good = await post(session, served.url, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
            assert good.certificate_status is Status.GOOD
            unissued = request_der(test_pki.leaves["unissued"].cert, test_pki.ca.cert)  # never presigned
            assert (await post(session, served.url, unissued)).response_status is ocsp.OCSPResponseStatus.TRY_LATER
    finally:
        assert await served.stop() == 0
    log = serve_log(test_pki)
    assert "Traceback" not in log and "event=token_down" in log, log
    assert_no_pin_logged(log)


def test_check_config_leaves_a_key_whose_pin_is_a_service_credential_unchecked(
    tmp_path: Path, softhsm: SoftHsm
) -> None:
    test_pki = token_pki(tmp_path / "pki", softhsm)
    text = test_pki.config_path.read_text()
    credential = "/run/credentials/ocspd.service/token-pin"
    test_pki.config_path.write_text(
        text.replace(f'pkcs11_pin_file = "{softhsm.pin_file}"', f'pkcs11_pin_file = "{credential}"')
    )
    result = run("check-config", "--config", str(test_pki.config_path), env=softhsm.env)
    assert result.returncode == 0, result.stderr
    unchecked = "# issuer test-ca: token key not checked: its PIN is a systemd credential only the running service"
    assert f"{unchecked} can read ({credential})" in result.stderr


# -- rollover -----------------------------------------------------------------------------------------------------


async def test_sighup_rolls_over_to_a_new_token_key_with_no_failed_request(tmp_path: Path, softhsm: SoftHsm) -> None:
    test_pki = token_pki(tmp_path / "pki", softhsm)
    # The next responder key, generated and certified ahead, then put in the token.
    successor = pki.make_responder(test_pki.ca, "p256")
    softhsm.import_key(successor.key, "responder-2", "02")
    successor_path = test_pki.directory / "responder-2.pem"
    pki.write_cert(successor_path, successor.cert)
    requests = [request_der(test_pki.leaves[name].cert, test_pki.ca.cert) for name in ("good", "revoked", "unissued")]
    served = await serving(test_pki, softhsm)
    outcomes: list[str] = []
    signed_by: set[bytes] = set()
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        while not stop.is_set():
            response = await post(session, served.url, requests[n % len(requests)])
            outcomes.append(response.response_status.name)
            if response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
                signed_by.update(c.public_bytes(serialization.Encoding.DER) for c in response.certificates)
            n += 1

    try:
        async with aiohttp.ClientSession() as session:
            clients = [asyncio.create_task(client(session, n)) for n in range(4)]
            await asyncio.sleep(0.5)
            text = test_pki.config_path.read_text()
            text = text.replace("object=responder;", "object=responder-2;")
            text = text.replace('responder_cert = "responder.pem"', 'responder_cert = "responder-2.pem"')
            test_pki.config_path.write_text(text)
            served.proc.send_signal(signal.SIGHUP)
            new = successor.cert.public_bytes(serialization.Encoding.DER)

            async def rolled_over() -> bool:
                return new in signed_by

            await eventually(rolled_over, timeout=15, what="responses signed by the new key")
            signed_by.clear()
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
    finally:
        await served.stop()
    assert set(outcomes) == {"SUCCESSFUL"}, sorted(set(outcomes))
    assert signed_by == {new}, "a response of the old key was served after the rollover"
    log = serve_log(test_pki)
    assert "event=reloaded changed_issuers=test-ca" in log, log
    assert_no_pin_logged(log)


# -- in-process: an invalidation during a token signature (SPEC §3.1) ---------------------------------------------


@pytest.fixture(scope="module")
def process_hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """One SoftHSM2 for this test process: the module reads SOFTHSM2_CONF once, when first loaded."""
    skip_without_softhsm()
    hsm = SoftHsm(tmp_path_factory.mktemp("process-softhsm"))
    hsm.init_token("ocsp")
    saved = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    yield hsm
    if saved is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = saved


class GatedSigner(Signer):
    """A signer whose token signatures wait for ``gate`` once it is set (the token's slowness, on demand)."""

    def __init__(self, inner: Signer) -> None:
        self.__dict__.update(inner.__dict__)
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    async def sign_async(
        self,
        certids: Sequence[CertId],
        answers: Sequence[Answer],
        this_update: dt.datetime,
        next_update: dt.datetime,
        nonce: bytes | None = None,
        *,
        produced_at: dt.datetime,
    ) -> bytes:
        signing = asyncio.ensure_future(
            super().sign_async(certids, answers, this_update, next_update, nonce, produced_at=produced_at)
        )
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        return await signing


async def test_an_invalidation_while_a_token_key_signs_is_not_lost(
    tmp_path: Path, process_hsm: SoftHsm, ocspd_client: AppClient
) -> None:
    label = f"responder-{tmp_path.name}"[:60]  # one token for the process: a key of its own
    test_pki = token_pki(tmp_path / "pki", process_hsm, label=label, ident=os.urandom(8).hex())
    config = test_pki.config()
    tokens = tokens_for(config)
    signers = {k: GatedSigner(v) for k, v in load_signers(config, tokens).items()}
    gated = signers["test-ca"]
    assert gated.token_key is not None
    client = await ocspd_client(test_pki, signers=signers, tokens=tokens)
    assert client.app[TOKENS] is tokens
    metrics = client.app[RESPONDER].metrics
    gated.gate = asyncio.Event()
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    in_flight = asyncio.create_task(status_of(client, der, test_pki))
    await asyncio.wait_for(gated.waiting.wait(), 10)
    # The certificate is revoked while its "good" answer is being signed in the token.
    test_pki.revoke_in_index("good")

    async def invalidated() -> bool:
        return b'ocspd_invalidations_total{cause="index_reload"} 1.0' in metrics.exposition()

    await eventually(invalidated, timeout=10, what="the index change applied to the responder")
    gated.gate.set()
    gated.gate = None
    assert await in_flight is Status.REVOKED  # signed again, from the status after the change
    assert await status_of(client, der, test_pki) is Status.REVOKED  # and so is what memory keeps


async def test_a_token_call_that_does_not_return_gives_trylater_and_the_token_recovers(
    tmp_path: Path, process_hsm: SoftHsm, ocspd_client: AppClient
) -> None:
    label = f"responder-{tmp_path.name}"[:60]
    test_pki = token_pki(tmp_path / "pki", process_hsm, label=label, ident=os.urandom(8).hex())
    client = await ocspd_client(test_pki, env={"OCSPD_PKCS11_TIMEOUT": "300ms", "OCSPD_PKCS11_SESSIONS": "1"})
    (token,) = client.app[TOKENS]
    requests = [request_der(test_pki.leaves[name].cert, test_pki.ca.cert) for name in ("good", "revoked", "unissued")]
    # A module that stops answering, as a hung network HSM does: its calls block (ocspd/hsm.py
    # makes every call under the module's lock; holding it here is the hang).
    stuck, held, release = _module_lock(MODULE), threading.Event(), threading.Event()

    def hang() -> None:
        with stuck:
            held.set()
            release.wait(30)

    hung = threading.Thread(target=hang)
    hung.start()
    held.wait(10)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await status_of(client, requests[0], test_pki) == TRY_LATER_BODY
        assert loop.time() - started < 3, "tryLater after the timeout, not when the module answers"
        assert not token.up and "no answer within 0.3s" in token.failure
        started = loop.time()
        assert await status_of(client, requests[1], test_pki) == TRY_LATER_BODY  # at once, not queued
        assert loop.time() - started < 0.25
        # SIGHUP meanwhile is refused in about the timeout: the event loop (hits) never waits for the module.
        started = loop.time()
        with pytest.raises(ConfigError, match=r"has not answered for 0\.3s"):
            reload_app(client.app, test_pki.config(OCSPD_PKCS11_TIMEOUT="300ms", OCSPD_PKCS11_SESSIONS="1"))
        assert loop.time() - started < 3
    finally:
        release.set()
        hung.join()

    async def signs_again() -> bool:
        return await status_of(client, requests[2], test_pki) is Status.UNKNOWN

    await eventually(signs_again, timeout=15, what="a miss signed once the module answers again")
    assert token.up
    assert await status_of(client, requests[0], test_pki) is Status.GOOD


async def test_the_shared_refresh_re_signs_stored_answers_through_the_token(
    tmp_path: Path, process_hsm: SoftHsm, ocspd_client: AppClient, pg_dsn: str
) -> None:
    label = f"responder-{tmp_path.name}"[:60]
    test_pki = token_pki(tmp_path / "pki", process_hsm, label=label, ident=os.urandom(8).hex(), database=pg_dsn)
    query(
        pg_dsn,
        "INSERT INTO ocspd_certificates (issuer_id, serial) SELECT 'test-ca', to_hex(g) FROM generate_series(1, 200) g",
    )
    result = run("presign", "--config", str(test_pki.config_path), "--issuer", "test-ca", env=process_hsm.env)
    assert result.returncode == 0, result.stderr
    query(pg_dsn, "UPDATE ocspd_responses SET this_update = this_update - interval '1 day'")  # all due, and seen anew
    before = query(pg_dsn, "SELECT count(*) FROM ocspd_responses")[0][0]
    assert before == 2 * 202
    # With a lead longer than half the validity, every stored row is due at once.
    client = await ocspd_client(test_pki, refresh=RefreshSettings(interval=0.05, lead=dt.timedelta(hours=13)))
    assert client.app[RESPONDER].issuers["test-ca"].signer.token_key is not None

    async def all_re_signed() -> bool:
        return query(pg_dsn, "SELECT count(*) FROM ocspd_responses WHERE this_update < now() - interval '1 hour'") == [
            (0,)
        ]

    await eventually(all_re_signed, timeout=30, what="every stored answer re-signed by the refresh")
    assert test_pki.responder is not None
    public_key: Any = test_pki.responder.cert.public_key()
    for (der,) in query(pg_dsn, "SELECT der FROM ocspd_responses ORDER BY random() LIMIT 20"):
        response = ocsp.load_der_ocsp_response(bytes(der))
        assert response.signature_hash_algorithm is not None
        public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
