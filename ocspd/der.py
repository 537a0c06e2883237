"""The few DER encodings an OCSP response needs (RFC 6960 §4.2.1).

Building a response with ``cryptography``'s OCSPResponseBuilder costs several
times the signature itself (bench/README.md: ~160 µs against ~29 µs for a
P-256 ``sign()``), most of it re-encoding the same responder ID, algorithm
identifiers and certificate for every response. The signer encodes those
once and splices in what changes: CertIDs, statuses, times, extensions,
for one CertID or several under one signature. The tests check the result
byte for byte against cryptography's own encoding (one CertID) and
asn1crypto's (several: cryptography builds one SingleResponse only).

``read`` is the other direction, for the little DER we take apart ourselves:
requests of several CertIDs (ocspd/protocol.py) and a certificate's public
key bits (ocspd/signer.py).
"""

from __future__ import annotations

import datetime as dt
import math


def length(n: int) -> bytes:
    """A DER length octet sequence."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def tlv(tag: int, content: bytes) -> bytes:
    """Tag, length, value (tags below 0x1f only, which is all we need)."""
    n = len(content)
    # The short forms inline: this runs ~20 times per signed response.
    if n < 0x80:
        return bytes((tag, n)) + content
    if n < 0x100:
        return bytes((tag, 0x81, n)) + content
    return bytes((tag,)) + length(n) + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def octet_string(content: bytes) -> bytes:
    return tlv(0x04, content)


def integer(value: int) -> bytes:
    """A DER INTEGER (minimal two's complement)."""
    if value >= 0:
        body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    else:
        body = value.to_bytes((value + 1).bit_length() // 8 + 1, "big", signed=True)
    return tlv(0x02, body)


def oid(dotted: str) -> bytes:
    """A DER OBJECT IDENTIFIER from its dotted form."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    # The first two arcs share one subidentifier (X.690 §8.19.4), which may exceed 127.
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return tlv(0x06, bytes(out))


def generalized_time(moment: dt.datetime) -> bytes:
    """GeneralizedTime in whole seconds, UTC (RFC 5280 §4.1.2.5.2).

    Not cheap (strftime): the signer remembers what it encodes, since the
    responses signed in one second share their producedAt, thisUpdate and
    nextUpdate.
    """
    second = dt.datetime.fromtimestamp(math.floor(moment.timestamp()), dt.UTC)
    return tlv(0x18, second.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def explicit(number: int, content: bytes) -> bytes:
    """A context-specific constructed [number] EXPLICIT wrapper."""
    return tlv(0xA0 | number, content)


NULL = b"\x05\x00"


def read(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """The DER TLV at ``data[pos:end]``: (tag, start of its contents, end of its contents).

    ValueError if it does not fit before ``end``, or is not DER: a
    high-number tag, an indefinite or non-minimal length.
    """
    if end - pos < 2:
        raise ValueError("truncated TLV")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("high-number tag")
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        count = n & 0x7F
        if count == 0 or count > 4 or end - pos < count:
            raise ValueError("bad length")
        n = int.from_bytes(data[pos : pos + count], "big")
        if n < 0x80 or n < 1 << (8 * (count - 1)):
            raise ValueError("non-minimal length")
        pos += count
    if end - pos < n:
        raise ValueError("truncated TLV")
    return tag, pos, pos + n
