"""What a status source says about one certificate."""

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


@dataclass(frozen=True, slots=True)
class CertStatus:
    """The truth about one (issuer, serial) at one moment.

    ``version`` changes whenever the status changes; a response signed from an
    older version must not be written back to any cache tier.
    """

    status: Status
    revoked_at: dt.datetime | None = None  # aware UTC, set when REVOKED
    reason: x509.ReasonFlags | None = None
    version: int = 0


UNKNOWN = CertStatus(Status.UNKNOWN)
