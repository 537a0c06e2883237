"""RFC 6960 / RFC 9919 on the wire: request parsing, GET decoding, error
responses and the HTTP caching headers of a response.

Nothing here does I/O or knows about caches: bytes in, values out.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import re
from dataclasses import dataclass
from urllib.parse import unquote

from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.x509 import ocsp

from ocspd.exceptions import MalformedRequest, Unauthorized

OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"

# RFC 9654 §2.1: responders accept nonces of 1..128 octets and reject others.
NONCE_MIN = 1
NONCE_MAX = 128

# Hash algorithms a CertID may use; names as cryptography spells them.
HASH_NAMES = ("sha1", "sha256", "sha384", "sha512")
_ASN1_HASHES = {"sha1": "sha1", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}

# OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED } -- unsuccessful
# responses carry no body (RFC 6960 §4.2.1), so they are constants.
MALFORMED_REQUEST = bytes.fromhex("30030a0101")
INTERNAL_ERROR = bytes.fromhex("30030a0102")
TRY_LATER = bytes.fromhex("30030a0103")
UNAUTHORIZED = bytes.fromhex("30030a0106")

ERROR_HEADERS = {
    "Content-Type": OCSP_RESPONSE_TYPE,
    "Cache-Control": "max-age=0, no-cache",
}

# Seconds kept off max-age so that an HTTP cache never holds a response
# right up to (or past) its nextUpdate because of clock skew or latency.
MAX_AGE_MARGIN = 60


@dataclass(frozen=True, slots=True)
class CertId:
    """One CertID of a request, as the client sent it."""

    hash_name: str  # one of HASH_NAMES
    name_hash: bytes
    key_hash: bytes
    serial: int


@dataclass(frozen=True, slots=True)
class OcspRequest:
    """A parsed request: its CertIDs and the nonce, if any."""

    certids: tuple[CertId, ...]
    nonce: bytes | None


def parse_request(der: bytes) -> OcspRequest:
    """Parse a DER OCSPRequest.

    Raises MalformedRequest for anything that does not parse or breaks
    RFC 9654's nonce size; Unauthorized for a hash algorithm we cannot match.
    """
    if not der:
        raise MalformedRequest("empty request")
    try:
        req = ocsp.load_der_ocsp_request(der)
    except NotImplementedError:
        # cryptography refuses several CertIDs in one request; asn1crypto doesn't.
        return _parse_multi(der)
    except ValueError as exc:
        raise MalformedRequest(f"request does not parse: {exc}") from None
    try:
        hash_name = req.hash_algorithm.name
    except Exception:
        raise Unauthorized("unsupported CertID hash algorithm") from None
    if hash_name not in HASH_NAMES:
        raise Unauthorized(f"unsupported CertID hash algorithm {hash_name}")
    try:
        extensions = req.extensions
    except Exception as exc:
        raise MalformedRequest(f"bad request extensions: {exc}") from None
    nonce: bytes | None = None
    if extensions:
        try:
            nonce = extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            pass
        else:
            _check_nonce(nonce)
    certid = CertId(hash_name, req.issuer_name_hash, req.issuer_key_hash, req.serial_number)
    return OcspRequest((certid,), nonce)


def _check_nonce(nonce: bytes) -> None:
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise MalformedRequest(f"nonce of {len(nonce)} octets (allowed {NONCE_MIN}..{NONCE_MAX})")


def _parse_multi(der: bytes) -> OcspRequest:
    try:
        req = asn1_ocsp.OCSPRequest.load(der, strict=True)
        tbs = req["tbs_request"]
        certids = []
        for item in tbs["request_list"]:
            cid = item["req_cert"]
            algo = cid["hash_algorithm"]["algorithm"].native
            if algo not in _ASN1_HASHES:
                raise Unauthorized(f"unsupported CertID hash algorithm {algo}")
            certids.append(
                CertId(
                    _ASN1_HASHES[algo],
                    bytes(cid["issuer_name_hash"].native),
                    bytes(cid["issuer_key_hash"].native),
                    int(cid["serial_number"].native),
                )
            )
        nonce: bytes | None = None
        for ext in tbs["request_extensions"] or ():
            if ext["extn_id"].dotted == "1.3.6.1.5.5.7.48.1.2":
                nonce = bytes(ext["extn_value"].parsed.native)
    except (Unauthorized, MalformedRequest):
        raise
    except Exception as exc:  # asn1crypto raises ValueError, TypeError, KeyError...
        raise MalformedRequest(f"request does not parse: {exc}") from None
    if not certids:
        raise MalformedRequest("request lists no certificate")
    if nonce is not None:
        _check_nonce(nonce)
    return OcspRequest(tuple(certids), nonce)


_B64_JUNK = re.compile(r"\s+")


def decode_get_path(tail: str) -> bytes:
    """Decode the part of a GET path after the prefix into request DER.

    Copes with what real clients send (RFC 6960 App. A.1 is loosely
    followed): percent-encoding of any character (``%2B``, ``%2F``,
    ``%3D``), raw ``/`` inside the base64 (the request then spans several
    path segments), missing padding, the base64url alphabet, and any number
    of ``/`` between the prefix and the base64 (Go's and cfssl's clients
    send ``{AIA URL}/{base64}``, so an AIA URL ending in ``/`` gives ``//``).

    Those leading slashes are told from the base64's own ``/`` thus: an
    OCSPRequest is a DER SEQUENCE, whose first octet is 0x30, so its base64
    (either alphabet) starts with ``M`` and never with ``/``. Every raw
    ``/`` before the first other character is a path separator; a ``/``
    after it is base64. (A percent-encoded ``%2F`` is never stripped.)
    """
    text = _B64_JUNK.sub("", unquote(tail.lstrip("/")))
    if not text:
        raise MalformedRequest("empty GET request")
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text = text.rstrip("=")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRequest("GET request is not valid base64") from None


def http_date(moment: dt.datetime) -> str:
    """RFC 9110 IMF-fixdate of an aware datetime."""
    return email.utils.format_datetime(moment.astimezone(dt.UTC), usegmt=True)


def cache_control(next_update_ts: float, now: float) -> str:
    """Cache-Control of a successful response that is good until next_update_ts."""
    max_age = int(next_update_ts - now) - MAX_AGE_MARGIN
    if max_age < 0:
        max_age = 0
    return f"max-age={max_age}, public, no-transform, must-revalidate"


def not_modified(
    if_none_match: str | None,
    if_modified_since: str | None,
    etag: str,
    this_update_ts: float,
) -> bool:
    """Whether conditional request headers allow a 304 (RFC 9110 §13.2.2)."""
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
        return etag in tags
    if if_modified_since is not None:
        try:
            since = email.utils.parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError, IndexError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        return this_update_ts <= since.timestamp()
    return False
