"""The signer's one-CertID responses are byte for byte what cryptography's
OCSPResponseBuilder makes, its several-CertID ones what asn1crypto encodes
(ocspd/der.py encodes both itself, for speed, under one signature)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp

from ocspd import der, pki
from ocspd.keys import load_signers
from ocspd.protocol import CertId
from ocspd.signer import EXTENDED_REVOKE_OID, EXTENDED_REVOKE_TIME, Answer, Signer
from ocspd.status import Status, served_reason
from tests.helpers import TestPki, build_pki, verify_response

THIS = dt.datetime(2026, 11, 27, 6, 0, 0, tzinfo=dt.UTC)
NEXT = THIS + dt.timedelta(hours=24)
# The signer's "now", as the responder's clock gives it: the response holds whole seconds.
PRODUCED = THIS + dt.timedelta(hours=1, seconds=7, microseconds=654321)

ANSWERS = {
    "good": Answer(Status.GOOD),
    "unknown": Answer(Status.UNKNOWN),
    "revoked": Answer(
        Status.REVOKED, dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC), x509.ReasonFlags.key_compromise
    ),
    "revoked-no-reason": Answer(Status.REVOKED, dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
    "revoked-remove-from-crl": Answer(
        Status.REVOKED, dt.datetime(2026, 1, 2, tzinfo=dt.UTC), x509.ReasonFlags.remove_from_crl
    ),
    "extended-revoke": Answer(Status.REVOKED, EXTENDED_REVOKE_TIME, x509.ReasonFlags.certificate_hold, True),
}
SERIALS = [1, 0x80, 0x7F, 0xFF00FF00FF00FF00FF00, (1 << 159) | 12345]
HASHES = ("sha1", "sha256", "sha384", "sha512")


def with_builder(test_pki: TestPki, responder_id: str, certid: CertId, answer: Answer, nonce: bytes | None) -> bytes:
    """The same response through cryptography's OCSPResponseBuilder: the reference."""
    identity = test_pki.responder or test_pki.ca
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        certid.name_hash,
        certid.key_hash,
        certid.serial,
        getattr(hashes, certid.hash_name.upper())(),
        ocsp.OCSPCertStatus[answer.status.name],
        THIS,
        NEXT,
        answer.revoked_at,
        answer.reason if answer.status is Status.REVOKED else None,
    )
    encoding = ocsp.OCSPResponderEncoding.HASH if responder_id == "key" else ocsp.OCSPResponderEncoding.NAME
    builder = builder.responder_id(encoding, identity.cert)
    if test_pki.responder is not None:
        builder = builder.certificates([test_pki.responder.cert])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    if answer.extended_revoke:
        builder = builder.add_extension(x509.UnrecognizedExtension(EXTENDED_REVOKE_OID, b"\x05\x00"), critical=False)
    return builder.sign(identity.key, pki.sign_hash(identity.key)).public_bytes(serialization.Encoding.DER)


def both(
    test_pki: TestPki, signer: Signer, certid: CertId, answer: Answer, nonce: bytes | None, responder_id: str = "key"
) -> tuple[bytes, bytes]:
    """Ours and the builder's, with the same producedAt.

    The builder takes producedAt from the wall clock; ours is given it, as the
    responder gives it its clock's second: we sign with the builder's.
    """
    reference = with_builder(test_pki, responder_id, certid, answer, nonce)
    produced_at = ocsp.load_der_ocsp_response(reference).produced_at_utc
    ours = signer.sign((certid,), (answer,), THIS, NEXT, nonce, produced_at=produced_at)
    assert ocsp.load_der_ocsp_response(ours).produced_at_utc == produced_at
    return ours, reference


# (key type, delegated responder, responder_id): each signer built once for its cases below.
TEMPLATE_SIGNERS: list[tuple[pki.KeyType, bool, str]] = [
    ("p256", True, "key"),
    ("p384", True, "name"),
    ("rsa2048", True, "key"),
    ("rsa2048", False, "name"),
    ("ed25519", True, "key"),
    ("ed25519", False, "key"),
]


@dataclass(frozen=True)
class TemplateSigner:
    test_pki: TestPki
    signer: Signer
    responder_id: str
    deterministic: bool  # ECDSA signatures are randomised


@pytest.fixture(scope="module", params=TEMPLATE_SIGNERS, ids=["-".join(map(str, p)) for p in TEMPLATE_SIGNERS])
def template_signer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TemplateSigner:
    key_type, delegated, responder_id = request.param
    test_pki = build_pki(
        tmp_path_factory.mktemp("pki"),
        key_type=key_type,
        delegated=delegated,
        issuer_extra=f'responder_id = "{responder_id}"',
    )
    signer = load_signers(test_pki.config())["test-ca"]
    return TemplateSigner(test_pki, signer, responder_id, key_type in ("rsa2048", "ed25519"))


@pytest.mark.parametrize("answer_name", list(ANSWERS))
@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("serial", SERIALS[:2], ids=lambda serial: f"serial-{serial:x}")
@pytest.mark.parametrize("nonce", [None, b"n" * 32], ids=["no-nonce", "nonce"])
def test_template_response_equals_the_builders(
    template_signer: TemplateSigner, answer_name: str, hash_name: str, serial: int, nonce: bytes | None
) -> None:
    test_pki, signer = template_signer.test_pki, template_signer.signer
    name_hash, key_hash = signer.certid_hashes[hash_name]
    ours, reference = both(
        test_pki,
        signer,
        CertId(hash_name, name_hash, key_hash, serial),
        ANSWERS[answer_name],
        nonce,
        template_signer.responder_id,
    )
    if template_signer.deterministic:
        assert ours == reference
    else:
        a, b = ocsp.load_der_ocsp_response(ours), ocsp.load_der_ocsp_response(reference)
        assert a.tbs_response_bytes == b.tbs_response_bytes
        assert a.signature_algorithm_oid == b.signature_algorithm_oid
        assert a.certificates == b.certificates
        assert len(ours) - len(a.signature) == len(reference) - len(b.signature)
    verify_response(ours, test_pki)


@pytest.mark.parametrize("serial", SERIALS)
def test_serial_encodings_match(tmp_path: Path, serial: int) -> None:
    test_pki = build_pki(tmp_path, key_type="ed25519")
    signer = load_signers(test_pki.config())["test-ca"]
    name_hash, key_hash = signer.certid_hashes["sha1"]
    ours, reference = both(test_pki, signer, CertId("sha1", name_hash, key_hash, serial), ANSWERS["good"], None)
    assert ours == reference
    assert ocsp.load_der_ocsp_response(ours).serial_number == serial


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, -1, -128, -129, 1 << 64])
def test_der_integer_matches_asn1crypto(value: int) -> None:
    from asn1crypto.core import Integer

    assert der.integer(value) == Integer(value).dump()


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 65535, 65536])
def test_der_length_matches_asn1crypto(size: int) -> None:
    from asn1crypto.core import OctetString

    assert der.octet_string(b"x" * size) == OctetString(b"x" * size).dump()


@pytest.mark.parametrize(
    "dotted", ["1.3.14.3.2.26", "2.16.840.1.101.3.4.2.1", "1.2.840.113549.1.1.11", "1.3.101.112", "2.999.3"]
)
def test_der_oid_matches_asn1crypto(dotted: str) -> None:
    from asn1crypto.core import ObjectIdentifier

    assert der.oid(dotted) == ObjectIdentifier(dotted).dump()


@pytest.mark.parametrize(
    "moment",
    [
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=dt.UTC),
        dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(2051, 6, 1, tzinfo=dt.UTC),
    ],
)
def test_der_generalized_time_matches_asn1crypto(moment: dt.datetime) -> None:
    from asn1crypto.core import GeneralizedTime

    assert der.generalized_time(moment) == GeneralizedTime(moment.replace(microsecond=0)).dump()


@pytest.mark.parametrize(
    "produced",
    [PRODUCED, PRODUCED + dt.timedelta(days=400), dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)],
    ids=["produced", "400-days-on", "2001"],
)
def test_produced_at_is_the_given_second_not_the_wall_clock(tmp_path: Path, produced: dt.datetime) -> None:
    """producedAt comes from the caller (the responder's clock), truncated to whole seconds like the other times."""
    test_pki = build_pki(tmp_path, key_type="ed25519")
    signer = load_signers(test_pki.config())["test-ca"]
    name_hash, key_hash = signer.certid_hashes["sha1"]
    certid = CertId("sha1", name_hash, key_hash, 1)
    response = ocsp.load_der_ocsp_response(signer.sign((certid,), (ANSWERS["good"],), THIS, NEXT, produced_at=produced))
    assert response.produced_at_utc == produced.replace(microsecond=0)
    assert (response.this_update_utc, response.next_update_utc) == (THIS, NEXT)


def test_the_signers_time_memos_are_bounded_and_its_own(tmp_path: Path) -> None:
    from ocspd.signer import TIME_PAIRS_MEMO, TIMES_MEMO

    test_pki = build_pki(tmp_path, key_type="ed25519")
    first, second = load_signers(test_pki.config())["test-ca"], load_signers(test_pki.config())["test-ca"]
    name_hash, key_hash = first.certid_hashes["sha1"]
    certid = CertId("sha1", name_hash, key_hash, 1)
    for i in range(TIMES_MEMO + 10):
        this_update = THIS + dt.timedelta(seconds=i)
        revoked = Answer(Status.REVOKED, THIS - dt.timedelta(seconds=i))
        response = ocsp.load_der_ocsp_response(
            first.sign((certid,), (revoked,), this_update, NEXT, produced_at=this_update)
        )
        assert response.revocation_time_utc == THIS - dt.timedelta(seconds=i)
        assert response.this_update_utc == response.produced_at_utc == this_update
    assert 0 < len(first._times) <= TIMES_MEMO
    assert 0 < len(first._time_pairs) <= TIME_PAIRS_MEMO
    assert len(second._times) == len(second._time_pairs) == 0


# -- several CertIDs: one signature over N SingleResponses -----------------------------------------


def several(signer: Signer, n: int) -> tuple[list[CertId], list[Answer]]:
    """n CertIDs of distinct serials, every hash algorithm and every kind of answer in turn."""
    kinds = [*ANSWERS.values(), Answer(Status.REVOKED, THIS - dt.timedelta(days=3), x509.ReasonFlags.unspecified)]
    certids = []
    for i in range(n):
        name_hash, key_hash = signer.certid_hashes[HASHES[i % len(HASHES)]]
        certids.append(CertId(HASHES[i % len(HASHES)], name_hash, key_hash, SERIALS[i % len(SERIALS)] + i))
    return certids, [kinds[i % len(kinds)] for i in range(n)]


def with_asn1crypto(
    test_pki: TestPki,
    responder_id: str,
    certids: list[CertId],
    answers: list[Answer],
    nonce: bytes | None,
    produced_at: dt.datetime,
) -> bytes:
    """The same response through asn1crypto's encoder (cryptography builds one SingleResponse only): the reference."""
    from asn1crypto import core as asn1_core
    from asn1crypto import ocsp as asn1_ocsp
    from asn1crypto import x509 as asn1_x509

    identity = test_pki.responder or test_pki.ca
    responses = []
    for certid, answer in zip(certids, answers, strict=True):
        status: Any
        if answer.status is Status.REVOKED:
            assert answer.revoked_at is not None
            info: dict[str, Any] = {"revocation_time": answer.revoked_at.replace(microsecond=0)}
            if answer.reason is not None and answer.reason is not x509.ReasonFlags.unspecified:  # RFC 5280 §5.3.1
                info["revocation_reason"] = answer.reason.name
            status = asn1_ocsp.CertStatus(name="revoked", value=info)
        else:
            status = asn1_ocsp.CertStatus(name=answer.status.value, value=asn1_core.Null())
        responses.append(
            {
                "cert_id": {
                    "hash_algorithm": {"algorithm": certid.hash_name},
                    "issuer_name_hash": certid.name_hash,
                    "issuer_key_hash": certid.key_hash,
                    "serial_number": certid.serial,
                },
                "cert_status": status,
                "this_update": THIS,
                "next_update": NEXT,
            }
        )
    extensions: list[dict[str, Any]] = []
    if nonce is not None:
        extensions.append({"extn_id": "nonce", "critical": False, "extn_value": nonce})
    if any(a.extended_revoke for a in answers):
        extensions.append(
            {"extn_id": EXTENDED_REVOKE_OID.dotted_string, "critical": False, "extn_value": asn1_core.Null()}
        )
    cert = asn1_x509.Certificate.load(identity.cert.public_bytes(serialization.Encoding.DER))
    rid = (
        asn1_ocsp.ResponderId(name="by_key", value=cert.public_key.sha1)
        if responder_id == "key"
        else asn1_ocsp.ResponderId(name="by_name", value=cert.subject)
    )
    tbs: dict[str, Any] = {"responder_id": rid, "produced_at": produced_at, "responses": responses}
    if extensions:
        tbs["response_extensions"] = extensions
    data = asn1_ocsp.ResponseData(tbs)
    key = identity.key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm, signature = "ed25519", key.sign(data.dump())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        hash_algorithm = pki.sign_hash(key)
        assert hash_algorithm is not None
        algorithm, signature = f"{hash_algorithm.name}_ecdsa", key.sign(data.dump(), ec.ECDSA(hash_algorithm))
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        algorithm, signature = "sha256_rsa", key.sign(data.dump(), padding.PKCS1v15(), hashes.SHA256())
    basic: dict[str, Any] = {
        "tbs_response_data": data,
        "signature_algorithm": {"algorithm": algorithm},
        "signature": signature,
    }
    if test_pki.responder is not None:
        basic["certs"] = [asn1_x509.Certificate.load(test_pki.responder.cert.public_bytes(serialization.Encoding.DER))]
    return bytes(
        asn1_ocsp.OCSPResponse(
            {
                "response_status": "successful",
                "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
            }
        ).dump()
    )


@pytest.mark.parametrize(
    ("key_type", "delegated", "responder_id"),
    [("p256", True, "key"), ("p384", True, "name"), ("rsa2048", False, "name"), ("ed25519", True, "key")],
)
@pytest.mark.parametrize("n", [2, 3, 16])
@pytest.mark.parametrize("nonce", [None, b"n" * 32], ids=["no-nonce", "nonce"])
def test_several_certids_encode_as_asn1crypto_does(
    tmp_path: Path, key_type: pki.KeyType, delegated: bool, responder_id: str, n: int, nonce: bytes | None
) -> None:
    test_pki = build_pki(
        tmp_path, key_type=key_type, delegated=delegated, issuer_extra=f'responder_id = "{responder_id}"'
    )
    signer = load_signers(test_pki.config())["test-ca"]
    certids, answers = several(signer, n)
    ours = signer.sign(certids, answers, THIS, NEXT, nonce, produced_at=PRODUCED)
    loaded = ocsp.load_der_ocsp_response(ours)
    reference = with_asn1crypto(test_pki, responder_id, certids, answers, nonce, PRODUCED.replace(microsecond=0))
    assert loaded.tbs_response_bytes == ocsp.load_der_ocsp_response(reference).tbs_response_bytes
    if key_type in ("rsa2048", "ed25519"):  # deterministic signatures: the whole response
        assert ours == reference
    verify_response(ours, test_pki)


@pytest.mark.parametrize("key_type", ["p256", "rsa2048", "ed25519"])
@pytest.mark.parametrize("n", [1, 2, 16])
@pytest.mark.parametrize("nonce", [None, b"\x01" * 16], ids=["no-nonce", "nonce"])
def test_cryptography_reads_every_certid_of_a_response(
    tmp_path: Path, key_type: pki.KeyType, n: int, nonce: bytes | None
) -> None:
    test_pki = build_pki(tmp_path, key_type=key_type)
    signer = load_signers(test_pki.config())["test-ca"]
    certids, answers = several(signer, n)
    response = verify_response(signer.sign(certids, answers, THIS, NEXT, nonce, produced_at=PRODUCED), test_pki)
    singles = list(response.responses)
    assert len(singles) == n
    for certid, answer, single in zip(certids, answers, singles, strict=True):
        assert single.serial_number == certid.serial
        assert single.hash_algorithm.name == certid.hash_name
        assert (single.issuer_name_hash, single.issuer_key_hash) == (certid.name_hash, certid.key_hash)
        assert single.certificate_status is ocsp.OCSPCertStatus[answer.status.name]
        assert (single.this_update_utc, single.next_update_utc) == (THIS, NEXT)
        if answer.status is Status.REVOKED:
            assert answer.revoked_at is not None
            assert single.revocation_time_utc == answer.revoked_at.replace(microsecond=0)
            assert single.revocation_reason is served_reason(answer.reason)
        else:
            assert single.revocation_time_utc is None
    extensions = {e.oid: e for e in response.extensions}
    if nonce is None:
        assert x509.OCSPNonce.oid not in extensions
    else:
        assert extensions[x509.OCSPNonce.oid].value.nonce == nonce
    assert (EXTENDED_REVOKE_OID in extensions) is any(a.extended_revoke for a in answers)


@pytest.mark.parametrize("n", [1, 16])
def test_a_response_of_n_certids_costs_one_signature(tmp_path: Path, n: int) -> None:
    test_pki = build_pki(tmp_path)
    signer = load_signers(test_pki.config())["test-ca"]
    signed: list[bytes] = []
    sign_data = signer._sign_data

    def counted(data: bytes) -> bytes:
        signed.append(data)
        return sign_data(data)

    signer._sign_data = counted
    certids, answers = several(signer, n)
    response = ocsp.load_der_ocsp_response(signer.sign(certids, answers, THIS, NEXT, b"n" * 16, produced_at=PRODUCED))
    assert signed == [response.tbs_response_bytes]
    assert len(list(response.responses)) == n


@pytest.mark.parametrize("key_type", pki.KEY_TYPES)
def test_public_key_bits_are_the_subject_public_key_without_its_unused_bits_octet(key_type: pki.KeyType) -> None:
    from asn1crypto import x509 as asn1_x509

    from ocspd.signer import public_key_bits

    ca = pki.make_ca("bits", key_type)
    for cert in (ca.cert, pki.make_leaf(ca, 0x42, "leaf.test").cert, pki.make_responder(ca, key_type).cert):
        parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
        assert public_key_bits(cert) == parsed.public_key["public_key"].contents[1:]
