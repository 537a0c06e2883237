"""Interoperability: `openssl ocsp`, a client we did not write, verifies our
responses (signature, status, nonce) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from ocspd import pki
from ocspd.app import init_app
from tests.helpers import TestPki, assert_verified, build_pki, openssl_ocsp

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")


async def serve(ocspd_server: Any, test_pki: TestPki) -> str:
    server = await ocspd_server(init_app(test_pki.config()))
    return f"http://127.0.0.1:{server.port}/"


SIGNERS = [
    pytest.param("p256", True, id="delegated-p256"),
    pytest.param("rsa2048", True, id="delegated-rsa2048"),
    pytest.param("p384", True, id="delegated-p384"),
    pytest.param("ed25519", True, id="delegated-ed25519"),
    pytest.param("p256", False, id="ca-signs-p256"),
    pytest.param("rsa2048", False, id="ca-signs-rsa2048"),
]


@pytest.mark.parametrize(("key_type", "delegated"), SIGNERS)
@pytest.mark.parametrize("nonce", [True, False], ids=["nonce", "no-nonce"])
@pytest.mark.parametrize(("name", "status"), [("good", "good"), ("revoked", "revoked"), ("unissued", "unknown")])
async def test_openssl_verifies_every_status(
    ocspd_server: Any, tmp_path: Path, key_type: pki.KeyType, delegated: bool, nonce: bool, name: str, status: str
) -> None:
    test_pki = build_pki(tmp_path, key_type=key_type, delegated=delegated)
    url = await serve(ocspd_server, test_pki)
    extra = () if nonce else ("-no_nonce",)
    code, output = await openssl_ocsp(test_pki, url, name, extra=extra)
    assert_verified(code, output, test_pki.leaf_paths[name], status)
    if name == "revoked":
        assert "Reason: keyCompromise" in output, output


async def test_openssl_verifies_a_sha256_certid(ocspd_server: Any, tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path)
    url = await serve(ocspd_server, test_pki)
    code, output = await openssl_ocsp(test_pki, url, "revoked", extra=("-sha256",))
    assert_verified(code, output, test_pki.leaf_paths["revoked"], "revoked")


@pytest.mark.parametrize("key_type", ["p256", "rsa2048", "ed25519"])
async def test_openssl_verifies_a_multi_certid_response(
    ocspd_server: Any, tmp_path: Path, key_type: pki.KeyType
) -> None:
    test_pki = build_pki(tmp_path, key_type=key_type)
    url = await serve(ocspd_server, test_pki)
    code, output = await openssl_ocsp(test_pki, url, "good", "revoked", "unissued")
    assert_verified(code, output, test_pki.leaf_paths["good"], "good")
    assert f"{test_pki.leaf_paths['revoked']}: revoked" in output
    assert f"{test_pki.leaf_paths['unissued']}: unknown" in output


async def test_openssl_rejects_a_response_for_a_tampered_nonce(ocspd_server: Any, tmp_path: Path) -> None:
    """The oracle itself works: openssl notices when the nonce does not match."""
    test_pki = build_pki(tmp_path)
    server = await ocspd_server(init_app(test_pki.config(OCSPD_RESPONSES_NONCE="ignore")))
    _, output = await openssl_ocsp(test_pki, f"http://127.0.0.1:{server.port}/", "good")
    assert "WARNING: no nonce in response" in output, output


async def test_openssl_posts_to_a_prefix_without_its_final_slash(ocspd_server: Any, tmp_path: Path) -> None:
    """An AIA of http://host/ocsp: openssl posts to "/ocsp" (the prefix is stored as "/ocsp/")."""
    test_pki = build_pki(tmp_path, server='path_prefix = "/ocsp"')
    server = await ocspd_server(init_app(test_pki.config()))
    for name, status in (("good", "good"), ("revoked", "revoked")):
        code, output = await openssl_ocsp(test_pki, f"http://127.0.0.1:{server.port}/ocsp", name)
        assert_verified(code, output, test_pki.leaf_paths[name], status)


# One line of index.txt per kind, in this order: a request of N CertIDs asks for the first N
# (serials 0x2000 + i), so that N = 16 asks for some twice (with the other CertID digest).
# (index.txt flag or None for not listed, status, reason as index.txt writes it, as openssl ocsp shows it)
KINDS: list[tuple[str | None, str, str, str]] = [
    ("R", "revoked", "keyCompromise", "keyCompromise"),
    ("V", "good", "", ""),
    (None, "unknown", "", ""),
    ("R", "revoked", "superseded", "superseded"),
    ("R", "revoked", "", ""),  # no reason: none in the answer
    ("R", "revoked", "certificateHold", "certificateHold"),
    ("R", "revoked", "cessationOfOperation", "cessationOfOperation"),
    ("R", "revoked", "unspecified", ""),  # left out of the answer (RFC 5280 §5.3.1)
    ("R", "revoked", "affiliationChanged", "affiliationChanged"),
    ("R", "revoked", "CACompromise", "cACompromise"),
]


def status_blocks(output: str) -> dict[str, list[str]]:
    """openssl ocsp's report per name it asked about: ``name: status`` and the indented lines after it."""
    blocks: dict[str, list[str]] = {}
    current: list[str] = []
    for line in output.splitlines():
        if line.startswith(("\t", " ")):
            current.append(line.strip())
        elif ": " in line:
            name, _, status = line.partition(": ")
            current = blocks[name] = [status]
    return blocks


@pytest.mark.parametrize("n", [1, 2, 16])
@pytest.mark.parametrize("nonce", [True, False], ids=["nonce", "no-nonce"])
async def test_openssl_verifies_every_certid_of_a_request_of_n(
    ocspd_server: Any, tmp_path: Path, n: int, nonce: bool
) -> None:
    test_pki = build_pki(tmp_path)
    lines = test_pki.index_path.read_text().splitlines()
    for i, (flag, _, reason, _) in enumerate(KINDS):
        if flag is not None:
            revocation = "260102030405Z" + (f",{reason}" if reason else "") if flag == "R" else ""
            lines.append(f"{flag}\t301231235959Z\t{revocation}\t{0x2000 + i:X}\tunknown\t/CN=leaf{i}")
    test_pki.index_path.write_text("\n".join(lines) + "\n")
    url = await serve(ocspd_server, test_pki)
    serials = [f"0x{0x2000 + i % len(KINDS):X}" for i in range(n)]
    extra: list[str] = [] if nonce else ["-no_nonce"]
    for i, serial in enumerate(serials):
        extra += ["-sha256" if i % 2 else "-sha1", "-serial", serial]  # a digest option applies to what follows
    code, output = await openssl_ocsp(test_pki, url, extra=("-issuer", str(test_pki.ca_path), *extra))
    assert code == 0, output
    assert "Response verify OK" in output, output
    assert "WARNING" not in output, output  # e.g. "no nonce in response"
    blocks = status_blocks(output)
    for i, serial in enumerate(serials):
        _, status, _, shown = KINDS[i % len(KINDS)]
        block = blocks.get(serial)
        assert block is not None and block[0] == status, (serial, output)
        assert [line for line in block if line.startswith("Reason:")] == ([f"Reason: {shown}"] if shown else [])
        if status == "revoked":
            assert "Revocation Time: Jan  2 03:04:05 2026 GMT" in block, output
