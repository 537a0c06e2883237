"""Throwaway PKIs: CAs, OCSP responders, leaves, index.txt lines, a demo.

Used by ``ocspd demo`` and by the test suite. Everything here is meant for
demos and tests; nothing in the serving path imports it.

Certificates are named ``O=ocspd demo, CN=<common name>`` and are valid from
one hour before ``now`` (so small clock skew does not matter). Key files are
written as PKCS#8 PEM with mode 0600 from the moment they exist.

Over ~400 lines: the demo and every test PKI shape (key types, delegated or
CA-signed responders, index.txt reasons) in one place, off the serving path.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU

from ocspd.status import REASONS

KeyType = Literal["rsa2048", "p256", "p384", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

KEY_TYPES: tuple[KeyType, ...] = get_args(KeyType)
ORGANIZATION = "ocspd demo"
BACKDATE = timedelta(hours=1)

# The reason names `openssl ca` writes into (and accepts from) index.txt.
OPENSSL_REASONS: tuple[str, ...] = tuple(r.openssl for r in REASONS if r.openssl)
_REASON_BY_LOWER = {name.lower(): name for name in OPENSSL_REASONS}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey


def new_key(key_type: KeyType) -> PrivateKey:
    """Generate a fresh private key of ``key_type``."""
    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"key_type: unknown key type {key_type!r} (use one of {', '.join(KEY_TYPES)})")


SignHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512


def sign_hash(key: PrivateKey) -> SignHash | None:
    """The hash to pass to ``sign()`` for ``key``: None for Ed25519.

    SHA-256 for RSA and P-256, SHA-384 for P-384 (SHA-512 for P-521).
    """
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    return hashes.SHA256()


def random_serial() -> int:
    """A random positive 64-bit serial number."""
    return secrets.randbelow(2**64 - 1) + 1


def _utc(when: datetime | None) -> datetime:
    """``when`` as an aware UTC datetime (naive means UTC); default: now."""
    if when is None:
        return datetime.now(UTC)
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _name(common_name: str) -> x509.Name:
    organization = x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)
    return x509.Name([organization, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, key_encipherment: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


_Extensions = list[tuple[x509.ExtensionType, bool]]  # (extension, critical)


def _issue(
    common_name: str, key: PrivateKey, issuer: Identity | None, serial: int, now: datetime | None, days: int,
    extensions: _Extensions,
) -> Identity:  # fmt: skip
    """Sign a certificate for ``key``; ``issuer=None`` means self-signed.

    Every certificate gets a SubjectKeyIdentifier, an AuthorityKeyIdentifier
    (the issuer's SKI) and a critical BasicConstraints/KeyUsage pair from
    ``extensions``.
    """
    start = _utc(now)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    signer, issuer_ski = key, ski
    if issuer is not None:
        signer = issuer.key
        ext = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        issuer_ski = ext.value
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name) if issuer is None else issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + timedelta(days=days))
    )
    for extension, critical in [*extensions, (ski, False), (aki, False)]:
        builder = builder.add_extension(extension, critical=critical)
    return Identity(builder.sign(signer, sign_hash(signer)), key)


def make_ca(
    common_name: str = "ocspd demo CA", key_type: KeyType = "p256", *, now: datetime | None = None, days: int = 3650
) -> Identity:
    """A self-signed root CA (keyCertSign, cRLSign, digitalSignature)."""
    extensions: _Extensions = [(x509.BasicConstraints(ca=True, path_length=None), True), (_key_usage(ca=True), True)]
    key = new_key(key_type)
    return _issue(common_name, key, None, random_serial(), now, days, extensions)


def make_responder(
    ca: Identity,
    key_type: KeyType = "p256",
    *,
    common_name: str = "ocspd demo OCSP responder",
    ocsp_signing: bool = True,
    nocheck: bool = True,
    now: datetime | None = None,
    days: int = 365,
) -> Identity:
    """A delegated OCSP responder certificate issued by ``ca``.

    ``ocsp_signing=False`` leaves out the id-kp-OCSPSigning EKU (a responder
    clients must reject); ``nocheck=False`` leaves out id-pkix-ocsp-nocheck.
    """
    extensions: _Extensions = [(x509.BasicConstraints(ca=False, path_length=None), True), (_key_usage(), True)]
    if ocsp_signing:
        extensions.append((x509.ExtendedKeyUsage([EKU.OCSP_SIGNING]), False))
    if nocheck:
        extensions.append((x509.OCSPNoCheck(), False))
    key = new_key(key_type)
    return _issue(common_name, key, ca, random_serial(), now, days, extensions)


def make_leaf(
    ca: Identity,
    serial: int,
    common_name: str,
    *,
    key_type: KeyType = "p256",
    now: datetime | None = None,
    days: int = 90,
    ocsp_url: str | None = None,
) -> Identity:
    """A TLS server (serverAuth) certificate issued by ``ca`` with ``serial``.

    The common name doubles as a DNS subjectAltName when it is a host name;
    ``ocsp_url`` becomes the AuthorityInfoAccess OCSP location.
    """
    if serial <= 0:
        raise ValueError(f"serial: must be positive, got {serial}")
    key = new_key(key_type)
    extensions: _Extensions = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(key_encipherment=isinstance(key, rsa.RSAPrivateKey)), True),
        (x509.ExtendedKeyUsage([EKU.SERVER_AUTH]), False),
    ]
    if _HOSTNAME.match(common_name):
        san = x509.SubjectAlternativeName([x509.DNSName(common_name)])
        extensions.append((san, False))
    if ocsp_url is not None:
        url = x509.UniformResourceIdentifier(ocsp_url)
        access = x509.AccessDescription(AuthorityInformationAccessOID.OCSP, url)
        extensions.append((x509.AuthorityInformationAccess([access]), False))
    return _issue(common_name, key, ca, serial, now, days, extensions)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a temporary file created with mode 0600, then rename.

    ``mkstemp`` opens with ``O_CREAT | O_EXCL`` and mode 0600, so secret bytes
    are never readable by others, not even for a moment; the final mode is
    set on the descriptor before any byte is written.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_cert(path: Path, *certs: x509.Certificate) -> None:
    """Write ``certs`` as concatenated PEM to ``path`` (mode 0644)."""
    if not certs:
        raise ValueError("certs: at least one certificate is needed")
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _write_atomic(Path(path), pem, 0o644)


def write_key(path: Path, key: PrivateKey, passphrase: bytes | None = None) -> None:
    """Write ``key`` as PKCS#8 PEM (mode 0600), encrypted when ``passphrase`` is given."""
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if passphrase is not None:
        if not passphrase:
            raise ValueError("passphrase: empty (use None for no encryption)")
        encryption = serialization.BestAvailableEncryption(passphrase)
    pkcs8 = serialization.PrivateFormat.PKCS8
    pem = key.private_bytes(serialization.Encoding.PEM, pkcs8, encryption)
    _write_atomic(Path(path), pem, 0o600)


def openssl_time(when: datetime) -> str:
    """``when`` as OpenSSL writes times in index.txt (UTCTime before 2050)."""
    t = _utc(when)
    if 1950 <= t.year < 2050:
        return t.strftime("%y%m%d%H%M%SZ")
    return f"{t.year:04d}" + t.strftime("%m%d%H%M%SZ")


def openssl_subject(name: x509.Name) -> str:
    """``name`` in the ``/O=x/CN=y`` one-line form of OpenSSL's index.txt."""
    return "".join(f"/{attr.rfc4514_attribute_name}={attr.value!s}" for attr in name)


def _openssl_reason(reason: str | x509.ReasonFlags) -> str:
    text = reason.value if isinstance(reason, x509.ReasonFlags) else reason
    try:
        return _REASON_BY_LOWER[text.lower()]
    except KeyError:
        names = ", ".join(OPENSSL_REASONS)
        raise ValueError(f"reason: {text!r} unknown to OpenSSL (use {names})") from None


def index_line(
    cert_or_serial: x509.Certificate | int,
    *,
    not_after: datetime | None = None,
    subject: str | None = None,
    revoked_at: datetime | None = None,
    reason: str | x509.ReasonFlags | None = None,
    expired: bool = False,
) -> str:
    """One line of an OpenSSL CA database (index.txt), without the newline.

    Six tab-separated fields: status (V valid, R revoked, E expired), expiry,
    revocation ``time[,reason]`` (empty unless R), serial in upper-case hex of
    even length, file name (``unknown``), subject. Given a certificate,
    ``not_after`` and ``subject`` default to the certificate's. A revoked
    entry stays R even when ``expired`` (``openssl ca -updatedb`` only
    expires V entries).
    """
    if isinstance(cert_or_serial, x509.Certificate):
        serial = cert_or_serial.serial_number
        if not_after is None:
            not_after = cert_or_serial.not_valid_after_utc
        if subject is None:
            subject = openssl_subject(cert_or_serial.subject)
    else:
        serial = cert_or_serial
    if not_after is None or subject is None:
        raise TypeError("index_line: a bare serial needs not_after and subject")
    if serial < 0:
        raise ValueError(f"serial: must not be negative, got {serial}")
    if reason is not None and revoked_at is None:
        raise ValueError("reason: given without revoked_at")
    hex_serial = f"{serial:X}"
    hex_serial = hex_serial.zfill(len(hex_serial) + len(hex_serial) % 2)
    revocation = ""
    if revoked_at is not None:
        status = "R"
        revocation = openssl_time(revoked_at)
        if reason is not None:
            revocation += "," + _openssl_reason(reason)
    else:
        status = "E" if expired else "V"
    expiry = openssl_time(not_after)
    return "\t".join((status, expiry, revocation, hex_serial, "unknown", subject))


@dataclass(frozen=True)
class DemoPki:
    """The files of a demo PKI made by :func:`make_demo` (absolute paths)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    responder_cert: Path
    responder_key: Path
    index: Path
    config: Path
    leaves: dict[str, Path]  # name -> leaf certificate PEM

    def files(self) -> list[Path]:
        """Every file of the demo, ocspd.toml last."""
        pki = [self.ca_cert, self.ca_key, self.responder_cert, self.responder_key]
        return [*pki, self.index, *self.leaves.values(), self.config]


DEMO_LEAVES = ("good", "revoked", "unissued")


def _demo_paths(directory: Path) -> DemoPki:
    return DemoPki(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        responder_cert=directory / "responder.pem",
        responder_key=directory / "responder.key",
        index=directory / "index.txt",
        config=directory / "ocspd.toml",
        leaves={name: directory / f"{name}.pem" for name in DEMO_LEAVES},
    )


def demo_config(*, port: int = 8080, admin_port: int = 9180) -> str:
    """The ocspd.toml of the demo; paths are relative to the file itself."""
    return f"""\
# Made by `ocspd demo`: a throwaway PKI; do not use it for anything real.
[server]
listen = ["127.0.0.1:{port}"]

[admin]
listen = "127.0.0.1:{admin_port}"

[[issuers]]
id = "demo"
ca_cert = "ca.pem"
responder_cert = "responder.pem"
responder_key = "responder.key"
index = "index.txt"
"""


def make_demo(directory: Path, *, port: int = 8080, admin_port: int = 9180, key_type: KeyType = "p256") -> DemoPki:
    """Make (or reuse) a demo PKI and its ocspd.toml in ``directory``.

    A complete existing demo is reused as it is, so its CA stays trusted
    across runs; only ocspd.toml is rewritten when the ports changed (the
    leaves then keep their original OCSP URL). An incomplete one is made
    again from scratch. Leaves: ``good`` (valid), ``revoked``
    (keyCompromise, an hour ago) and ``unissued`` (signed by the CA but
    absent from index.txt).
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    demo = _demo_paths(directory.resolve())
    config = demo_config(port=port, admin_port=admin_port)
    if all(path.is_file() for path in demo.files()):
        if demo.config.read_text(encoding="utf-8") != config:
            _write_atomic(demo.config, config.encode(), 0o644)
        return demo

    now = datetime.now(UTC)
    url = f"http://127.0.0.1:{port}/"
    ca = make_ca(key_type=key_type, now=now)
    responder = make_responder(ca, key_type, now=now)
    leaves = {
        name: make_leaf(ca, random_serial(), f"{name}.demo.ocspd.test", key_type=key_type, now=now, ocsp_url=url)
        for name in DEMO_LEAVES
    }
    an_hour_ago = now - timedelta(hours=1)
    lines = [
        index_line(leaves["good"].cert),
        index_line(leaves["revoked"].cert, revoked_at=an_hour_ago, reason="keyCompromise"),
    ]
    for n in (1, 2):  # issued certificates the demo has no file for
        subject = openssl_subject(_name(f"extra-{n}.demo.ocspd.test"))
        lines.append(index_line(random_serial(), not_after=now + timedelta(days=90), subject=subject))

    write_key(demo.ca_key, ca.key)
    write_cert(demo.ca_cert, ca.cert)
    write_key(demo.responder_key, responder.key)
    write_cert(demo.responder_cert, responder.cert)
    for name, leaf in leaves.items():
        write_cert(demo.leaves[name], leaf.cert)
    _write_atomic(demo.index, "".join(line + "\n" for line in lines).encode(), 0o644)
    # Written last: its presence (with the rest) marks a complete demo.
    _write_atomic(demo.config, config.encode(), 0o644)
    return demo


# What ``openssl ocsp`` prints for each demo leaf (besides "Response verify OK").
DEMO_ANSWERS = {"good": "good", "revoked": "revoked", "unissued": "unknown"}


@dataclass(frozen=True)
class DemoCommand:
    """An ``openssl ocsp`` command for the demo, and the line it should print."""

    command: str
    answer: str  # e.g. "/tmp/ocspd-demo/good.pem: good"
    note: str = ""


def openssl_commands(demo: DemoPki, url: str) -> list[DemoCommand]:
    """``openssl ocsp`` commands that query ``url`` for each demo leaf, with what each answers.

    One command per leaf, then one for the first leaf with ``-no_nonce``
    (the form whose answer can come from the cache). No ``-resp_text``: the
    status line is the one to look at.
    """
    q = shlex.quote
    ca = q(str(demo.ca_cert))

    def command(leaf: Path, *extra: str) -> str:
        args = ["-issuer", ca, "-cert", q(str(leaf)), "-url", q(url), "-CAfile", ca]
        return " ".join(["openssl", "ocsp", *args, *extra])

    commands = [DemoCommand(command(path), f"{path}: {DEMO_ANSWERS[name]}") for name, path in demo.leaves.items()]
    if demo.leaves:
        name, path = next(iter(demo.leaves.items()))
        note = "no nonce: the same signed answer for everyone, from the cache after the first"
        commands.append(DemoCommand(command(path, "-no_nonce"), f"{path}: {DEMO_ANSWERS[name]}", note))
    return commands
