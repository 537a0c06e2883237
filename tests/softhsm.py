"""Throwaway SoftHSM2 tokens for the PKCS#11 tests and bench/ (issue 16): a token directory
and configuration of their own, keys imported with `softhsm2-util`, certificates written
with python-pkcs11 in a subprocess (softhsm2-util imports keys only), and a token made
unavailable by moving its directory away, as a removed HSM would be.

SoftHSM2 reads ``SOFTHSM2_CONF`` once per process, when the module is initialised, and sees
no token created after that: every process that signs (`ocspd serve`, `ocspd check-config`,
the one-off scripts here) is started with ``env``, after the tokens it needs exist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ocspd.pki import PrivateKey

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SO_PIN = "so-5678"
# Distinctive, so that a test can grep every log line for it.
USER_PIN = "pin-Q7x3Zk9"


def skip_without_softhsm() -> None:
    """Skip the caller without SoftHSM2 or python-pkcs11 (scripts/test.sh installs neither; .ci/run both)."""
    if shutil.which("softhsm2-util") is None or not Path(MODULE).exists():
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        pytest.skip("python-pkcs11 is not installed (pip install 'ocspd[pkcs11]')")


@dataclass
class SoftHsm:
    """A SoftHSM2 of its own in ``directory``: its tokens, by label, and the PIN file they share."""

    directory: Path
    tokens: dict[str, Path] = field(default_factory=dict)  # label -> the token's directory

    def __post_init__(self) -> None:
        self.token_root = self.directory / "tokens"
        self.token_root.mkdir(parents=True, exist_ok=True)
        self.conf = self.directory / "softhsm2.conf"
        self.conf.write_text(
            f"directories.tokendir = {self.token_root}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        self.pin_file = self.directory / "pin"
        self.pin_file.write_text(USER_PIN + "\n")
        self.pin_file.chmod(0o600)

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def _run(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            args, input=stdin, capture_output=True, text=True, env={**os.environ, **self.env}, timeout=60, check=False
        )
        assert done.returncode == 0, f"{' '.join(args[:2])}: {done.stdout}{done.stderr}"
        return done.stdout

    def init_token(self, label: str = "ocsp") -> None:
        before = set(self.token_root.iterdir())
        self._run("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", USER_PIN)
        (created,) = set(self.token_root.iterdir()) - before
        self.tokens[label] = created

    def import_key(self, key: PrivateKey, label: str, ident: str, token: str = "ocsp") -> None:
        """Put ``key`` in the token as object ``label`` with CKA_ID ``ident`` (hex)."""
        pem = self.directory / f"import-{label}.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        try:
            self._run(
                "softhsm2-util", "--import", str(pem), "--token", token, "--label", label, "--id", ident,
                "--pin", USER_PIN,
            )  # fmt: skip
        finally:
            pem.unlink()

    def import_cert(self, cert: x509.Certificate, label: str, ident: str, token: str = "ocsp") -> None:
        """Put ``cert`` in the token as a certificate object."""
        der = cert.public_bytes(serialization.Encoding.DER).hex()
        subject = cert.subject.public_bytes().hex()
        script = (
            "import sys, pkcs11\n"
            "from pkcs11 import Attribute, CertificateType, ObjectClass\n"
            f"token = pkcs11.lib({MODULE!r}).get_token(token_label={token!r})\n"
            "with token.open(user_pin=sys.stdin.read().strip(), rw=True) as session:\n"
            "    session.create_object({\n"
            "        Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.CERTIFICATE_TYPE: CertificateType.X_509,\n"
            f"        Attribute.TOKEN: True, Attribute.LABEL: {label!r}, Attribute.ID: bytes.fromhex({ident!r}),\n"
            f"        Attribute.VALUE: bytes.fromhex({der!r}), Attribute.SUBJECT: bytes.fromhex({subject!r}),\n"
            "    })\n"
        )
        self._run(sys.executable, "-c", script, stdin=USER_PIN)

    def take_away(self, label: str = "ocsp") -> None:
        """Make the token unavailable (its objects gone from under open sessions)."""
        path = self.tokens[label]
        path.rename(path.with_name(path.name + ".away"))

    def bring_back(self, label: str = "ocsp") -> None:
        path = self.tokens[label]
        path.with_name(path.name + ".away").rename(path)


def key_uri(label: str, token: str = "ocsp", extra: str = "") -> str:
    """The RFC 7512 URI of a private key object."""
    return f"pkcs11:token={token};object={label};type=private{extra}"
