"""Test PKIs, request builders and response checks shared by the tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ocspd import pki
from ocspd.config import Config, load_config
from ocspd.protocol import TRY_LATER

GOOD_SERIAL = 0x1001
REVOKED_SERIAL = 0x1002
UNISSUED_SERIAL = 0x1003
REVOKED_AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@dataclass
class TestPki:
    """A CA, its responder and leaves on disk, with an index.txt and a config."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca: pki.Identity
    responder: pki.Identity | None
    ca_path: Path
    responder_path: Path | None
    key_path: Path
    index_path: Path
    config_path: Path
    leaves: dict[str, pki.Identity] = field(default_factory=dict)
    leaf_paths: dict[str, Path] = field(default_factory=dict)

    def config(self, **env: str) -> Config:
        return load_config(self.config_path, environ=env)

    def revoke_in_index(self, name: str, reason: str = "keyCompromise") -> None:
        """Rewrite index.txt with ``name`` revoked, as `openssl ca -revoke` does (new file, rename)."""
        cert = self.leaves[name].cert
        lines = [
            line
            for line in self.index_path.read_text().splitlines()
            if int(line.split("\t")[3], 16) != cert.serial_number
        ]
        lines.append(pki.index_line(cert, revoked_at=dt.datetime.now(dt.UTC), reason=reason))
        tmp = self.index_path.with_suffix(".new")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.index_path)


def build_pki(
    directory: Path,
    *,
    key_type: pki.KeyType = "p256",
    delegated: bool = True,
    responder_key_type: pki.KeyType | None = None,
    server: str = "",
    responses: str = "",
    issuer_extra: str = "",
    issuer_id: str = "test-ca",
    database: str | None = None,
) -> TestPki:
    """Make a PKI and a config that serves it from index.txt, or from ``database`` (a DSN) when given."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca("ocspd test CA " + issuer_id, key_type)
    ca_path = directory / "ca.pem"
    pki.write_cert(ca_path, ca.cert)
    responder: pki.Identity | None = None
    responder_path: Path | None = None
    key_path = directory / "signer.key"
    if delegated:
        responder = pki.make_responder(ca, responder_key_type or key_type)
        responder_path = directory / "responder.pem"
        pki.write_cert(responder_path, responder.cert)
        pki.write_key(key_path, responder.key)
    else:
        pki.write_key(key_path, ca.key)
    result = TestPki(directory, ca, responder, ca_path, responder_path, key_path,
                     directory / "index.txt", directory / "ocspd.toml")
    for name, serial in (("good", GOOD_SERIAL), ("revoked", REVOKED_SERIAL), ("unissued", UNISSUED_SERIAL)):
        leaf = pki.make_leaf(ca, serial, f"{name}.example.test")
        result.leaves[name] = leaf
        result.leaf_paths[name] = directory / f"{name}.pem"
        pki.write_cert(result.leaf_paths[name], leaf.cert)
    lines = [
        pki.index_line(result.leaves["good"].cert),
        pki.index_line(result.leaves["revoked"].cert, revoked_at=REVOKED_AT, reason="keyCompromise"),
    ]
    result.index_path.write_text("\n".join(lines) + "\n")
    responder_line = f'responder_cert = "{responder_path.name}"\n' if responder_path else ""
    database_section = f"[database]\ndsn = {json.dumps(database)}\n" if database else ""
    index_line = "" if database else 'index = "index.txt"\n'
    result.config_path.write_text(
        f"[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n{database_section}"
        f"[responses]\n{responses}\n"
        f"[[issuers]]\nid = \"{issuer_id}\"\nca_cert = \"ca.pem\"\n{responder_line}"
        f"responder_key = \"{key_path.name}\"\n{index_line}{issuer_extra}\n"
    )
    return result


def request_der(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """A one-CertID OCSPRequest, as a client would build it."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def multi_request_der(
    certs: list[x509.Certificate], issuer: x509.Certificate, nonce: bytes | None = None
) -> bytes:
    """An OCSPRequest with one CertID per certificate (cryptography cannot build these)."""
    items = []
    for cert in certs:
        single = ocsp.load_der_ocsp_request(request_der(cert, issuer))
        items.append({
            "req_cert": {
                "hash_algorithm": {"algorithm": "sha1"},
                "issuer_name_hash": single.issuer_name_hash,
                "issuer_key_hash": single.issuer_key_hash,
                "serial_number": single.serial_number,
            }
        })
    tbs: dict[str, object] = {"request_list": items}
    if nonce is not None:
        tbs["request_extensions"] = [{"extn_id": "nonce", "extn_value": nonce}]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())


def verify_response(der: bytes, test_pki: TestPki) -> ocsp.OCSPResponse:
    """Load a response and check its signature with the responder (or CA) key."""
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    signer = test_pki.responder.cert if test_pki.responder else test_pki.ca.cert
    public_key = signer.public_key()
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    if isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(response.signature, response.tbs_response_bytes)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        assert response.signature_hash_algorithm is not None
        public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
    else:
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert response.signature_hash_algorithm is not None
        public_key.verify(
            response.signature, response.tbs_response_bytes, padding.PKCS1v15(), response.signature_hash_algorithm
        )
    return response


def outcome(http_status: int, body: bytes, test_pki: TestPki, expected: ocsp.OCSPCertStatus | None = None) -> str:
    """What one answer was, for tests that count them: "HTTP <n>" (not 200), "tryLater",
    another unsuccessful OCSP status's name, else (the signature checked) "right" or
    "wrong: <status>" against ``expected``, or "signed" without one."""
    if http_status != 200:
        return f"HTTP {http_status}"
    if body == TRY_LATER:
        return "tryLater"
    response = ocsp.load_der_ocsp_response(body)
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return response.response_status.name
    checked = verify_response(body, test_pki)
    if expected is None:
        return "signed"
    status = checked.certificate_status
    return "right" if status is expected else f"wrong: {status.name}"


def hold_after_fetch(source: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """Make ``source.fetch`` stop after reading a status until ``release`` is set; ``entered`` says it did.

    Only the fetches before ``release`` are held: the responder's next read goes through.
    """
    entered, release = asyncio.Event(), asyncio.Event()
    real_fetch = source.fetch

    async def held_fetch(*args: Any) -> Any:
        lookup = await real_fetch(*args)
        if not release.is_set():
            entered.set()
            await release.wait()
        return lookup

    source.fetch = held_fetch
    return entered, release


# -- raw HTTP/1.1, for what the aiohttp client would not send -------------------------------------


@dataclass
class Answer:
    version: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


async def read_answer(reader: asyncio.StreamReader, *, head_request: bool = False) -> Answer:
    """One HTTP/1.1 response (Content-Length framed; 304 and HEAD answers carry no body)."""
    status_line = await reader.readuntil(b"\r\n")
    version, status, _ = status_line.decode("latin-1").split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
    answer = Answer(version, int(status))
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        answer.headers[name.strip().lower()] = value.strip()
    if answer.status != 304 and not head_request:
        answer.body = await reader.readexactly(int(answer.headers.get("content-length", "0")))
    return answer


def post_bytes(der: bytes, *extra: str, path: str = "/") -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: ocsp.test", "Content-Type: application/ocsp-request",
            f"Content-Length: {len(der)}", *extra]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + der
