"""Every live signature is under the one in-flight bound (SPEC §2, issue 11): cache misses,
nonce requests and several-CertID requests, also from index.txt, whose status reads never
suspend; past ``max_inflight_signatures`` they get tryLater, never a 5xx."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography.x509 import ocsp

from ocspd.app import RESPONDER
from ocspd.exceptions import Overloaded
from ocspd.protocol import TRY_LATER, parse_request
from tests.conftest import AppClient
from tests.helpers import build_pki, verify_response

KINDS = ("miss", "nonce", "certids")


def request_for(responder: Any, kind: str, n: int) -> bytes:
    """The n-th request of a kind, each for serials no other request asks about (so each one signs)."""
    name_hash, key_hash = responder.issuers["test-ca"].signer.certid_hashes["sha1"]
    serials = [0x10000 + 16 * n + i for i in range(3 if kind == "certids" else 1)]
    tbs: dict[str, object] = {
        "request_list": [
            {
                "req_cert": {
                    "hash_algorithm": {"algorithm": "sha1"},
                    "issuer_name_hash": name_hash,
                    "issuer_key_hash": key_hash,
                    "serial_number": serial,
                }
            }
            for serial in serials
        ]
    }
    if kind == "nonce":
        tbs["request_extensions"] = [{"extn_id": "nonce", "extn_value": n.to_bytes(16, "big")}]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())


@pytest.mark.parametrize("kind", [*KINDS, "mixed"])
async def test_signatures_started_together_past_the_bound_are_overloaded(
    ocspd_client: AppClient, tmp_path: Path, kind: str
) -> None:
    """index.txt answers without suspending: before the fix, every one of these was signed inline."""
    client = await ocspd_client(build_pki(tmp_path, responses="max_inflight_signatures = 2"))
    responder: Any = client.app[RESPONDER]
    requests = [parse_request(request_for(responder, KINDS[i % 3] if kind == "mixed" else kind, i)) for i in range(12)]
    results = await asyncio.gather(*(responder.respond(r) for r in requests), return_exceptions=True)
    assert [isinstance(r, Overloaded) for r in results] == [False, False] + [True] * 10, results
    assert responder.signing == 0
    # The bound is on what is in flight, not a quota: once they are done, the next ones are signed.
    entry = (await responder.respond(requests[5])).entry
    assert ocsp.load_der_ocsp_response(entry.der).response_status is ocsp.OCSPResponseStatus.SUCCESSFUL


async def test_a_production_cancelled_while_admitted_gives_its_slot_back(
    ocspd_client: AppClient, tmp_path: Path
) -> None:
    client = await ocspd_client(build_pki(tmp_path, responses="max_inflight_signatures = 1"))
    responder: Any = client.app[RESPONDER]
    task = asyncio.create_task(responder.respond(parse_request(request_for(responder, "miss", 0))))
    await asyncio.sleep(0)  # the task has taken the slot and yielded
    assert responder.signing == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert responder.signing == 0


@pytest.mark.parametrize("router", [False, True], ids=["ocspd-front", "aiohttp-router"])
async def test_a_flood_of_distinct_misses_from_index_txt_gets_try_later_and_no_5xx(
    ocspd_client: AppClient, tmp_path: Path, router: bool
) -> None:
    test_pki = build_pki(tmp_path, responses="max_inflight_signatures = 1")
    client = await ocspd_client(test_pki, router=router)
    responder: Any = client.app[RESPONDER]
    bodies = [request_for(responder, KINDS[i % 3], i) for i in range(96)]

    async def post(body: bytes) -> tuple[int, bytes]:
        resp = await client.post("/", data=body, headers={"Content-Type": "application/ocsp-request"})
        return resp.status, await resp.read()

    answers = await asyncio.gather(*(post(b) for b in bodies))
    assert {status for status, _ in answers} == {200}
    tried_later = [i for i, (_, body) in enumerate(answers) if body == TRY_LATER]
    assert tried_later, "no request met the bound"
    assert {KINDS[i % 3] for i in tried_later} == set(KINDS), tried_later  # each kind is bounded
    signed = [body for _, body in answers if body != TRY_LATER]
    assert signed
    for body in signed:
        verify_response(body, test_pki)
    assert responder.signing == 0
