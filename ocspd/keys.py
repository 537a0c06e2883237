"""Loading and checking the responder keys and certificates of every issuer: key files,
and keys in PKCS#11 tokens (ocspd/hsm.py, ocspd/tokens.py). Part of the signer's room:
the checks a key passes before ``Signer`` signs with it (it matches its certificate,
which is the CA's or a delegated responder's, and not expired)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ocspd.config import Config, IssuerConfig
from ocspd.exceptions import ConfigError, KeyUnavailable
from ocspd.hsm import HsmError, TokenId, TokenKey, ecdsa_hash
from ocspd.logs import event
from ocspd.pkcs11uri import Pkcs11Uri
from ocspd.signer import PrivateKey, Signer
from ocspd.tokens import Tokens

log = logging.getLogger("ocspd.signer")


def tokens_for(config: Config) -> Tokens:
    """An empty set of tokens as ``[pkcs11]`` says (sessions, timeout), for the keys of ``config``."""
    return Tokens(config.pkcs11.sessions, config.pkcs11.timeout.total_seconds())


def load_signers(config: Config, tokens: Tokens | None = None) -> dict[str, Signer]:
    """Load and check every issuer's keys; ConfigError names the bad key.

    Keys in PKCS#11 tokens are opened in ``tokens`` (the caller's, closed by it;
    without one, a set of tokens kept open as long as the signers are used).
    """
    if tokens is None and any(isinstance(i.responder_key, Pkcs11Uri) for i in config.issuers):
        tokens = tokens_for(config)
    return {
        issuer.id: load_signer(issuer, f"issuers[{i}]", config.source, tokens, config.pkcs11.module)
        for i, issuer in enumerate(config.issuers)
    }


def check_signers(config: Config) -> dict[str, Signer]:
    """``load_signers`` to check the keys only: tokens are closed again (the signers cannot sign with them)."""
    tokens = Tokens(1)
    try:
        return load_signers(config, tokens)
    finally:
        tokens.close()


def token_id(issuer: IssuerConfig, uri: Pkcs11Uri, default_module: str) -> TokenId:
    """Which token of which module holds ``uri``'s object, and where its PIN is."""
    pin_file = issuer.pkcs11_pin_file
    module = issuer.pkcs11_module or uri.module_path or default_module
    return TokenId(
        module, uri.token, uri.serial, uri.manufacturer, uri.model,
        str(pin_file) if pin_file is not None else uri.pin_source,
    )  # fmt: skip


def load_signer(
    issuer: IssuerConfig, where: str, source: str, tokens: Tokens | None = None, default_module: str = ""
) -> Signer:
    """Load one issuer's CA certificate, responder certificate and key."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, key=f"{where}.{key}", file=source)

    ca_cert = _load_cert(issuer.ca_cert, f"{where}.ca_cert", source)
    key: Any
    if isinstance(issuer.responder_key, Pkcs11Uri):
        uri = issuer.responder_key
        if tokens is None:
            tokens = Tokens(1)
        try:
            responder_cert = (
                x509.load_der_x509_certificate(
                    tokens.certificate(token_id(issuer, issuer.responder_cert, default_module), issuer.responder_cert)
                )
                if isinstance(issuer.responder_cert, Pkcs11Uri)
                else _load_cert(issuer.responder_cert, f"{where}.responder_cert", source)
                if issuer.responder_cert is not None
                else None
            )
            signing_cert = responder_cert or ca_cert
            _check_key_type(signing_cert.public_key(), fail)
            key = tokens.key(token_id(issuer, uri, default_module), uri, signing_cert.public_key())
            _check_token_key(key, signing_cert)
        except (HsmError, KeyUnavailable) as exc:
            raise fail("responder_key", f"issuer {issuer.id}: {uri}: {exc}") from None
        except ValueError:
            raise fail(
                "responder_cert", f"issuer {issuer.id}: {issuer.responder_cert} is not a DER certificate"
            ) from None
        return _checked_signer(issuer, ca_cert, key, responder_cert, fail)
    assert not isinstance(issuer.responder_cert, Pkcs11Uri)  # config: a token certificate needs a token key
    responder_cert = (
        _load_cert(issuer.responder_cert, f"{where}.responder_cert", source)
        if issuer.responder_cert is not None
        else None
    )
    passphrase: bytes | None = None
    if issuer.key_passphrase_file is not None:
        try:
            passphrase = issuer.key_passphrase_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise fail("key_passphrase_file", f"cannot read {issuer.key_passphrase_file}: {exc.strerror}") from None
    try:
        data = issuer.responder_key.read_bytes()
    except OSError as exc:
        raise fail("responder_key", f"cannot read {issuer.responder_key}: {exc.strerror}") from None
    try:
        key = (
            serialization.load_pem_private_key(data, passphrase)
            if b"-----BEGIN" in data
            else serialization.load_der_private_key(data, passphrase)
        )
    except TypeError:
        hint = "set key_passphrase_file" if passphrase is None else "remove key_passphrase_file"
        raise fail("responder_key", f"{issuer.responder_key}: key encryption does not match ({hint})") from None
    except ValueError:
        raise fail("responder_key", f"{issuer.responder_key}: not a private key, or wrong passphrase") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise fail("responder_key", f"unsupported key type {type(key).__name__} (use RSA, P-256, P-384, Ed25519)")

    _check_key_type(key.public_key(), fail)
    signing_cert = responder_cert or ca_cert
    signing_key_name = "responder_cert" if responder_cert is not None else "ca_cert"
    if _spki(key.public_key()) != _spki(signing_cert.public_key()):
        raise fail("responder_key", f"{issuer.responder_key} does not match {signing_key_name}")
    return _checked_signer(issuer, ca_cert, key, responder_cert, fail)


def _check_key_type(public: Any, fail: Callable[[str, str], ConfigError]) -> None:
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name not in ("secp256r1", "secp384r1"):
        raise fail("responder_key", f"unsupported curve {public.curve.name} (use P-256 or P-384)")
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
        raise fail("responder_key", f"RSA key of {public.key_size} bits is too small (use 2048 or more)")


def _check_token_key(key: TokenKey, cert: x509.Certificate) -> None:
    """Sign a test message in the token and verify it with the certificate's key: they must be a pair."""
    message = b"ocspd: does this token key match its certificate?"
    signature = key.sign(message)
    public: Any = cert.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(ecdsa_hash(public.curve)))
        else:
            public.verify(signature, message)
    except InvalidSignature:
        raise HsmError("the token key does not match the certificate it signs for (a test signature failed)") from None


def _checked_signer(
    issuer: IssuerConfig,
    ca_cert: x509.Certificate,
    key: PrivateKey | TokenKey,
    responder_cert: x509.Certificate | None,
    fail: Callable[[str, str], ConfigError],
) -> Signer:
    """The checks every key passes (key files and token keys alike): delegation, EKU, expiry."""
    signing_cert = responder_cert or ca_cert
    signing_key_name = "responder_cert" if responder_cert is not None else "ca_cert"
    if responder_cert is not None:
        try:
            responder_cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise fail(
                "responder_cert", f"{issuer.responder_cert} was not issued by ca_cert {issuer.ca_cert}"
            ) from None
        try:
            eku = responder_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise fail("responder_cert", f"{issuer.responder_cert} lacks extended key usage id-kp-OCSPSigning")
        try:
            responder_cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
        except x509.ExtensionNotFound:
            event(
                log,
                "responder_cert_without_nocheck",
                logging.WARNING,
                issuer=issuer.id,
                cert=issuer.responder_cert,
                note="clients may try to check the responder certificate itself",
            )
    now = dt.datetime.now(dt.UTC)
    if signing_cert.not_valid_after_utc <= now:
        raise fail(signing_key_name, f"certificate expired on {signing_cert.not_valid_after_utc.isoformat()}")
    return Signer(issuer.id, ca_cert, key, responder_cert, issuer.responder_id)


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _load_cert(path: Path, key: str, source: str) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key, file=source) from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM or DER certificate", key=key, file=source) from None
