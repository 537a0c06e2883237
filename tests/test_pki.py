"""Tests of ocspd.pki, the throwaway-PKI factory used by the demo and the tests."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
)

from ocspd import pki

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
UTCTIME = re.compile(r"^\d{12}Z$")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _openssl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("key_type", "key_class"),
    [
        ("rsa2048", rsa.RSAPrivateKey),
        ("p256", ec.EllipticCurvePrivateKey),
        ("p384", ec.EllipticCurvePrivateKey),
        ("ed25519", ed25519.Ed25519PrivateKey),
    ],
)
def test_new_key_makes_the_requested_type(key_type: pki.KeyType, key_class: type) -> None:
    assert isinstance(pki.new_key(key_type), key_class)


def test_new_key_rejects_an_unknown_type() -> None:
    with pytest.raises(ValueError, match="key_type"):
        pki.new_key("dsa1024")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key_type", "hash_name"),
    [("rsa2048", "sha256"), ("p256", "sha256"), ("p384", "sha384"), ("ed25519", None)],
)
def test_sign_hash_matches_the_key(key_type: pki.KeyType, hash_name: str | None) -> None:
    algorithm = pki.sign_hash(pki.new_key(key_type))
    assert (algorithm.name if algorithm else None) == hash_name


@pytest.mark.parametrize("key_type", pki.KEY_TYPES)
def test_ca_is_self_signed_root_for_each_key_type(key_type: pki.KeyType) -> None:
    ca = pki.make_ca("Test Root", key_type, now=NOW)
    cert = ca.cert
    cert.verify_directly_issued_by(cert)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test Root"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "ocspd demo"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and ku.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())
    assert 0 < cert.serial_number < 2**64
    expected = pki.sign_hash(ca.key)
    assert (cert.signature_hash_algorithm.name if cert.signature_hash_algorithm else None) == (
        expected.name if expected else None
    )


def test_validity_starts_an_hour_before_now() -> None:
    ca = pki.make_ca(now=NOW, days=10)
    assert ca.cert.not_valid_before_utc == NOW - timedelta(hours=1)
    assert ca.cert.not_valid_after_utc == NOW + timedelta(days=10)


def test_serials_are_random() -> None:
    assert pki.make_ca().cert.serial_number != pki.make_ca().cert.serial_number


def test_responder_has_ocsp_signing_and_nocheck() -> None:
    ca = pki.make_ca(key_type="p384")
    responder = pki.make_responder(ca, "ed25519", now=NOW)
    cert = responder.cert
    cert.verify_directly_issued_by(ca.cert)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING
    ]
    cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha384"


def test_responder_without_ocsp_signing_omits_the_eku() -> None:
    cert = pki.make_responder(pki.make_ca(), ocsp_signing=False).cert
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_responder_without_nocheck_omits_the_extension() -> None:
    cert = pki.make_responder(pki.make_ca(), nocheck=False).cert
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.OCSPNoCheck)


def test_responder_from_another_ca_does_not_verify() -> None:
    ca, other = pki.make_ca(), pki.make_ca()  # same name, different keys
    foreign = pki.make_responder(other)
    with pytest.raises((InvalidSignature, ValueError)):
        foreign.cert.verify_directly_issued_by(ca.cert)


def test_leaf_carries_serial_server_auth_and_ocsp_url() -> None:
    ca = pki.make_ca(key_type="rsa2048")
    leaf = pki.make_leaf(ca, 0x1234, "www.example.test", ocsp_url="http://ocsp.example.test/", now=NOW)
    cert = leaf.cert
    cert.verify_directly_issued_by(ca.cert)
    assert cert.serial_number == 0x1234
    assert cert.not_valid_after_utc == NOW + timedelta(days=90)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.test"]
    (access,) = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert access.access_method == AuthorityInformationAccessOID.OCSP
    assert access.access_location.value == "http://ocsp.example.test/"


def test_leaf_without_ocsp_url_has_no_aia() -> None:
    cert = pki.make_leaf(pki.make_ca(), 7, "plain").cert
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)


def test_leaf_rejects_non_positive_serial() -> None:
    with pytest.raises(ValueError, match="serial"):
        pki.make_leaf(pki.make_ca(), 0, "zero")


def test_write_key_creates_mode_0600_despite_umask(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("old")
    path.chmod(0o644)
    old_umask = os.umask(0)
    try:
        pki.write_key(path, pki.new_key("p256"))
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("key_type", pki.KEY_TYPES)
def test_encrypted_key_round_trips_with_the_passphrase(tmp_path: Path, key_type: pki.KeyType) -> None:
    key = pki.new_key(key_type)
    path = tmp_path / "k.pem"
    pki.write_key(path, key, b"s3cret")
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert _mode(path) == 0o600
    loaded = serialization.load_pem_private_key(data, b"s3cret")
    assert loaded.public_key() == key.public_key()
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(data, None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(data, b"wrong")


def test_write_key_rejects_empty_passphrase(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="passphrase"):
        pki.write_key(tmp_path / "k.pem", pki.new_key("p256"), b"")


def test_write_cert_writes_pem_chain_mode_0644(tmp_path: Path) -> None:
    ca = pki.make_ca()
    responder = pki.make_responder(ca)
    path = tmp_path / "chain.pem"
    pki.write_cert(path, responder.cert, ca.cert)
    assert _mode(path) == 0o644
    assert x509.load_pem_x509_certificates(path.read_bytes()) == [
        responder.cert,
        ca.cert,
    ]


def test_index_line_valid() -> None:
    line = pki.index_line(0xABC, not_after=datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC), subject="/CN=x")
    assert line == "V\t270102030405Z\t\t0ABC\tunknown\t/CN=x"


def test_index_line_revoked_with_reason() -> None:
    line = pki.index_line(
        0x1F,
        not_after=datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC),
        subject="/O=ocspd demo/CN=y",
        revoked_at=datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC),
        reason="keyCompromise",
    )
    fields = line.split("\t")
    assert len(fields) == 6
    assert fields == [
        "R",
        "270102030405Z",
        "260506070809Z,keyCompromise",
        "1F",
        "unknown",
        "/O=ocspd demo/CN=y",
    ]


def test_index_line_revoked_without_reason() -> None:
    line = pki.index_line(1, not_after=NOW, subject="/CN=z", revoked_at=NOW - timedelta(days=1))
    assert line.split("\t")[:4] == ["R", "260301120000Z", "260228120000Z", "01"]


def test_index_line_expired() -> None:
    line = pki.index_line(0x100, not_after=NOW, subject="/CN=e", expired=True)
    fields = line.split("\t")
    assert len(fields) == 6
    assert fields[0] == "E" and UTCTIME.match(fields[1]) and fields[2] == "" and fields[3] == "0100"


def test_index_line_uses_generalized_time_from_2050() -> None:
    line = pki.index_line(2, not_after=datetime(2050, 1, 1, tzinfo=UTC), subject="/CN=far")
    assert line.split("\t")[1] == "20500101000000Z"
    line = pki.index_line(2, not_after=datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), subject="/CN=near")
    assert line.split("\t")[1] == "491231235959Z"


def test_index_line_converts_to_utc() -> None:
    plus_two = datetime(2026, 1, 1, 4, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert pki.index_line(3, not_after=plus_two, subject="/CN=t").split("\t")[1] == "260101020000Z"


def test_index_line_from_certificate_uses_its_fields() -> None:
    ca = pki.make_ca(now=NOW)
    leaf = pki.make_leaf(ca, 0xDEADBEEF01, "leaf.test", now=NOW, days=30)
    line = pki.index_line(leaf.cert)
    assert line == "V\t260331120000Z\t\tDEADBEEF01\tunknown\t/O=ocspd demo/CN=leaf.test"


def test_index_line_maps_reason_names_to_openssl_spelling() -> None:
    def revocation(reason: str | x509.ReasonFlags) -> str:
        return pki.index_line(5, not_after=NOW, subject="/CN=r", revoked_at=NOW, reason=reason).split("\t")[2]

    assert revocation(x509.ReasonFlags.ca_compromise) == "260301120000Z,CACompromise"
    assert revocation("cessationofoperation") == "260301120000Z,cessationOfOperation"
    with pytest.raises(ValueError, match="reason"):
        revocation("privilegeWithdrawn")


def test_index_line_needs_fields_for_a_bare_serial() -> None:
    with pytest.raises(TypeError):
        pki.index_line(5, subject="/CN=x")


def test_make_demo_creates_all_files(tmp_path: Path) -> None:
    demo = pki.make_demo(tmp_path / "demo", port=18080, admin_port=19180)
    assert demo.directory == (tmp_path / "demo").resolve()
    assert _mode(demo.directory) == 0o700
    assert set(demo.leaves) == {"good", "revoked", "unissued"}
    for path in (
        demo.ca_cert,
        demo.responder_cert,
        demo.index,
        demo.config,
        *demo.leaves.values(),
    ):
        assert path.is_file() and path.is_absolute()
    assert _mode(demo.ca_key) == 0o600 and _mode(demo.responder_key) == 0o600

    config = tomllib.loads(demo.config.read_text())
    assert config["server"]["listen"] == ["127.0.0.1:18080"]
    assert config["admin"]["listen"] == "127.0.0.1:19180"
    (issuer,) = config["issuers"]
    assert issuer == {
        "id": "demo",
        "ca_cert": "ca.pem",
        "responder_cert": "responder.pem",
        "responder_key": "responder.key",
        "index": "index.txt",
    }
    for name in ("ca_cert", "responder_cert", "responder_key", "index"):
        assert (demo.config.parent / issuer[name]).is_file()


def test_make_demo_index_and_leaves_agree(tmp_path: Path) -> None:
    demo = pki.make_demo(tmp_path)
    ca = x509.load_pem_x509_certificate(demo.ca_cert.read_bytes())
    lines = demo.index.read_text().splitlines()
    rows = {int(f[3], 16): f for f in (line.split("\t") for line in lines)}
    assert all(len(f) == 6 for f in rows.values()) and len(rows) == 4
    serial = {n: x509.load_pem_x509_certificate(p.read_bytes()).serial_number for n, p in demo.leaves.items()}
    assert rows[serial["good"]][0] == "V"
    assert rows[serial["revoked"]][0] == "R" and rows[serial["revoked"]][2].endswith(",keyCompromise")
    assert serial["unissued"] not in rows
    assert sorted(f[0] for f in rows.values()) == ["R", "V", "V", "V"]
    for path in demo.leaves.values():
        leaf = x509.load_pem_x509_certificate(path.read_bytes())
        leaf.verify_directly_issued_by(ca)
        (access,) = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        assert access.access_location.value == "http://127.0.0.1:8080/"
    responder = x509.load_pem_x509_certificate(demo.responder_cert.read_bytes())
    responder.verify_directly_issued_by(ca)
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)


def test_make_demo_reuses_a_complete_demo(tmp_path: Path) -> None:
    first = pki.make_demo(tmp_path / "d")
    ca_pem = first.ca_cert.read_bytes()
    second = pki.make_demo(tmp_path / "d")
    assert second == first
    assert second.ca_cert.read_bytes() == ca_pem
    # A different port keeps the PKI but rewrites the config.
    third = pki.make_demo(tmp_path / "d", port=8443)
    assert third.ca_cert.read_bytes() == ca_pem
    assert tomllib.loads(third.config.read_text())["server"]["listen"] == ["127.0.0.1:8443"]


def test_make_demo_remakes_an_incomplete_demo(tmp_path: Path) -> None:
    first = pki.make_demo(tmp_path)
    ca_pem = first.ca_cert.read_bytes()
    first.leaves["revoked"].unlink()
    second = pki.make_demo(tmp_path)
    assert second.leaves["revoked"].is_file()
    assert second.ca_cert.read_bytes() != ca_pem


@pytest.mark.parametrize(
    ("key_type", "key_class"),
    [("rsa2048", rsa.RSAPrivateKey), ("ed25519", ed25519.Ed25519PrivateKey)],
)
def test_make_demo_honours_key_type(tmp_path: Path, key_type: pki.KeyType, key_class: type) -> None:
    demo = pki.make_demo(tmp_path, key_type=key_type)
    for path in (demo.ca_key, demo.responder_key):
        assert isinstance(serialization.load_pem_private_key(path.read_bytes(), None), key_class)


def test_openssl_commands_cover_each_leaf_and_no_nonce(tmp_path: Path) -> None:
    demo = pki.make_demo(tmp_path / "with space")
    commands = pki.openssl_commands(demo, "http://127.0.0.1:8080/")
    assert len(commands) == len(demo.leaves) + 1
    parsed = [shlex.split(c.command) for c in commands]
    for argv, (name, path), command in zip(parsed, demo.leaves.items(), commands, strict=False):
        assert argv[:2] == ["openssl", "ocsp"]
        assert argv[argv.index("-cert") + 1] == str(path)
        assert argv[argv.index("-issuer") + 1] == str(demo.ca_cert)
        assert argv[argv.index("-CAfile") + 1] == str(demo.ca_cert)
        assert argv[argv.index("-url") + 1] == "http://127.0.0.1:8080/"
        assert "-resp_text" not in argv and "-no_nonce" not in argv
        assert command.answer == f"{path}: {pki.DEMO_ANSWERS[name]}"
    assert "-no_nonce" in parsed[-1] and commands[-1].note


@needs_openssl
def test_openssl_reads_and_verifies_the_demo(tmp_path: Path) -> None:
    demo = pki.make_demo(tmp_path)
    text = _openssl("x509", "-in", demo.ca_cert, "-noout", "-text").stdout
    assert "CA:TRUE" in text and "Subject: O = ocspd demo, CN = ocspd demo CA" in text
    assert "OCSP No Check" in _openssl("x509", "-in", demo.responder_cert, "-noout", "-text").stdout
    for path in (demo.responder_cert, *demo.leaves.values()):
        assert _openssl("verify", "-CAfile", demo.ca_cert, path).stdout.strip() == f"{path}: OK"


@needs_openssl
@pytest.mark.parametrize("key_type", pki.KEY_TYPES)
def test_openssl_reads_encrypted_keys(tmp_path: Path, key_type: pki.KeyType) -> None:
    key = pki.new_key(key_type)
    pki.write_key(tmp_path / "k.pem", key, b"pass word")
    out = _openssl("pkey", "-in", tmp_path / "k.pem", "-passin", "pass:pass word", "-pubout").stdout
    assert out.encode() == key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@needs_openssl
@pytest.mark.parametrize(
    ("name", "status"),
    [("good", "good"), ("revoked", "revoked"), ("unissued", "unknown")],
)
def test_openssl_ocsp_answers_from_the_demo_index(tmp_path: Path, name: str, status: str) -> None:
    """openssl's own responder reads our index.txt and the delegated responder."""
    demo = pki.make_demo(tmp_path)
    leaf, ca = demo.leaves[name], demo.ca_cert
    _openssl(
        "ocsp",
        "-issuer",
        ca,
        "-cert",
        leaf,
        "-no_nonce",
        "-reqout",
        "req.der",
        cwd=tmp_path,
    )
    _openssl(
        "ocsp", "-index", demo.index, "-CA", ca, "-rsigner", demo.responder_cert, "-rkey", demo.responder_key,
        "-reqin", "req.der", "-respout", "resp.der", cwd=tmp_path,
    )  # fmt: skip
    result = _openssl(
        "ocsp",
        "-respin",
        "resp.der",
        "-issuer",
        ca,
        "-cert",
        leaf,
        "-CAfile",
        ca,
        "-no_nonce",
        cwd=tmp_path,
    )
    assert "Response verify OK" in result.stderr
    assert f"{leaf}: {status}" in result.stdout
    if status == "revoked":
        assert "Reason: keyCompromise" in result.stdout
