"""The signer's one-CertID responses are byte for byte what cryptography's
OCSPResponseBuilder makes (ocspd/der.py encodes them itself, for speed)."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ocspd import der, pki
from ocspd.protocol import CertId
from ocspd.signer import EXTENDED_REVOKE_OID, EXTENDED_REVOKE_TIME, Answer, Signer, load_signers
from tests.helpers import TestPki, build_pki, verify_response

THIS = dt.datetime(2026, 11, 27, 6, 0, 0, tzinfo=dt.UTC)
NEXT = THIS + dt.timedelta(hours=24)

ANSWERS = {
    "good": Answer("good"),
    "unknown": Answer("unknown"),
    "revoked": Answer(
        "revoked", dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC), x509.ReasonFlags.key_compromise
    ),
    "revoked-no-reason": Answer("revoked", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
    "revoked-remove-from-crl": Answer(
        "revoked", dt.datetime(2026, 1, 2, tzinfo=dt.UTC), x509.ReasonFlags.remove_from_crl
    ),
    "extended-revoke": Answer("revoked", EXTENDED_REVOKE_TIME, x509.ReasonFlags.certificate_hold, True),
}
SERIALS = [1, 0x80, 0x7F, 0xFF00FF00FF00FF00FF00, (1 << 159) | 12345]


def with_builder(test_pki: TestPki, responder_id: str, certid: CertId, answer: Answer, nonce: bytes | None) -> bytes:
    """The same response through cryptography's OCSPResponseBuilder: the reference."""
    identity = test_pki.responder or test_pki.ca
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        certid.name_hash, certid.key_hash, certid.serial, getattr(hashes, certid.hash_name.upper())(),
        getattr(ocsp.OCSPCertStatus, answer.status.upper()), THIS, NEXT, answer.revoked_at,
        answer.reason if answer.status == "revoked" else None,
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
    """Ours and the builder's, produced in the same second (producedAt is "now")."""
    for _ in range(5):
        ours = signer.sign((certid,), (answer,), THIS, NEXT, nonce)
        reference = with_builder(test_pki, responder_id, certid, answer, nonce)
        a, b = ocsp.load_der_ocsp_response(ours), ocsp.load_der_ocsp_response(reference)
        if a.produced_at_utc == b.produced_at_utc:
            return ours, reference
    raise AssertionError("could not build both within one second")


@pytest.mark.parametrize(
    ("key_type", "delegated", "responder_id"),
    [
        ("p256", True, "key"),
        ("p384", True, "name"),
        ("rsa2048", True, "key"),
        ("rsa2048", False, "name"),
        ("ed25519", True, "key"),
        ("ed25519", False, "key"),
    ],
)
def test_template_response_equals_the_builders(
    tmp_path: Path, key_type: str, delegated: bool, responder_id: str
) -> None:
    test_pki = build_pki(
        tmp_path, key_type=key_type, delegated=delegated,  # type: ignore[arg-type]
        issuer_extra=f'responder_id = "{responder_id}"',
    )
    signer = load_signers(test_pki.config())["test-ca"]
    deterministic = key_type in ("rsa2048", "ed25519")  # ECDSA signatures are randomised
    for (answer_name, answer), hash_name, serial, nonce in itertools.product(
        ANSWERS.items(), ("sha1", "sha256", "sha384", "sha512"), SERIALS[:2], (None, b"n" * 32)
    ):
        name_hash, key_hash = signer.certid_hashes[hash_name]
        ours, reference = both(
            test_pki, signer, CertId(hash_name, name_hash, key_hash, serial), answer, nonce, responder_id
        )
        what = f"{answer_name} {hash_name} {serial:x} nonce={nonce is not None}"
        if deterministic:
            assert ours == reference, what
        else:
            a, b = ocsp.load_der_ocsp_response(ours), ocsp.load_der_ocsp_response(reference)
            assert a.tbs_response_bytes == b.tbs_response_bytes, what
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


def test_der_oid_matches_asn1crypto() -> None:
    from asn1crypto.core import ObjectIdentifier

    for dotted in ("1.3.14.3.2.26", "2.16.840.1.101.3.4.2.1", "1.2.840.113549.1.1.11", "1.3.101.112", "2.999.3"):
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
    assert der.generalized_time(moment) == der.generalized_time(moment)  # remembered, same bytes
