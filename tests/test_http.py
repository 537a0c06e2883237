"""The responder over HTTP, driven through the aiohttp test client (SPEC §2)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from ocspd.protocol import MALFORMED_REQUEST, TRY_LATER, UNAUTHORIZED
from tests.conftest import AppClient
from tests.helpers import (
    REVOKED_AT,
    TestPki,
    build_pki,
    multi_request_der,
    request_der,
    verify_response,
)

OCSP_REQ = {"Content-Type": "application/ocsp-request"}


async def post(client, der: bytes):  # type: ignore[no-untyped-def]
    resp = await client.post("/", data=der, headers=OCSP_REQ)
    return resp, await resp.read()


async def test_good_revoked_and_unknown_statuses(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    expected = {
        "good": ocsp.OCSPCertStatus.GOOD,
        "revoked": ocsp.OCSPCertStatus.REVOKED,
        "unissued": ocsp.OCSPCertStatus.UNKNOWN,
    }
    for name, status in expected.items():
        resp, body = await post(client, request_der(test_pki.leaves[name].cert, test_pki.ca.cert))
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/ocsp-response"
        assert verify_response(body, test_pki).certificate_status is status
    _, body = await post(client, request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert))
    revoked = ocsp.load_der_ocsp_response(body)
    assert revoked.revocation_time_utc == REVOKED_AT
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise


async def test_response_fields_follow_the_spec(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    _, body = await post(client, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
    resp = verify_response(body, test_pki)
    assert test_pki.responder is not None
    assert resp.certificates == [test_pki.responder.cert]
    assert (
        resp.responder_key_hash
        == x509.SubjectKeyIdentifier.from_public_key(test_pki.responder.cert.public_key()).digest
    )
    assert resp.next_update_utc is not None
    assert resp.next_update_utc - resp.this_update_utc == __import__("datetime").timedelta(hours=24)
    assert resp.produced_at_utc - resp.this_update_utc >= __import__("datetime").timedelta(seconds=59)


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
async def test_certid_hash_algorithm_is_echoed(
    ocspd_client: AppClient, test_pki: TestPki, algorithm: hashes.HashAlgorithm
) -> None:
    client = await ocspd_client(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, algorithm)
    req = ocsp.load_der_ocsp_request(der)
    _, body = await post(client, der)
    resp = verify_response(body, test_pki)
    assert resp.hash_algorithm.name == algorithm.name
    assert resp.issuer_name_hash == req.issuer_name_hash
    assert resp.issuer_key_hash == req.issuer_key_hash
    assert resp.serial_number == req.serial_number


async def test_two_certids_get_two_single_responses(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    der = multi_request_der([test_pki.leaves["good"].cert, test_pki.leaves["revoked"].cert], test_pki.ca.cert)
    _, body = await post(client, der)
    resp = verify_response(body, test_pki)
    statuses = {single.serial_number: single.certificate_status for single in resp.responses}
    assert statuses == {
        test_pki.leaves["good"].cert.serial_number: ocsp.OCSPCertStatus.GOOD,
        test_pki.leaves["revoked"].cert.serial_number: ocsp.OCSPCertStatus.REVOKED,
    }


async def test_more_certids_than_the_limit_is_malformed(ocspd_client: AppClient, tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path, responses="max_certids_per_request = 2")
    client = await ocspd_client(test_pki)
    certs = [test_pki.leaves[n].cert for n in ("good", "revoked", "unissued")]
    _, body = await post(client, multi_request_der(certs, test_pki.ca.cert))
    assert body == MALFORMED_REQUEST


async def test_nonce_is_echoed_in_response_extensions(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    nonce = os.urandom(32)
    _, body = await post(client, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, nonce=nonce))
    resp = verify_response(body, test_pki)
    assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert len(resp.single_extensions) == 0


async def test_nonce_policy_ignore_serves_the_cached_response(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki, env={"OCSPD_RESPONSES_NONCE": "ignore"})
    plain = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    with_nonce = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, nonce=b"x" * 16)
    _, first = await post(client, plain)
    _, second = await post(client, with_nonce)
    assert first == second


@pytest.mark.parametrize("size", [0, 129])
async def test_nonce_of_bad_size_is_malformed(ocspd_client: AppClient, test_pki: TestPki, size: int) -> None:
    client = await ocspd_client(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, nonce=b"n" * size)
    resp, body = await post(client, der)
    assert resp.status == 200
    assert body == MALFORMED_REQUEST
    assert resp.headers["Cache-Control"] == "max-age=0, no-cache"


async def test_nonce_of_128_octets_is_accepted(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    _, body = await post(client, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, nonce=b"n" * 128))
    assert verify_response(body, test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD


async def test_unknown_issuer_is_unauthorized(ocspd_client: AppClient, test_pki: TestPki, tmp_path: Path) -> None:
    client = await ocspd_client(test_pki)
    other = build_pki(tmp_path / "other")
    resp, body = await post(client, request_der(other.leaves["good"].cert, other.ca.cert))
    assert body == UNAUTHORIZED
    assert resp.headers["Cache-Control"] == "max-age=0, no-cache"


async def test_unissued_serial_policy_revoked_answers_extended_revoke(ocspd_client: AppClient, tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path, issuer_extra='unknown_serial = "revoked"')
    client = await ocspd_client(test_pki)
    _, body = await post(client, request_der(test_pki.leaves["unissued"].cert, test_pki.ca.cert))
    resp = verify_response(body, test_pki)
    assert resp.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason is x509.ReasonFlags.certificate_hold
    assert resp.revocation_time_utc is not None and resp.revocation_time_utc.year == 1970
    oids = [ext.oid.dotted_string for ext in resp.extensions]
    assert "1.3.6.1.5.5.7.48.1.9" in oids


async def test_unissued_serial_policy_unauthorized(ocspd_client: AppClient, tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path, issuer_extra='unknown_serial = "unauthorized"')
    client = await ocspd_client(test_pki)
    _, body = await post(client, request_der(test_pki.leaves["unissued"].cert, test_pki.ca.cert))
    assert body == UNAUTHORIZED
    _, body = await post(client, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
    assert verify_response(body, test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD


def _get_paths(der: bytes) -> dict[str, str]:
    std = base64.b64encode(der).decode()
    return {
        "plain": std,
        "percent-encoded": quote(std, safe=""),
        "url-safe": base64.urlsafe_b64encode(der).decode(),
        "unpadded": std.rstrip("="),
        "url-safe-unpadded": base64.urlsafe_b64encode(der).decode().rstrip("="),
    }


def _der_with_slash_and_plus(test_pki: TestPki) -> bytes:
    """A request whose base64 contains both '/' and '+' (nonce-free, so cacheable)."""
    for algorithm in (hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, algorithm)
        text = base64.b64encode(der).decode()
        if "/" in text and "+" in text:
            return der
    pytest.skip("no request with both '/' and '+' in its base64 for this random PKI")


async def test_get_gives_the_same_body_as_post(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    for name in ("good", "revoked", "unissued"):
        der = request_der(test_pki.leaves[name].cert, test_pki.ca.cert)
        _, posted = await post(client, der)
        for form, path in _get_paths(der).items():
            resp = await client.get("/" + path)
            assert resp.status == 200, form
            assert await resp.read() == posted, form


async def test_get_copes_with_slash_and_plus_in_base64(test_pki: TestPki, ocspd_client: AppClient) -> None:
    # Random keys make the base64 differ per run; search PKIs until one has both.
    for attempt in range(40):
        candidate = test_pki if attempt == 0 else build_pki(test_pki.directory.parent / f"try{attempt}")
        try:
            der = _der_with_slash_and_plus(candidate)
        except pytest.skip.Exception:
            continue
        break
    else:
        pytest.fail("could not make a request with '/' and '+' in base64")
    client = await ocspd_client(candidate)
    _, posted = await post(client, der)
    std = base64.b64encode(der).decode()
    for path in (std, std.replace("+", "%2B"), std.replace("/", "%2F"), quote(std, safe="")):
        resp = await client.get("/" + path)
        assert await resp.read() == posted, path


async def test_successful_responses_carry_rfc9919_caching_headers(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    resp = await client.get("/" + base64.b64encode(der).decode())
    body = await resp.read()
    cc = resp.headers["Cache-Control"]
    assert "public" in cc and "no-transform" in cc and "must-revalidate" in cc
    assert "no-cache" not in cc and "no-store" not in cc
    max_age = int(cc.split("max-age=")[1].split(",")[0])
    assert 0 < max_age <= 24 * 3600
    import hashlib

    assert resp.headers["ETag"] == '"' + hashlib.sha256(body).hexdigest() + '"'
    parsed = ocsp.load_der_ocsp_response(body)
    from email.utils import parsedate_to_datetime

    assert parsedate_to_datetime(resp.headers["Last-Modified"]) == parsed.this_update_utc
    assert parsedate_to_datetime(resp.headers["Expires"]) == parsed.next_update_utc


async def test_conditional_get_answers_304(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    path = "/" + base64.b64encode(request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)).decode()
    first = await client.get(path)
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
    by_etag = await client.get(path, headers={"If-None-Match": etag})
    assert by_etag.status == 304
    by_date = await client.get(path, headers={"If-Modified-Since": last_modified})
    assert by_date.status == 304
    changed = await client.get(path, headers={"If-None-Match": '"other"'})
    assert changed.status == 200


async def test_wrong_content_type_is_tolerated_when_the_body_parses(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    resp = await client.post("/", data=der, headers={"Content-Type": "application/octet-stream"})
    verify_response(await resp.read(), test_pki)
    resp = await client.post("/", data=b"hello", headers={"Content-Type": "text/plain"})
    assert await resp.read() == MALFORMED_REQUEST


@pytest.mark.parametrize(
    "body",
    [b"", b"\x30", b"\x30\x82\xff\xff", os.urandom(64), os.urandom(2000), b"\x30\x03\x0a\x01\x01"],
    ids=["empty", "one-byte", "truncated-length", "random-64", "random-2000", "a-response-not-a-request"],
)
async def test_garbage_post_is_malformed_request(ocspd_client: AppClient, test_pki: TestPki, body: bytes) -> None:
    client = await ocspd_client(test_pki)
    resp, answer = await post(client, body)
    assert resp.status == 200
    assert answer == MALFORMED_REQUEST


async def test_truncated_request_is_malformed(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    for cut in range(1, len(der)):
        _, answer = await post(client, der[:cut])
        assert answer == MALFORMED_REQUEST, cut


@pytest.mark.parametrize("path", ["/!!!notbase64", "/", "/favicon.ico", "/" + "A" * 3, "/%ZZ", "/a/b/c/%00"])
async def test_bad_get_encoding_is_malformed_request(ocspd_client: AppClient, test_pki: TestPki, path: str) -> None:
    client = await ocspd_client(test_pki)
    resp = await client.get(path)
    assert resp.status == 200
    assert await resp.read() == MALFORMED_REQUEST


async def test_oversized_body_is_413(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    resp = await client.post("/", data=b"\x30" * 10_001, headers=OCSP_REQ)
    assert resp.status == 413


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_wrong_method_is_405(ocspd_client: AppClient, test_pki: TestPki, method: str) -> None:
    client = await ocspd_client(test_pki)
    resp = await client.request(method, "/", data=b"x")
    assert resp.status == 405


async def test_store_outage_is_try_later(ocspd_client: AppClient, test_pki: TestPki) -> None:
    """A status source that cannot be read gives tryLater, never a guess (SPEC §3.5)."""
    client = await ocspd_client(test_pki)
    from ocspd.app import RESPONDER
    from ocspd.exceptions import SourceUnavailable

    source = client.app[RESPONDER].issuers["test-ca"].source

    async def down(*args: object) -> None:
        raise SourceUnavailable("index file unreadable")

    source.fetch = down
    resp, body = await post(client, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
    assert body == TRY_LATER
    assert resp.headers["Cache-Control"] == "max-age=0, no-cache"


async def test_revoking_in_index_txt_changes_the_answer_without_restart(
    ocspd_client: AppClient, test_pki: TestPki
) -> None:
    client = await ocspd_client(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    _, body = await post(client, der)
    assert verify_response(body, test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD
    test_pki.revoke_in_index("good", "superseded")
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        _, body = await post(client, der)
        resp = verify_response(body, test_pki)
        if resp.certificate_status is ocsp.OCSPCertStatus.REVOKED:
            break
        assert asyncio.get_running_loop().time() < deadline, "revocation not seen within 5 s"
        await asyncio.sleep(0.02)
    assert resp.revocation_reason is x509.ReasonFlags.superseded


async def test_mutated_requests_never_cause_an_internal_error(ocspd_client: AppClient, test_pki: TestPki) -> None:
    """Invariant 6: flipped, cut and spliced bytes give an OCSP answer, never a 5xx or internalError."""
    import random

    rng = random.Random(6960)
    client = await ocspd_client(test_pki)
    seeds = [
        request_der(test_pki.leaves["good"].cert, test_pki.ca.cert),
        request_der(test_pki.leaves["good"].cert, test_pki.ca.cert, hashes.SHA256(), nonce=b"n" * 16),
        multi_request_der([test_pki.leaves["good"].cert, test_pki.leaves["revoked"].cert], test_pki.ca.cert, b"z"),
    ]
    allowed = {MALFORMED_REQUEST, UNAUTHORIZED}
    seen: set[bytes] = set()
    for _ in range(600):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos : pos + rng.randint(1, 8)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        resp, body = await post(client, bytes(data))
        assert resp.status == 200, bytes(data).hex()
        seen.add(body if body in allowed else b"successful")
        if body not in allowed:
            parsed = ocsp.load_der_ocsp_response(body)
            assert parsed.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL, bytes(data).hex()
    assert seen == {MALFORMED_REQUEST, UNAUTHORIZED, b"successful"}  # every outcome was exercised


async def test_remembered_requests_stay_bounded(ocspd_client: AppClient, test_pki: TestPki) -> None:
    """Invariant 6: the raw-request map of the hit path never grows past its bounds."""
    from asn1crypto import ocsp as asn1_ocsp
    from cryptography.hazmat.primitives import serialization

    from ocspd.app import HANDLERS
    from ocspd.web import handlers

    client = await ocspd_client(test_pki)
    known = client.app[HANDLERS].known_requests
    small = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    # The same CertID with a large extension: valid and cacheable, but over the byte bound.
    padded = asn1_ocsp.OCSPRequest.load(small)
    padded["tbs_request"]["request_extensions"] = [
        {"extn_id": "1.3.6.1.4.1.99999.1", "critical": False, "extn_value": b"x" * 2000}
    ]
    large = padded.dump(force=True)
    _, body = await post(client, large)
    assert verify_response(body, test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert len(known) == 0
    await post(client, small)
    assert small in known
    req = ocsp.load_der_ocsp_request(small)
    old_max, handlers.KNOWN_REQUESTS_MAX = handlers.KNOWN_REQUESTS_MAX, 3
    try:
        for serial in range(0x5000, 0x500A):
            builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
                req.issuer_name_hash, req.issuer_key_hash, serial, hashes.SHA1()
            )
            await post(client, builder.build().public_bytes(serialization.Encoding.DER))
            assert len(known) <= 3
    finally:
        handlers.KNOWN_REQUESTS_MAX = old_max


async def test_a_reload_forgets_the_requests_seen_before(ocspd_client: AppClient, test_pki: TestPki) -> None:
    """What a raw request means may change with the configuration: the hit path's map starts over."""
    from ocspd.app import HANDLERS, reload_app

    client = await ocspd_client(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    await post(client, der)
    known = client.app[HANDLERS].known_requests
    assert der in known
    assert reload_app(client.app, test_pki.config()) == []
    assert len(known) == 0
    _, body = await post(client, der)
    assert verify_response(body, test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert der in known


# -- the serving front (web.runner.OcspRunner) and aiohttp's router answer alike ------------------


def _get_path(der: bytes, prefix: str = "/") -> str:
    return prefix + quote(base64.b64encode(der).decode(), safe="")


@pytest.mark.parametrize("router", [False, True], ids=["front", "router"])
async def test_front_and_router_route_alike(ocspd_client: AppClient, test_pki: TestPki, router: bool) -> None:
    client = await ocspd_client(test_pki, router=router, env={"OCSPD_SERVER_PATH_PREFIX": "/ocsp/"})
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    resp = await client.post("/ocsp/", data=der, headers=OCSP_REQ)
    assert resp.status == 200
    assert verify_response(await resp.read(), test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD
    resp = await client.get(_get_path(der, "/ocsp/"))
    assert resp.status == 200
    assert verify_response(await resp.read(), test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD
    head = await client.head(_get_path(der, "/ocsp/"))
    assert head.status == 200 and await head.read() == b""
    assert head.headers["ETag"] == resp.headers["ETag"]
    for method, path in (("POST", "/"), ("GET", "/other"), ("POST", "/ocs")):
        assert (await client.request(method, path, data=der)).status == 404, (method, path)
    put = await client.put("/ocsp/", data=der)
    assert put.status == 405 and set(put.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
    post_below = await client.post("/ocsp/x", data=der)
    assert post_below.status == 405 and set(post_below.headers["Allow"].split(",")) == {"GET", "HEAD"}


@pytest.mark.parametrize("router", [False, True], ids=["front", "router"])
async def test_expect_100_continue_is_answered(ocspd_client: AppClient, test_pki: TestPki, router: bool) -> None:
    client = await ocspd_client(test_pki, router=router)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    # Bounded: without the interim answer, client and server would wait for each other.
    resp = await client.post("/", data=der, headers=OCSP_REQ, expect100=True, timeout=aiohttp.ClientTimeout(total=5))
    assert resp.status == 200
    assert verify_response(await resp.read(), test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD
    odd = await client.post("/", data=der, headers={**OCSP_REQ, "Expect": "something-else"})
    assert odd.status == 417


@pytest.mark.parametrize("router", [False, True], ids=["front", "router"])
async def test_front_and_router_limit_the_body_alike(ocspd_client: AppClient, test_pki: TestPki, router: bool) -> None:
    client = await ocspd_client(test_pki, router=router, env={"OCSPD_SERVER_MAX_REQUEST_BYTES": "2000"})
    assert (await client.post("/", data=b"\x30" * 2001, headers=OCSP_REQ)).status == 413
    _, body = await post(client, b"\x30" * 2000)
    assert body == MALFORMED_REQUEST


# -- paths as clients send them, request Content-Encoding (SPEC §2, issue 11) ---------------------


@pytest.mark.parametrize("path", ["/ocsp", "/ocsp/"])
@pytest.mark.parametrize("router", [False, True], ids=["front", "router"])
async def test_post_is_answered_at_the_prefix_with_and_without_its_final_slash(
    ocspd_client: AppClient, test_pki: TestPki, router: bool, path: str
) -> None:
    # An AIA of http://host/ocsp makes every POST client (openssl, GnuTLS, Go...) post to "/ocsp".
    client = await ocspd_client(test_pki, router=router, env={"OCSPD_SERVER_PATH_PREFIX": "/ocsp"})
    der = request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert)
    for _ in range(2):  # a miss, then a hit
        resp = await client.post(path, data=der, headers=OCSP_REQ)
        assert resp.status == 200
        assert verify_response(await resp.read(), test_pki).certificate_status is ocsp.OCSPCertStatus.REVOKED
    put = await client.put(path, data=der)
    assert put.status == 405 and set(put.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}


def _encoded(der: bytes, encoding: str) -> bytes:
    import gzip
    import zlib

    if encoding == "gzip":
        return gzip.compress(der)
    if encoding == "deflate":
        return zlib.compress(der)
    return der


@pytest.mark.parametrize("shape", ["content-length", "expect-100", "chunked"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-unknown"])
async def test_a_request_content_encoding_is_refused_with_415(
    ocspd_client: AppClient, test_pki: TestPki, caplog: pytest.LogCaptureFixture, encoding: str, shape: str
) -> None:
    client = await ocspd_client(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    headers = {**OCSP_REQ, "Content-Encoding": encoding}
    for body in (_encoded(der, encoding), b"\x30\x03\x02\x01\x01"):  # a real encoding, and bytes that are not
        resp = await client.post(
            "/",
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=5),
            expect100=shape == "expect-100",
            chunked=True if shape == "chunked" else None,
        )
        assert resp.status == 415, (encoding, shape, body)
        await resp.read()
    # The connection and the server go on.
    resp, answer = await post(client, der)
    assert verify_response(answer, test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_content_encoding_identity_is_accepted(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    resp = await client.post("/", data=der, headers={**OCSP_REQ, "Content-Encoding": "identity"})
    assert verify_response(await resp.read(), test_pki).certificate_status is ocsp.OCSPCertStatus.GOOD


async def test_requests_outside_the_prefix_are_counted_and_logged_rate_limited(
    ocspd_client: AppClient, test_pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    """A misconfigured AIA URL shows in a metric and in the log, without one line per request."""
    from ocspd.app import METRICS
    from ocspd.logs import KeyValueFormatter
    from ocspd.web.handlers import OUTSIDE_PREFIX_LOG_SECONDS

    offset = [0.0]
    client = await ocspd_client(
        test_pki, env={"OCSPD_SERVER_PATH_PREFIX": "/ocsp"}, clock=lambda: time.time() + offset[0]
    )
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)

    def lines() -> list[str]:
        formatted = (KeyValueFormatter().format(r) for r in caplog.records)
        return [line for line in formatted if "event=request_outside_prefix" in line]

    with caplog.at_level(logging.DEBUG):
        for method, path in [("POST", "/"), ("GET", "/other"), ("POST", "/ocs"), ("GET", "/oc")] * 3:
            assert (await client.request(method, path, data=der)).status == 404
        assert (await client.post("/ocsp", data=der, headers=OCSP_REQ)).status == 200  # not counted
        # The first is logged; the others within the interval are counted, not logged.
        assert len(lines()) == 1
        assert lines()[0].startswith("level=info logger=ocspd.http event=request_outside_prefix method=POST")
        assert " path=/ prefix=/ocsp/ suppressed=0" in lines()[0]
        offset[0] += OUTSIDE_PREFIX_LOG_SECONDS + 1
        assert (await client.get("/elsewhere")).status == 404
        assert len(lines()) == 2
        assert " path=/elsewhere prefix=/ocsp/ suppressed=11" in lines()[1]
    assert not [r for r in caplog.records if r.levelno > logging.INFO]
    assert b"\nocspd_requests_outside_prefix_total 13.0\n" in client.app[METRICS].exposition()


async def test_requests_outside_the_prefix_are_in_the_transaction_log(
    ocspd_client: AppClient, test_pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    from ocspd.logs import KeyValueFormatter

    client = await ocspd_client(test_pki, env={"OCSPD_SERVER_PATH_PREFIX": "/ocsp", "OCSPD_LOG_REQUESTS": "true"})
    with caplog.at_level(logging.INFO, logger="ocspd.requests"):
        for _ in range(3):
            assert (await client.get("/other/x")).status == 404
    lines = [r for r in caplog.records if r.name == "ocspd.requests"]
    assert len(lines) == 3  # every request, as the transaction log has them
    formatted = [KeyValueFormatter().format(r) for r in lines]
    assert all("status=not_found" in line and "path=/other/x" in line for line in formatted), formatted
