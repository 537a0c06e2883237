"""CRLs for the tests (issue 15), built with cryptography as a CA would issue them."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ocspd import pki

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Revoked:
    """One entry: a serial, when, and a reason (None: no reasonCode)."""

    serial: int
    reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise
    at: dt.datetime = T0 - dt.timedelta(days=1)
    certificate_issuer: x509.Name | None = None


def make_crl(
    ca: pki.Identity,
    entries: Sequence[Revoked] = (),
    *,
    number: int | None = 1,
    delta_of: int | None = None,
    signer: pki.Identity | None = None,
    issuer: x509.Name | None = None,
    this_update: dt.datetime = T0,
    next_update: dt.datetime | None = T0 + dt.timedelta(days=7),
    distribution_point: x509.IssuingDistributionPoint | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.CertificateRevocationList:
    """A CRL of ``ca`` (signed by ``signer``'s key if given): a delta CRL with ``delta_of``."""
    key = (signer or ca).key
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer or ca.cert.subject)
        .last_update(this_update)
        .next_update(next_update or this_update + dt.timedelta(days=3650))
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    if delta_of is not None:
        builder = builder.add_extension(x509.DeltaCRLIndicator(delta_of), critical=True)
    if distribution_point is not None:
        builder = builder.add_extension(distribution_point, critical=True)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    for entry in entries:
        revoked = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.at)
        if entry.reason is not None:
            revoked = revoked.add_extension(x509.CRLReason(entry.reason), critical=False)
        if entry.certificate_issuer is not None:
            general = x509.CertificateIssuer([x509.DirectoryName(entry.certificate_issuer)])
            revoked = revoked.add_extension(general, critical=True)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(key, pki.sign_hash(key))


def crl_signer(ca: pki.Identity, *, crl_sign: bool = True) -> pki.Identity:
    """A separate CRL signing key certified by ``ca`` under the CA's own name."""
    key = pki.new_key("p256")
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(ca.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0 - dt.timedelta(days=1))
        .not_valid_after(T0 + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(ca.key, pki.sign_hash(ca.key))
    )
    return pki.Identity(cert, key)


def der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


class CrlServer:
    """A CA's CRL distribution point on 127.0.0.1: serves what ``publish`` put at a path, with an
    ETag and Last-Modified, answers conditional requests with 304, and counts the requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: dict[str, int] = {}
        self.full_answers: dict[str, int] = {}  # 200s
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._times: dict[str, str] = {}
        # While set to an unset Event, requests wait for it (a fetch in progress, on demand).
        self.stall: asyncio.Event | None = None
        self.stalled = 0  # requests that waited

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def publish(self, path: str, crl: x509.CertificateRevocationList | bytes) -> None:
        self.files[path] = crl if isinstance(crl, bytes) else der(crl)
        self._times[path] = formatdate(time.time(), usegmt=True)

    async def start(self) -> CrlServer:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _get(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        self.requests[path] = self.requests.get(path, 0) + 1
        if self.stall is not None and not self.stall.is_set():
            self.stalled += 1
            await self.stall.wait()
        body = self.files.get(path)
        if body is None:
            return web.Response(status=404)
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        self.full_answers[path] = self.full_answers.get(path, 0) + 1
        headers = {"ETag": etag, "Last-Modified": self._times[path], "Content-Type": "application/pkix-crl"}
        return web.Response(body=body, headers=headers)


def publish(server: CrlServer, ca: pki.Identity, entries: Sequence[Revoked], number: int, **kwargs: object) -> None:
    """Publish a CRL of ``ca`` at ``server``'s ``ca.crl`` (``delta.crl`` with ``delta_of``), current
    now (thisUpdate a minute ago, nextUpdate in a day) unless ``kwargs`` say otherwise."""
    path = "delta.crl" if kwargs.get("delta_of") is not None else "ca.crl"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    kwargs.setdefault("this_update", now - dt.timedelta(minutes=1))
    kwargs.setdefault("next_update", now + dt.timedelta(days=1))
    server.publish(path, make_crl(ca, entries, number=number, **kwargs))  # type: ignore[arg-type]
