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

from cryptography import x509
from cryptography.x509 import ocsp

from ocspd import der
from ocspd.exceptions import MalformedRequest, Unauthorized

OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"

# RFC 9654 §2.1: responders accept nonces of 1..128 octets and reject others.
NONCE_MIN = 1
NONCE_MAX = 128

# Hash algorithms a CertID may use; names as cryptography spells them.
HASH_NAMES = ("sha1", "sha256", "sha384", "sha512")

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


def parse_request(data: bytes) -> OcspRequest:
    """Parse a DER OCSPRequest.

    Raises MalformedRequest for anything that does not parse or breaks
    RFC 9654's nonce size; Unauthorized for a hash algorithm we cannot match.
    """
    if not data:
        raise MalformedRequest("empty request")
    try:
        req = ocsp.load_der_ocsp_request(data)
    except NotImplementedError:
        return _parse_several(data)  # cryptography refuses several CertIDs in one request
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


def _parse_several(data: bytes) -> OcspRequest:
    """A request of several CertIDs (or none), which cryptography parses whole but will not return.

    It refuses them only after parsing the whole structure as strict DER
    (a broken second CertID is a ValueError, not this path), so what is
    read here is a valid OCSPRequest; it is still checked as it is read.
    Read with ``der.read``: asn1crypto took ~25 µs a CertID, as much as a
    signature (issue 11).
    """
    try:
        certids, nonce = _read_request(data)
    except ValueError as exc:
        raise MalformedRequest(f"request does not parse: {exc}") from None
    if not certids:
        raise MalformedRequest("request lists no certificate")
    if nonce is not None:
        _check_nonce(nonce)
    return OcspRequest(tuple(certids), nonce)


def _read_request(data: bytes) -> tuple[list[CertId], bytes | None]:
    """(CertIDs, nonce) of an OCSPRequest (RFC 6960 §4.1.1); ValueError if it is not one."""
    read = der.read
    tag, start, end = read(data, 0, len(data))
    if tag != _SEQUENCE or end != len(data):
        raise ValueError("not one SEQUENCE")
    tag, pos, tbs_end = read(data, start, end)  # tbsRequest
    if tag != _SEQUENCE:
        raise ValueError("no tbsRequest")
    if tbs_end != end:  # optionalSignature [0] EXPLICIT: not checked (nor by cryptography)
        tag, _, after = read(data, tbs_end, end)
        if tag != 0xA0 or after != end:
            raise ValueError("data after tbsRequest")
    tag, inner, after = read(data, pos, tbs_end)
    if tag == 0xA0:  # version [0] EXPLICIT, present only if not v1 (the DER default)
        raise ValueError("unsupported request version")
    if tag == 0xA1:  # requestorName [1] EXPLICIT: not used
        tag, inner, after = read(data, after, tbs_end)
    if tag != _SEQUENCE:
        raise ValueError("no requestList")
    list_end = after
    certids = _read_certids(data, inner, list_end)
    nonce = None
    if list_end != tbs_end:
        tag, start, end = read(data, list_end, tbs_end)
        if tag != 0xA2 or end != tbs_end:  # requestExtensions [2] EXPLICIT
            raise ValueError("data after requestList")
        nonce = _read_nonce(data, start, end)
    return certids, nonce


def _read_certids(data: bytes, pos: int, end: int) -> list[CertId]:
    """The CertIDs of a requestList's contents, ``data[pos:end]``."""
    read = der.read
    certids = []
    # The previous CertID's hashAlgorithm and issuer hashes: a request's CertIDs
    # mostly share them, and then only the serial is left to read.
    prefix, hash_name, name_hash, key_hash = b"", "", b"", b""
    while pos < end:
        tag, start, request_end = read(data, pos, end)  # Request
        tag2, start, certid_end = read(data, start, request_end)  # CertID
        if tag != _SEQUENCE or tag2 != _SEQUENCE:
            raise ValueError("bad Request")
        if certid_end != request_end:  # singleRequestExtensions [0] EXPLICIT: not used
            tag, _, after = read(data, certid_end, request_end)
            if tag != 0xA0 or after != request_end:
                raise ValueError("bad Request")
        pos = request_end
        if prefix and data.startswith(prefix, start):
            key_end = start + len(prefix)  # beyond certid_end, the serial's read fails
        else:
            tag, _, algorithm_end = read(data, start, certid_end)
            tag2, name_start, name_end = read(data, algorithm_end, certid_end)
            tag3, key_start, key_end = read(data, name_end, certid_end)
            if (tag, tag2, tag3) != (_SEQUENCE, _OCTET_STRING, _OCTET_STRING):
                raise ValueError("bad CertID")
            found = _DIGEST_ALGORITHMS.get(data[start:algorithm_end])
            if found is None:
                raise Unauthorized("unsupported CertID hash algorithm")
            prefix, hash_name = data[start:key_end], found
            name_hash, key_hash = data[name_start:name_end], data[key_start:key_end]
        tag, serial_start, serial_end = read(data, key_end, certid_end)
        if tag != _INTEGER or serial_end != certid_end:
            raise ValueError("bad CertID")
        serial = data[serial_start:serial_end]
        # DER: at least one octet, and no leading 00 or FF that the next octet's top bit makes redundant.
        if not serial or (len(serial) > 1 and serial[0] in (0, 0xFF) and not (serial[0] ^ serial[1]) & 0x80):
            raise ValueError("bad serialNumber")
        certids.append(CertId(hash_name, name_hash, key_hash, int.from_bytes(serial, signed=True)))
    return certids


def _read_nonce(data: bytes, start: int, end: int) -> bytes | None:
    """The nonce among request Extensions, if any; ValueError if they are not Extensions or repeat one."""
    read = der.read
    tag, pos, extensions_end = read(data, start, end)
    if tag != _SEQUENCE or extensions_end != end:
        raise ValueError("bad requestExtensions")
    nonce, seen = None, set()
    while pos < end:
        tag, start, ext_end = read(data, pos, end)  # Extension
        tag2, _, oid_end = read(data, start, ext_end)
        if tag != _SEQUENCE or tag2 != 0x06:
            raise ValueError("bad Extension")
        pos = ext_end
        oid = data[start:oid_end]
        if oid in seen:
            raise ValueError("duplicate extension")  # as cryptography refuses one CertID's
        seen.add(oid)
        tag, value_start, value_end = read(data, oid_end, ext_end)
        if tag == 0x01:  # critical: present only if TRUE (FALSE is the DER default)
            if data[value_start:value_end] != b"\xff":
                raise ValueError("bad Extension")
            tag, value_start, value_end = read(data, value_end, ext_end)
        if tag != _OCTET_STRING or value_end != ext_end:
            raise ValueError("bad Extension")
        if oid == _NONCE_OID:
            nonce = data[value_start:value_end]
            # RFC 6960 (and 9654): extnValue holds an OCTET STRING; RFC 2560 read as if the nonce were
            # extnValue itself, and some clients send it so. cryptography takes it raw when it is not
            # exactly one OCTET STRING, and so do we, for one answer whatever the number of CertIDs.
            try:
                tag, nonce_start, nonce_end = read(data, value_start, value_end)
            except ValueError:
                continue
            if tag == _OCTET_STRING and nonce_end == value_end:
                nonce = data[nonce_start:nonce_end]
    return nonce


_SEQUENCE, _OCTET_STRING, _INTEGER = 0x30, 0x04, 0x02
_NONCE_OID = der.oid("1.3.6.1.5.5.7.48.1.2")
# A CertID's whole AlgorithmIdentifier -> its hash: parameters NULL (RFC 6960's
# examples, openssl) or absent (RFC 5754 allows it), as cryptography accepts.
_DIGEST_ALGORITHMS = {
    der.sequence(der.oid(dotted), *params): name
    for name, dotted in (
        ("sha1", "1.3.14.3.2.26"),
        ("sha256", "2.16.840.1.101.3.4.2.1"),
        ("sha384", "2.16.840.1.101.3.4.2.2"),
        ("sha512", "2.16.840.1.101.3.4.2.3"),
    )
    for params in ((der.NULL,), ())
}


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
