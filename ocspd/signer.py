"""The signing of OCSP responses.

The signer's room, with ocspd/keys.py (loading and checking the keys) and
ocspd/hsm.py (keys in PKCS#11 tokens): the only modules that touch private
keys. One ``Signer`` per configured
issuer: either a delegated responder (a certificate with id-kp-OCSPSigning
issued by the CA, included in every response) or the CA key itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ObjectIdentifier

from ocspd import der
from ocspd.hsm import TokenKey, ecdsa_hash
from ocspd.memo import Memo
from ocspd.protocol import HASH_NAMES, CertId
from ocspd.status import REASON_BY_FLAG, Status, served_reason

log = logging.getLogger("ocspd.signer")

EXTENDED_REVOKE_OID = ObjectIdentifier("1.3.6.1.5.5.7.48.1.9")
# RFC 6960 §2.2: an "extended revoked" answer for a serial never issued.
EXTENDED_REVOKE_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Answer:
    """What to say about one CertID, after the unknown-serial policy."""

    status: Status
    revoked_at: dt.datetime | None = None
    reason: x509.ReasonFlags | None = None
    extended_revoke: bool = False  # RFC 6960 §2.2 answer for an unissued serial


# How many encoded times (producedAt and revocation times) and (thisUpdate,
# nextUpdate) pairs a signer remembers (ocspd/memo.py).
TIMES_MEMO = 4096
TIME_PAIRS_MEMO = 1024

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class Signer:
    """Signs OCSP responses for one issuer."""

    def __init__(
        self,
        issuer_id: str,
        ca_cert: x509.Certificate,
        key: PrivateKey | TokenKey,
        responder_cert: x509.Certificate | None,
        responder_id: str = "key",
    ) -> None:
        self.issuer_id = issuer_id
        self.ca_cert = ca_cert
        self.responder_cert = responder_cert
        self._key = key
        self._signing_cert = responder_cert or ca_cert
        self._encoding = ocsp.OCSPResponderEncoding.HASH if responder_id == "key" else ocsp.OCSPResponderEncoding.NAME
        # Names the key (through its certificate) that signs: stored responses
        # made with another key are not served after a key rollover.
        self.fingerprint = hashlib.sha256(self._signing_cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:32]
        # A key in a token signs in its sessions' threads (ocspd/hsm.py): sign_async awaits it.
        self.token_key = key if isinstance(key, TokenKey) else None
        public = key.public_key()
        self._hash: hashes.HashAlgorithm | None
        if isinstance(public, ed25519.Ed25519PublicKey):
            self._hash, self.key_type = None, "ed25519"
        elif isinstance(public, ec.EllipticCurvePublicKey):
            self.key_type = f"ecdsa-{public.curve.name}"
            self._hash = ecdsa_hash(public.curve)
        else:
            self._hash, self.key_type = hashes.SHA256(), f"rsa-{public.key_size}"
        self._rsa = isinstance(public, rsa.RSAPublicKey)
        self._sign_data = self._signing_function()
        # CertID hashes of this issuer for every algorithm, computed once so
        # the request path only compares bytes (RFC 6960 §4.1.1).
        name_der = ca_cert.subject.public_bytes()
        key_bits = public_key_bits(ca_cert)
        self.certid_hashes: dict[str, tuple[bytes, bytes]] = {
            name: (hashlib.new(name, name_der).digest(), hashlib.new(name, key_bits).digest()) for name in HASH_NAMES
        }
        # What every response of this signer shares, encoded once.
        if self._encoding is ocsp.OCSPResponderEncoding.HASH:
            signing_key_bits = public_key_bits(self._signing_cert)
            self._responder_id = der.explicit(2, der.octet_string(hashlib.sha1(signing_key_bits).digest()))
        else:
            self._responder_id = der.explicit(1, self._signing_cert.subject.public_bytes())
        algorithm = der.oid(_SIGNATURE_OIDS[self._signature_algorithm()])
        # RFC 4055: RSA PKCS#1 v1.5 identifiers carry NULL parameters; ECDSA and Ed25519 none.
        self._signature_id = der.sequence(algorithm, der.NULL if self._rsa else b"")
        # (hash, issuer name hash, issuer key hash) -> the CertID's fields before
        # the serial. Bounded: only CertIDs that matched one of our issuers get here.
        self._certid_prefixes: dict[tuple[str, bytes, bytes], bytes] = {}
        self._certs_der = (
            der.explicit(0, der.sequence(responder_cert.public_bytes(serialization.Encoding.DER)))
            if responder_cert is not None
            else b""
        )
        # Times encoded once: every response signed in one second shares its
        # producedAt, and its thisUpdate and [0] nextUpdate; revocation times repeat.
        self._times: Memo[dt.datetime, bytes] = Memo(TIMES_MEMO, der.generalized_time)
        self._time_pairs: Memo[tuple[dt.datetime, dt.datetime], bytes] = Memo(TIME_PAIRS_MEMO, _time_pair)

    def sign(
        self,
        certids: Sequence[CertId],
        answers: Sequence[Answer],
        this_update: dt.datetime,
        next_update: dt.datetime,
        nonce: bytes | None = None,
        *,
        produced_at: dt.datetime,
    ) -> bytes:
        """Build and sign one successful OCSPResponse (DER) for these CertIDs.

        One SingleResponse per CertID, in the request's order, under one
        signature: a request of N CertIDs costs one signature and N short
        encodings. Each CertID is echoed with the hash algorithm the client
        used. The nonce, if given, goes to responseExtensions (RFC 9654
        §2.1), and so does the extended-revoke extension when any answer is
        one (RFC 6960 §4.4.8). ``produced_at`` is the caller's "now" (the
        responder's clock), in whole seconds like every time of the response.

        For one CertID these are the bytes cryptography's OCSPResponseBuilder
        produces, for several those of asn1crypto (tests/test_signer.py
        compares both), at a fraction of their cost: what every response of
        this signer shares is encoded once, the rest spliced in (ocspd/der.py).
        """
        tbs = self._tbs(certids, answers, this_update, next_update, nonce, produced_at)
        return self._response(tbs, self._sign_data(tbs))

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
        """``sign``, with a token key's signature awaited in its session threads (KeyUnavailable
        while the token is down); a key file signs inline, as ``sign``."""
        if self.token_key is None:
            return self.sign(certids, answers, this_update, next_update, nonce, produced_at=produced_at)
        tbs = self._tbs(certids, answers, this_update, next_update, nonce, produced_at)
        return self._response(tbs, await self.token_key.sign_async(tbs))

    def _tbs(
        self,
        certids: Sequence[CertId],
        answers: Sequence[Answer],
        this_update: dt.datetime,
        next_update: dt.datetime,
        nonce: bytes | None,
        produced_at: dt.datetime,
    ) -> bytes:
        """The ResponseData to sign."""
        if len(certids) != len(answers) or not certids:
            raise ValueError("certids and answers must be non-empty and of equal length")
        times = self._time_pairs[(this_update, next_update)]
        singles = []
        extended_revoke = False
        for certid, answer in zip(certids, answers, strict=True):
            singles.append(self._single_response(certid, answer, times))
            extended_revoke = extended_revoke or answer.extended_revoke
        extensions = []
        if nonce is not None:
            extensions.append(der.sequence(_NONCE_OID, der.octet_string(der.octet_string(nonce))))
        if extended_revoke:
            extensions.append(der.sequence(_EXTENDED_REVOKE_OID, der.octet_string(der.NULL)))
        return der.sequence(
            self._responder_id,
            self._times[produced_at],  # producedAt
            der.sequence(*singles),
            der.explicit(1, der.sequence(*extensions)) if extensions else b"",
        )

    def _response(self, tbs: bytes, signature: bytes) -> bytes:
        """The OCSPResponse of a signed ResponseData."""
        bits = b"\x03" + der.length(len(signature) + 1) + b"\x00"  # BIT STRING, no unused bits
        basic_len = len(tbs) + len(self._signature_id) + len(bits) + len(signature) + len(self._certs_der)
        basic_header = b"\x30" + der.length(basic_len)
        # OCSPResponse { successful, [0] { id-pkix-ocsp-basic, OCTET STRING { basic } } }, headers
        # computed from the lengths and joined once: the nested wrappers were a third of the encoding time.
        octet = b"\x04" + der.length(len(basic_header) + basic_len)
        inner_len = len(_BASIC_OID) + len(octet) + len(basic_header) + basic_len
        inner = b"\x30" + der.length(inner_len)
        explicit = b"\xa0" + der.length(len(inner) + inner_len)
        outer_len = 3 + len(explicit) + len(inner) + inner_len
        return b"".join(
            (
                b"\x30", der.length(outer_len), b"\x0a\x01\x00", explicit, inner, _BASIC_OID, octet,
                basic_header, tbs, self._signature_id, bits, signature, self._certs_der,
            )
        )  # fmt: skip

    def _single_response(self, certid: CertId, answer: Answer, times: bytes) -> bytes:
        """One SingleResponse: the CertID (its issuer part encoded once), the status, the shared times."""
        cert_id = self._certid_prefixes.get((certid.hash_name, certid.name_hash, certid.key_hash))
        if cert_id is None:
            cert_id = self._certid_prefixes[(certid.hash_name, certid.name_hash, certid.key_hash)] = (
                _CERTID_ALGORITHMS[certid.hash_name]
                + der.octet_string(certid.name_hash)
                + der.octet_string(certid.key_hash)
            )
        cert_id = der.sequence(cert_id, der.integer(certid.serial))
        if answer.status is Status.GOOD:
            status = b"\x80\x00"  # good [0] IMPLICIT NULL
        elif answer.status is Status.UNKNOWN:
            status = b"\x82\x00"  # unknown [2] IMPLICIT NULL
        else:
            assert answer.revoked_at is not None
            info = self._times[answer.revoked_at]
            reason = served_reason(answer.reason)
            if reason is not None:
                info += der.explicit(0, der.tlv(0x0A, bytes((REASON_BY_FLAG[reason].code,))))
            status = der.tlv(0xA1, info)  # revoked [1] IMPLICIT RevokedInfo
        return der.sequence(cert_id, status, times)

    def _signing_function(self) -> Callable[[bytes], bytes]:
        """The key's sign() with its algorithm objects made once (ECDSA() alone was ~4 µs a call)."""
        key = self._key
        if isinstance(key, TokenKey | ed25519.Ed25519PrivateKey):
            return key.sign
        hash_algorithm = self._hash
        assert hash_algorithm is not None
        if isinstance(key, ec.EllipticCurvePrivateKey):
            ecdsa = ec.ECDSA(hash_algorithm)
            return lambda data: key.sign(data, ecdsa)
        pkcs1 = padding.PKCS1v15()
        return lambda data: key.sign(data, pkcs1, hash_algorithm)

    def _signature_algorithm(self) -> str:
        if self._hash is None:
            return "ed25519"
        family = "rsa" if self._rsa else "ecdsa"
        return f"{self._hash.name}_{family}"


def _time_pair(times: tuple[dt.datetime, dt.datetime]) -> bytes:
    """thisUpdate and [0] nextUpdate of a SingleResponse, encoded."""
    this_update, next_update = times
    return der.generalized_time(this_update) + der.explicit(0, der.generalized_time(next_update))


_SIGNATURE_OIDS = {
    "sha256_rsa": "1.2.840.113549.1.1.11",
    "sha256_ecdsa": "1.2.840.10045.4.3.2",
    "sha384_ecdsa": "1.2.840.10045.4.3.3",
    "ed25519": "1.3.101.112",
}
_CERTID_ALGORITHMS = {
    "sha1": der.sequence(der.oid("1.3.14.3.2.26"), der.NULL),
    "sha256": der.sequence(der.oid("2.16.840.1.101.3.4.2.1"), der.NULL),
    "sha384": der.sequence(der.oid("2.16.840.1.101.3.4.2.2"), der.NULL),
    "sha512": der.sequence(der.oid("2.16.840.1.101.3.4.2.3"), der.NULL),
}
_NONCE_OID = der.oid("1.3.6.1.5.5.7.48.1.2")
_EXTENDED_REVOKE_OID = der.oid(EXTENDED_REVOKE_OID.dotted_string)
_BASIC_OID = der.oid("1.3.6.1.5.5.7.48.1.1")


def public_key_bits(cert: x509.Certificate) -> bytes:
    """The value of a certificate's subjectPublicKey BIT STRING, without its unused-bits octet.

    What a CertID's issuerKeyHash and a ResponderID byKey hash (RFC 6960
    §4.1.1, §4.2.1). Read from the TBSCertificate (RFC 5280 §4.1), so any key
    type works, also one cryptography cannot load.
    """
    tbs = cert.tbs_certificate_bytes
    _, pos, end = der.read(tbs, 0, len(tbs))
    # [version], serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    fields: list[tuple[int, int, int]] = []
    while pos < end and len(fields) < 7:
        tag, start, pos = der.read(tbs, pos, end)
        fields.append((tag, start, pos))
    if fields and fields[0][0] == 0xA0:
        del fields[0]
    if len(fields) < 6:
        raise ValueError("certificate without subjectPublicKeyInfo")
    _, start, spki_end = fields[5]
    _, _, algorithm_end = der.read(tbs, start, spki_end)
    tag, start, bits_end = der.read(tbs, algorithm_end, spki_end)
    if tag != 0x03 or start == bits_end:
        raise ValueError("certificate without subjectPublicKey")
    return tbs[start + 1 : bits_end]
