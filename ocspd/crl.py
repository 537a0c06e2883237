"""CRLs as a status source: trust before use, and the status a base and a delta CRL give (issue 15).

A CRL is applied only if it passes every check of :func:`verify`: its issuer
name is the CA's; it is signed by the CA's key, or by a CRL signer
certificate the CA issued under its own name with cRLSign; its CRL number is
not lower than the one in use (the same CRL again changes nothing); a delta
CRL's Delta CRL Indicator names a base CRL number the base in use has
reached (RFC 5280 §5.2.4), and the delta is newer than that base. Partitioned
and indirect CRLs (an Issuing Distribution Point with onlySomeReasons,
indirectCRL or a scope other than end-entity certificates; entries naming
another certificate issuer) are refused: this source does not implement
them. A refused CRL leaves the one in use in force; the caller logs and
counts the refusal (:class:`CrlRefused` says why, on one line).

:func:`status` answers for one serial from the base in use and the delta
over it: a delta entry overlays the base's; ``removeFromCRL`` in a delta
releases a hold of the base, never a revocation for another reason (a
revocation is never undone, SPEC §3); a serial neither lists is *not
listed*, which is not proof that it was issued: that policy is the
caller's (issue 15, item 3).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import CRLEntryExtensionOID

from ocspd.exceptions import OcspdError
from ocspd.status import REASONS, CertStatus, Status

_E = TypeVar("_E", bound=x509.ExtensionType)
_HOLD = x509.ReasonFlags.certificate_hold
_REMOVE = x509.ReasonFlags.remove_from_crl


class CrlRefused(OcspdError):
    """A CRL that fails a check: not applied (the message says which check, on one line)."""


# An entry is one int: the revocation time (POSIX seconds: CRL times are whole
# seconds) times 16 plus the reason's code (15: no reasonCode). A dict of
# serial -> int costs about 140 bytes of RSS an entry at 1M entries, a record
# object would add some 64 more (bench/crl.py).
_NO_REASON = 15
_CODES: dict[x509.ReasonFlags | None, int] = {r.flag: r.code for r in REASONS}
_CODES[None] = _NO_REASON
_FLAGS: dict[int, x509.ReasonFlags | None] = {code: flag for flag, code in _CODES.items()}
_REMOVE_CODE, _HOLD_CODE = _CODES[_REMOVE], _CODES[_HOLD]


@dataclass(frozen=True, slots=True)
class CrlEntry:
    """One revoked certificate of a CRL: when, and why (None: no reasonCode)."""

    revoked_at: dt.datetime
    reason: x509.ReasonFlags | None


def pack(revoked_at: dt.datetime, reason: x509.ReasonFlags | None) -> int:
    """One entry as :attr:`TrustedCrl.entries` keeps it."""
    return int(revoked_at.timestamp()) * 16 + _CODES[reason]


def unpack(packed: int) -> CrlEntry:
    seconds, code = divmod(packed, 16)
    return CrlEntry(dt.datetime.fromtimestamp(seconds, dt.UTC), _FLAGS[code])


@dataclass(frozen=True, slots=True)
class TrustedCrl:
    """A CRL that passed :func:`verify`, reduced to what answers need."""

    number: int
    this_update: dt.datetime
    next_update: dt.datetime | None  # None: the CRL gives no nextUpdate
    base_number: int | None  # a delta's Delta CRL Indicator; None for a complete (base) CRL
    entries: Mapping[int, int]  # serial -> packed entry (pack/unpack)
    # Where a newer delta CRL is published (Freshest CRL extension, http(s) URIs only).
    freshest: tuple[str, ...] = ()

    @property
    def is_delta(self) -> bool:
        return self.base_number is not None

    def entry(self, serial: int) -> CrlEntry | None:
        packed = self.entries.get(serial)
        return None if packed is None else unpack(packed)


def load(data: bytes) -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes; CrlRefused if it is neither."""
    try:
        if b"-----BEGIN" in data[:64]:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CrlRefused(f"not a readable CRL: {' '.join(str(exc).split())}") from None


def verify(
    crl: x509.CertificateRevocationList,
    ca: x509.Certificate,
    *,
    signer: x509.Certificate | None = None,
    in_use: TrustedCrl | None = None,
    base: TrustedCrl | None = None,
) -> TrustedCrl:
    """``crl`` checked for the issuer ``ca``; CrlRefused naming the check it fails.

    ``signer``: a CRL signer certificate named in the config (default: the CA's
    own key). ``in_use``: the CRL of the same kind (base or delta) in force now.
    ``base``: for a delta CRL, the base CRL it would be applied over.
    """
    if crl.issuer != ca.subject:
        raise CrlRefused(f"issuer {crl.issuer.rfc4514_string()} is not the CA's ({ca.subject.rfc4514_string()})")
    key_holder = ca if signer is None else _checked_signer(signer, ca)
    if not _key_usage_allows_crl_sign(key_holder):
        raise CrlRefused(f"{key_holder.subject.rfc4514_string()}'s key usage does not include cRLSign")
    if not crl.is_signature_valid(key_holder.public_key()):  # type: ignore[arg-type]
        raise CrlRefused("signature does not verify with the CA's key" if signer is None else "bad signature")
    _refuse_partitions(crl)
    number = _extension(crl, x509.CRLNumber)
    if number is None:
        raise CrlRefused("no CRL number (RFC 5280 requires one: without it, a replayed older CRL cannot be told)")
    indicator = _extension(crl, x509.DeltaCRLIndicator)
    base_number = None if indicator is None else indicator.crl_number
    if base_number is not None:
        if base is None:
            raise CrlRefused(f"delta CRL {number.crl_number} with no base CRL in use")
        if base_number > base.number:
            raise CrlRefused(f"delta CRL for base CRL {base_number}, the base in use is {base.number}")
        if number.crl_number <= base.number:
            raise CrlRefused(f"delta CRL {number.crl_number} is not newer than the base in use ({base.number})")
    if in_use is not None and number.crl_number < in_use.number:
        raise CrlRefused(f"CRL number {number.crl_number} is lower than the one in use ({in_use.number})")
    return TrustedCrl(
        number.crl_number,
        crl.last_update_utc,
        crl.next_update_utc,
        base_number,
        _entries(crl),
        _freshest(crl) if base_number is None else (),
    )


def effective(base: TrustedCrl, delta: TrustedCrl | None, serial: int) -> int | None:
    """The packed entry the base and the delta over it give ``serial``: None if neither lists it,
    or if a delta's removeFromCRL released a hold (a revocation for another reason is never undone)."""
    listed = base.entries.get(serial)
    if delta is not None:
        overlay = delta.entries.get(serial)
        if overlay is not None:
            if overlay % 16 == _REMOVE_CODE:
                return listed if listed is not None and listed % 16 != _HOLD_CODE else None
            if listed is None or listed % 16 == _HOLD_CODE or overlay % 16 != _HOLD_CODE:
                return overlay
    return listed


def status(base: TrustedCrl, delta: TrustedCrl | None, serial: int) -> CertStatus | None:
    """What the base CRL and the delta over it say of ``serial``; None if neither lists it.

    A hold a delta releases is GOOD. The status version is the number of the
    newest CRL that lists the serial, so an answer signed from an older CRL is
    never written back over a newer one.
    """
    packed = effective(base, delta, serial)
    version = delta.number if delta is not None and serial in delta.entries else base.number
    if packed is None:
        return CertStatus(Status.GOOD, version=version) if version != base.number else None
    entry = unpack(packed)
    return CertStatus(Status.REVOKED, entry.revoked_at, entry.reason, version)


def changed_serials(
    old: tuple[TrustedCrl, TrustedCrl | None] | None, new: tuple[TrustedCrl, TrustedCrl | None]
) -> set[int]:
    """The serials whose status differs between two (base, delta) pairs in force (every listed
    serial when there was none): what a newly applied CRL invalidates."""
    new_base, new_delta = new
    if old is None:
        listed = set(new_base.entries)
        return listed | set(new_delta.entries) if new_delta is not None else listed
    old_base, old_delta = old
    if old_base is new_base:
        candidates: set[int] = set()
    else:
        # Item views compare in C: four times faster than a loop at 1M entries (bench/crl.py).
        candidates = {serial for serial, _ in old_base.entries.items() ^ new_base.entries.items()}
    for delta in (old_delta, new_delta):
        if delta is not None:
            candidates.update(delta.entries)
    return {s for s in candidates if _answer(old_base, old_delta, s) != _answer(new_base, new_delta, s)}


_RELEASED = -1  # not a packed entry: those are non-negative for any time since 1970


def _answer(base: TrustedCrl, delta: TrustedCrl | None, serial: int) -> int | None:
    """What :func:`status` answers, as one comparable value: the packed entry, _RELEASED
    (good: a delta released its hold, so it was issued) or None (not listed)."""
    packed = effective(base, delta, serial)
    if packed is None and delta is not None and serial in delta.entries:
        return _RELEASED
    return packed


def _checked_signer(signer: x509.Certificate, ca: x509.Certificate) -> x509.Certificate:
    """A CRL signer certificate: issued by the CA, under the CA's name (not an indirect CRL issuer)."""
    if signer.subject != ca.subject:
        raise CrlRefused(
            f"CRL signer {signer.subject.rfc4514_string()} is not the CA's name: an indirect CRL issuer, not supported"
        )
    if signer != ca:
        try:
            signer.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise CrlRefused("the CRL signer certificate was not issued by the CA") from None
    return signer


def _key_usage_allows_crl_sign(cert: x509.Certificate) -> bool:
    usage = _extension(cert, x509.KeyUsage)
    return usage is None or usage.crl_sign  # no KeyUsage extension: not restricted


def _refuse_partitions(crl: x509.CertificateRevocationList) -> None:
    point = _extension(crl, x509.IssuingDistributionPoint)
    if point is not None:
        if point.only_some_reasons:
            raise CrlRefused("a partitioned CRL (Issuing Distribution Point with onlySomeReasons): not supported")
        if point.indirect_crl:
            raise CrlRefused("an indirect CRL (Issuing Distribution Point with indirectCRL): not supported")
        if point.only_contains_ca_certs or point.only_contains_attribute_certs:
            raise CrlRefused("a CRL that does not cover end-entity certificates (Issuing Distribution Point)")


def _entries(crl: x509.CertificateRevocationList) -> dict[int, int]:
    # The hot loop of a large CRL: one pass over each entry's extensions, by OID
    # (get_extension_for_class raises on every entry that lacks the one asked for).
    entries: dict[int, int] = {}
    codes, no_reason = _CODES, _NO_REASON
    reason_oid, issuer_oid = CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.CERTIFICATE_ISSUER
    for revoked in crl:
        code = no_reason
        for extension in revoked.extensions:
            oid = extension.oid
            if oid == reason_oid:
                code = codes[extension.value.reason]
            elif oid == issuer_oid:
                raise CrlRefused(f"entry {revoked.serial_number:X} names another certificate issuer (indirect CRL)")
        entries[revoked.serial_number] = int(revoked.revocation_date_utc.timestamp()) * 16 + code
    return entries


def _freshest(crl: x509.CertificateRevocationList) -> tuple[str, ...]:
    points = _extension(crl, x509.FreshestCRL)
    found = []
    for point in points or ():
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(("http:", "https:")):
                found.append(name.value)
    return tuple(found)


def _extension(
    holder: x509.Certificate | x509.CertificateRevocationList | x509.RevokedCertificate, kind: type[_E]
) -> _E | None:
    try:
        return holder.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
