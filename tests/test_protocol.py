"""Requests of several CertIDs, read by ocspd/protocol.py with ocspd/der.py (cryptography
returns one CertID only): the same CertIDs and nonce as asn1crypto's reading, and for
anything else malformedRequest (or unauthorized for a hash we cannot match), never a crash."""

from __future__ import annotations

import random
from typing import Any

import pytest
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import parser as asn1_parser
from asn1crypto.core import OctetString

from ocspd import der
from ocspd.exceptions import MalformedRequest, Unauthorized
from ocspd.protocol import CertId, OcspRequest, parse_request

HASHES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
NONCE = "1.3.6.1.5.5.7.48.1.2"


def reference(data: bytes) -> OcspRequest:
    """asn1crypto's reading of a request (what ocspd used before; slow: ~25 µs a CertID)."""
    req = asn1_ocsp.OCSPRequest.load(data, strict=True)
    tbs = req["tbs_request"]
    certids = []
    for item in tbs["request_list"]:
        cid = item["req_cert"]
        certids.append(CertId(
            cid["hash_algorithm"]["algorithm"].native, bytes(cid["issuer_name_hash"].native),
            bytes(cid["issuer_key_hash"].native), int(cid["serial_number"].native),
        ))  # fmt: skip
    nonce = None
    for ext in tbs["request_extensions"] or ():
        if ext["extn_id"].dotted == NONCE:
            nonce = unwrapped(extension_value(bytes(ext.contents)))
    return OcspRequest(tuple(certids), nonce)


def extension_value(contents: bytes) -> bytes:
    """An Extension's extnValue, its last field (asn1crypto's own reading would parse the nonce in it)."""
    pos, last = 0, b""
    while pos < len(contents):
        size = asn1_parser.peek(contents[pos:])
        last, pos = contents[pos : pos + size], pos + size
    return bytes(asn1_parser.parse(last)[4])


def unwrapped(value: bytes) -> bytes:
    """The nonce in an extnValue as cryptography reads it: the contents of exactly one DER OCTET STRING, else raw."""
    try:
        octets = OctetString.load(value, strict=True)
    except (ValueError, TypeError):
        return value
    return bytes(octets.native) if octets.dump(force=True) == value else value


def certid(hash_name: str, serial: int, *, null: bool = True, salt: int = 1) -> bytes:
    oid = {"sha1": "1.3.14.3.2.26", "sha256": "2.16.840.1.101.3.4.2.1",
           "sha384": "2.16.840.1.101.3.4.2.2", "sha512": "2.16.840.1.101.3.4.2.3"}[hash_name]  # fmt: skip
    size = HASHES[hash_name]
    algorithm = der.sequence(der.oid(oid), der.NULL) if null else der.sequence(der.oid(oid))
    return der.sequence(
        algorithm,
        der.octet_string(bytes([salt]) * size),
        der.octet_string(bytes([salt + 1]) * size),
        der.integer(serial),
    )


def extension(oid: str, value: bytes, critical: bool = False) -> bytes:
    return der.sequence(der.oid(oid), b"\x01\x01\xff" if critical else b"", der.octet_string(value))


def request(
    certids: list[bytes],
    *,
    extensions: list[bytes] | None = None,
    requestor: bool = False,
    single_extensions: bool = False,
    signature: bool = False,
) -> bytes:
    single_ext = der.explicit(0, der.sequence(extension("1.2.3.4", der.NULL))) if single_extensions else b""
    tbs = der.sequence(
        der.explicit(1, der.tlv(0x82, b"ocsp.example")) if requestor else b"",  # dNSName
        der.sequence(*(der.sequence(c, single_ext) for c in certids)),
        der.explicit(2, der.sequence(*extensions)) if extensions else b"",
    )
    # optionalSignature: a [0] EXPLICIT Signature (algorithm, bit string); nobody checks it.
    sig = der.explicit(0, der.sequence(der.sequence(der.oid("1.2.840.10045.4.3.2")), b"\x03\x02\x00\x00"))
    return der.sequence(tbs, sig if signature else b"")


SERIALS = [0, 1, 0x7F, 0x80, 0xFF, 0x100, -1, -0x80, -0x81, 0x7000_0000, (1 << 159) | 12345, 1 << 200]


def variants() -> list[tuple[str, bytes]]:
    rng = random.Random(11)
    cases = []
    for n in (2, 3, 16):
        for shape in range(8):
            # Runs of CertIDs of one issuer and hash (as clients send them), then another.
            ids = [
                certid(list(HASHES)[(i // 3 + shape) % 4], rng.choice(SERIALS) + i, null=(i // 3 + shape) % 3 != 0,
                       salt=i // 6)
                for i in range(n)
            ]  # fmt: skip
            extensions = []
            if shape & 1:
                extensions.append(extension(NONCE, der.octet_string(bytes(range(1 + shape * 4)))))
            if shape & 2:
                extensions.insert(0, extension("1.3.6.1.5.5.7.48.1.4", der.sequence(der.oid("1.3.6.1.5.5.7.48.1.1"))))
            if shape & 4:
                extensions.append(extension("1.2.3.4.5", b"\x05\x00", critical=True))
            data = request(
                ids,
                extensions=extensions,
                requestor=shape in (3, 6),
                single_extensions=shape in (5, 6),
                signature=shape in (2, 7),
            )
            cases.append((f"n{n}-shape{shape}", data))
    return cases


VARIANTS = variants()


@pytest.mark.parametrize(("name", "data"), VARIANTS, ids=[name for name, _ in VARIANTS])
def test_several_certids_read_as_asn1crypto_reads_them(name: str, data: bytes) -> None:
    ours = parse_request(data)
    assert ours == reference(data)
    assert len(ours.certids) == int(name[1:].split("-")[0])


def outcome(data: bytes) -> Any:
    try:
        return parse_request(data)
    except (MalformedRequest, Unauthorized) as exc:
        return type(exc)


@pytest.mark.parametrize(("name", "data"), VARIANTS[::5], ids=[name for name, _ in VARIANTS[::5]])
def test_every_truncation_and_octet_mutation_is_refused_or_read_alike(name: str, data: bytes) -> None:
    """Never another exception; whatever is read is what asn1crypto reads in the same bytes."""
    mutated = [data[:cut] for cut in range(len(data))]
    rng = random.Random(name)
    for pos in range(len(data)):
        for value in {data[pos] ^ 0xFF, data[pos] ^ 0x01, data[pos] ^ 0x80, 0x00, rng.randrange(256)}:
            mutated.append(data[:pos] + bytes((value,)) + data[pos + 1 :])
    read = 0
    for candidate in mutated:
        result = outcome(candidate)
        if isinstance(result, OcspRequest):
            read += 1
            assert result == reference(candidate), candidate.hex()
    assert read > 0  # some mutations (inside a hash or a serial) are still requests


def test_a_request_listing_no_certificate_is_malformed() -> None:
    with pytest.raises(MalformedRequest, match="no certificate"):
        parse_request(request([]))


def test_an_unknown_certid_hash_is_unauthorized() -> None:
    md5 = der.sequence(der.sequence(der.oid("1.2.840.113549.2.5"), der.NULL), der.octet_string(b"a" * 16),
                       der.octet_string(b"b" * 16), der.integer(5))  # fmt: skip
    with pytest.raises(Unauthorized):
        parse_request(request([certid("sha1", 1), md5]))


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize(
    ("extensions", "what"),
    [
        ([extension(NONCE, der.octet_string(b"n" * 16))] * 2, "a nonce twice"),
        ([extension(NONCE, der.octet_string(b""))], "an empty nonce"),
        ([extension(NONCE, der.octet_string(b"n" * 129))], "a nonce over 128 octets"),
    ],
)
def test_a_bad_nonce_is_malformed_with_one_certid_or_several(n: int, extensions: list[bytes], what: str) -> None:
    data = request([certid("sha1", i) for i in range(n)], extensions=extensions)
    with pytest.raises(MalformedRequest):
        parse_request(data)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x30\x03\x02\x01", "truncated"),
        (b"\x30\x81\x01\x00", "non-minimal short length"),
        (b"\x30\x82\x00\x80" + b"\x00" * 0x80, "non-minimal long length"),
        (b"\x30\x80\x00\x00", "indefinite length"),
        (b"\x3f\x01\x01\x00", "high-number tag"),
        (b"\x30\x85\x00\x00\x00\x00\x01\x00", "five length octets"),
    ],
)
def test_der_read_refuses_what_is_not_der(data: bytes, what: str) -> None:
    with pytest.raises(ValueError):
        der.read(data, 0, len(data))


def test_der_read_gives_the_contents_of_short_and_long_forms() -> None:
    for size in (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x10000):
        data = der.octet_string(b"x" * size) + b"after"
        assert der.read(data, 0, len(data)) == (0x04, len(data) - 5 - size, len(data) - 5)


@pytest.mark.parametrize(
    "value",
    [b"raw nonce", b"\x04\x05abc", der.octet_string(b"abc") + b"x", b"\x04\x81\x03abc", der.octet_string(b"abc")],
    ids=["raw", "short-octet-string", "octet-string-and-more", "non-minimal-length", "octet-string"],
)
def test_the_nonce_is_read_alike_with_one_certid_or_several(value: bytes) -> None:
    """RFC 2560 clients send the nonce as extnValue itself: cryptography then takes it raw, and so do we."""
    one, several = (
        parse_request(request([certid("sha1", i) for i in range(n)], extensions=[extension(NONCE, value)]))
        for n in (1, 2)
    )
    assert one.nonce == several.nonce == unwrapped(value)
    assert one.nonce == (b"abc" if value == der.octet_string(b"abc") else value)
