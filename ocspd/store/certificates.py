"""The certificate table as the CLI writes it: import, add, revoke, unhold, status.

The revocation rules themselves live in the database (a trigger, see
``ocspd/sql/migrations/0003_revocation_rules.sql``), so that every writer meets
them; this module only speaks them. ``merge`` is the Python twin of the SQL
``ocspd_merge``, used to fold the duplicates of one import into one record
before the database sees them.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

from cryptography import x509

from ocspd.status import HOLD, Status
from ocspd.store.connector import Connector
from ocspd.store.values import reason_flag, reason_name, serial_hex, text_array


@dataclass(frozen=True, slots=True)
class CertRecord:
    """One certificate as an import or ``cert add`` offers it."""

    serial: int
    status: Status = Status.GOOD  # GOOD or REVOKED
    revoked_at: dt.datetime | None = None
    reason: x509.ReasonFlags | None = None  # never unspecified (served_reason)
    not_after: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class CertRow:
    """What the table says about one certificate."""

    status: Status
    revoked_at: dt.datetime | None
    reason: x509.ReasonFlags | None
    not_after: dt.datetime | None
    version: int
    updated_at: dt.datetime
    stored_responses: int

    @property
    def on_hold(self) -> bool:
        return self.status is Status.REVOKED and self.reason is HOLD.flag


class Merge(enum.Enum):
    """How a record offered for a serial meets what is already known of it."""

    APPLY = "apply"  # it supersedes (a revocation of a good serial, a hold made permanent)
    SAME = "same"  # nothing to change
    KEEP = "keep"  # the known revocation stays


def merge(old: CertRecord | CertRow | None, new: CertRecord) -> Merge:
    """The rule of SQL ``ocspd_merge``: a revocation is never undone by an offer of "good"."""
    if old is None or old.status is Status.GOOD:
        return Merge.APPLY if new.status is Status.REVOKED else Merge.SAME
    if new.status is Status.REVOKED and new.reason is old.reason and new.revoked_at == old.revoked_at:
        return Merge.SAME
    if old.reason is HOLD.flag and new.status is Status.REVOKED and new.reason is not HOLD.flag:
        return Merge.APPLY
    return Merge.KEEP


def fold_duplicates(records: Iterable[CertRecord]) -> tuple[list[CertRecord], int]:
    """One record per serial, merged by :func:`merge` (first offer wins a tie); and how many were folded."""
    by_serial: dict[int, CertRecord] = {}
    folded = 0
    for record in records:
        known = by_serial.get(record.serial)
        if known is None:
            by_serial[record.serial] = record
            continue
        folded += 1
        winner = record if merge(known, record) is Merge.APPLY else known
        by_serial[record.serial] = replace(winner, not_after=winner.not_after or known.not_after or record.not_after)
    return list(by_serial.values()), folded


@dataclass(frozen=True, slots=True)
class ImportCounts:
    """What merging records in did, by outcome (the query ``import_certificates``)."""

    new: int = 0  # not listed before: inserted as given
    revoked: int = 0  # a revocation applied (of a good serial, or a hold made permanent)
    kept: int = 0  # the table's revocation kept over an offer of "good"
    conflict: int = 0  # the table's revocation kept over another revocation
    unchanged: int = 0  # nothing to change

    def __add__(self, other: ImportCounts) -> ImportCounts:
        return ImportCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True, slots=True)
class RevokeResult:
    """What ``revoke`` found and left."""

    before: CertRow | None
    after: CertRow

    @property
    def changed(self) -> bool:
        return self.before is None or self.before.version != self.after.version


class Certificates:
    """The CLI's operations on ``ocspd_certificates`` of one database."""

    def __init__(self, connector: Connector) -> None:
        self._connector = connector

    async def merge_in(self, issuer_id: str, records: Sequence[CertRecord]) -> ImportCounts:
        """Merge distinct-serial records in one statement; counts by outcome."""
        rows = await self._connector.query(
            "import_certificates",
            # Array literals, not lists: psycopg2 adapts a list element by element (bench/README.md).
            {
                "issuer": issuer_id,
                "serials": text_array([serial_hex(r.serial) for r in records]),
                "statuses": text_array([r.status.value for r in records]),
                "revoked_ats": text_array([_time(r.revoked_at) for r in records]),
                "reasons": text_array([reason_name(r.reason) for r in records]),
                "not_afters": text_array([_time(r.not_after) for r in records]),
            },
            retry=False,
        )
        return ImportCounts(**{outcome: int(n) for outcome, n in rows})

    async def revoke(
        self, issuer_id: str, serial: int, reason: x509.ReasonFlags | None, at: dt.datetime | None, *, amend: bool
    ) -> RevokeResult:
        """Revoke (or record as revoked); the same revocation again is no change.

        Raises RuleViolation when it would change a revocation without ``amend``.
        """
        before = await self.status(issuer_id, serial)
        params = {
            "issuer": issuer_id,
            "serial": serial_hex(serial),
            "reason": reason_name(reason),
            "at": at,
            "amend": amend,
        }
        await self._connector.query("revoke", params, retry=False)
        after = await self.status(issuer_id, serial)
        assert after is not None  # revoke inserts an unlisted serial
        return RevokeResult(before, after)

    async def unhold(self, issuer_id: str, serial: int) -> int:
        """Release a certificateHold; returns the new version. RuleViolation on anything else."""
        rows = await self._connector.query("unhold", {"issuer": issuer_id, "serial": serial_hex(serial)}, retry=False)
        return int(rows[0][0])

    async def status(self, issuer_id: str, serial: int) -> CertRow | None:
        """What the table says about one certificate (None: not listed)."""
        rows = await self._connector.query("status", {"issuer": issuer_id, "serial": serial_hex(serial)})
        if not rows:
            return None
        status, revoked_at, reason, not_after, version, updated_at, stored = rows[0]
        return CertRow(
            Status(status),
            revoked_at,
            reason_flag(reason),
            not_after,
            int(version),
            updated_at,
            int(stored),
        )

    async def analyze(self) -> None:
        """Refresh the planner's statistics of the table (after a bulk import)."""
        await self._connector.query("analyze_certificates", {}, retry=False)

    async def count(self, issuer_id: str) -> int:
        rows = await self._connector.query("count_certificates", {"issuer": issuer_id})
        return int(rows[0][0])


def _time(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
