"""The one status vocabulary: what a status source says about one
certificate (``Status``), what a signed response says (``Served``), and the
one table of revocation reasons (RFC 5280 §5.3.1) that every source, the
signer, the store and the CLI read.

Code passes these enums around; their ``value`` is the spelling at the
edges (log fields, metric labels, SQL parameters, CLI output).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from cryptography import x509


class Status(enum.Enum):
    """Revocation status as the source knows it (before unknown-serial policy)."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # the source has never heard of this serial


class Served(enum.Enum):
    """What a signed response says, as the transaction log and the store's responses table spell it.

    One CertID's answer after the unknown-serial policy (an unissued serial
    answered "revoked" is REVOKED), or MIXED for any response of several
    CertIDs, whatever their answers.
    """

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    MIXED = "mixed"


# The served status of one CertID's answer (``signer.Answer.status`` is a Status).
SERVED: dict[Status, Served] = {status: Served(status.value) for status in Status}
# By spelling, for the edges that read one back (the store's columns, per row):
# a dict lookup, where calling the enum costs about a microsecond.
STATUS_BY_VALUE: dict[str, Status] = {status.value: status for status in Status}
SERVED_BY_VALUE: dict[str, Served] = {served.value: served for served in Served}


@dataclass(frozen=True, slots=True)
class CertStatus:
    """The truth about one (issuer, serial) at one moment.

    ``version`` changes whenever the status changes; a response signed from an
    older version must not be written back to any cache tier.
    """

    status: Status
    revoked_at: dt.datetime | None = None  # aware UTC, set when REVOKED
    reason: x509.ReasonFlags | None = None  # never unspecified: see served_reason()
    version: int = 0


UNKNOWN = CertStatus(Status.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Reason:
    """One CRLReason: its RFC 5280 name is ``flag.value`` (``keyCompromise``)."""

    flag: x509.ReasonFlags
    code: int  # the CRLReason enumeration value
    openssl: str  # how `openssl ca` spells it in index.txt ("" where it has no name for it)
    revocation: bool = True  # can a certificate be revoked with it?
    # OpenSSL's other name for it, followed in index.txt by an argument: ``,OID``
    # for holdInstruction, ``,time`` (of the compromise) for the others.
    openssl_with_argument: str = ""

    @property
    def name(self) -> str:
        return str(self.flag.value)


_F = x509.ReasonFlags
REASONS: tuple[Reason, ...] = (
    Reason(_F.unspecified, 0, "unspecified"),
    Reason(_F.key_compromise, 1, "keyCompromise", openssl_with_argument="keyTime"),
    Reason(_F.ca_compromise, 2, "CACompromise", openssl_with_argument="CAkeyTime"),
    Reason(_F.affiliation_changed, 3, "affiliationChanged"),
    Reason(_F.superseded, 4, "superseded"),
    Reason(_F.cessation_of_operation, 5, "cessationOfOperation"),
    Reason(_F.certificate_hold, 6, "certificateHold", openssl_with_argument="holdInstruction"),
    # 7 is unused. removeFromCRL marks, in a delta CRL, an entry that left the
    # base CRL (a released hold): it is not a reason to revoke anything.
    Reason(_F.remove_from_crl, 8, "removeFromCRL", revocation=False),
    Reason(_F.privilege_withdrawn, 9, ""),
    Reason(_F.aa_compromise, 10, ""),
)
REASON_BY_FLAG: dict[x509.ReasonFlags, Reason] = {r.flag: r for r in REASONS}
REASON_BY_NAME: dict[str, Reason] = {r.name: r for r in REASONS}
# RFC 5280 names (also OpenSSL's: they differ only in case), in lower case.
REASON_BY_LOWER_NAME: dict[str, Reason] = {r.name.lower(): r for r in REASONS}
HOLD = REASON_BY_FLAG[_F.certificate_hold]


def revocation_reason(name: str) -> Reason | None:
    """The reason a certificate may be revoked with, by RFC 5280 name in any case; None if there is none."""
    reason = REASON_BY_LOWER_NAME.get(name.strip().lower())
    return reason if reason is not None and reason.revocation else None


def served_reason(flag: x509.ReasonFlags | None) -> x509.ReasonFlags | None:
    """The reason as answers carry it: ``unspecified`` is left out (RFC 5280 §5.3.1 says the
    reasonCode SHOULD be absent rather than unspecified; the CA/Browser Forum says MUST)."""
    return None if flag is x509.ReasonFlags.unspecified else flag
