"""The CRLs in force of issuers whose status comes from their CA's CRLs, shared by the replicas
(``ocspd_crl_sources``, sql/migrations/0004), and their merge into ``ocspd_certificates``.

Each round one replica claims an issuer's row (:meth:`CrlRows.claim`), fetches
and checks its CRLs, merges them (:meth:`CrlRows.merge`: revocations through
the import's merge, never a downgrade; holds the CRLs no longer list released
through ``ocspd_unhold``) and records what is in force (:meth:`CrlRows.record`);
the table's triggers notify every replica of each serial that changed. The
others only read the row (:meth:`CrlRows.in_force`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Container, Mapping
from dataclasses import dataclass, field

from ocspd.store.certificates import Certificates, CertRecord, ImportCounts
from ocspd.store.connector import Connector
from ocspd.store.values import text_array

MERGE_BATCH = 5000  # revocations a statement: each well within the request path's statement_timeout


@dataclass(frozen=True, slots=True)
class CrlRecord:
    """One CRL in force as the table keeps it (no entries: those are in ocspd_certificates)."""

    number: int
    this_update: dt.datetime
    next_update: dt.datetime | None
    entries: int
    source: str


@dataclass(frozen=True, slots=True)
class CrlRow:
    """What the table says is in force for one issuer."""

    base: CrlRecord | None
    delta: CrlRecord | None
    last_error: str | None
    applied_at: dt.datetime | None
    fetched_at: dt.datetime | None
    next_fetch_at: dt.datetime | None
    # By location, what makes the next fetch conditional (crlfetch.Validators' fields, as JSON).
    validators: dict[str, dict[str, object]] = field(default_factory=dict)
    applier: str | None = None  # the replica that claimed last (ocspd crl sync leaves it)


class CrlRows:
    """``ocspd_crl_sources`` of one database, and the merge of CRLs into the certificate table."""

    def __init__(self, connector: Connector, certificates: Certificates) -> None:
        self._connector = connector
        self._certificates = certificates

    async def claim(self, issuer_id: str, me: str, *, lease: float, grace: float, force: bool = False) -> bool:
        """Whether replica ``me`` runs the issuer's round now: the row is due and unclaimed, and
        ``me`` applied last, or the round is ``grace`` seconds overdue (or ``force``)."""
        await self._connector.query("ensure_crl_row", {"issuer": issuer_id})
        params = {"issuer": issuer_id, "me": me, "lease": lease, "grace": grace, "force": force}
        return bool(await self._connector.query("claim_crl", params))

    async def release(self, issuer_id: str, me: str) -> None:
        """End replica ``me``'s claim of the issuer's round without a record (it is stopping)."""
        await self._connector.query("release_crl", {"issuer": issuer_id, "me": me})

    async def in_force(self, issuer_id: str) -> CrlRow | None:
        rows = await self._connector.query("crl_in_force", {"issuer": issuer_id})
        if not rows:
            return None
        row = rows[0]
        return CrlRow(_record(row[0:5]), _record(row[5:10]), row[10], row[11], row[12], row[13], row[14] or {}, row[15])

    async def record(
        self,
        issuer_id: str,
        base: CrlRecord | None,
        delta: CrlRecord | None,
        *,
        last_error: str | None,
        applied: bool,
        delay: float,
        validators: Mapping[str, Mapping[str, object]],
    ) -> None:
        """What is in force now; the next round is due in ``delay`` seconds; the claim ends."""
        params: dict[str, object] = {
            "issuer": issuer_id,
            "last_error": last_error,
            "applied": applied,
            "delay": delay,
            "validators": json.dumps(validators),
        }
        for kind, record in (("base", base), ("delta", delta)):
            params.update(
                {
                    f"{kind}_number": None if record is None else record.number,
                    f"{kind}_this_update": None if record is None else record.this_update,
                    f"{kind}_next_update": None if record is None else record.next_update,
                    f"{kind}_entries": None if record is None else record.entries,
                    f"{kind}_source": None if record is None else record.source,
                }
            )
        await self._connector.query("record_crl", params, retry=False)

    async def merge(
        self, issuer_id: str, revoked: Collection[CertRecord], listed: Container[int]
    ) -> tuple[ImportCounts, int]:
        """Merge the revocations the CRLs in force give, and release the holds they no longer
        list (serials not in ``listed``); the merge's counts, and how many holds were released."""
        counts = ImportCounts()
        batch: list[CertRecord] = []
        for record in revoked:
            batch.append(record)
            if len(batch) == MERGE_BATCH:
                counts += await self._certificates.merge_in(issuer_id, batch)
                batch = []
        if batch:
            counts += await self._certificates.merge_in(issuer_id, batch)
        rows = await self._connector.query("held_serials", {"issuer": issuer_id})
        released = [serial for (serial,) in rows if int(serial, 16) not in listed]
        if released:
            await self._connector.query(
                "release_holds", {"issuer": issuer_id, "serials": text_array(released)}, retry=False
            )
        return counts, len(released)


def _record(values: tuple[object, ...]) -> CrlRecord | None:
    number, this_update, next_update, entries, source = values
    if number is None:
        return None
    assert isinstance(this_update, dt.datetime) and isinstance(source, str)
    return CrlRecord(
        int(str(number)),
        this_update,
        next_update if isinstance(next_update, dt.datetime) else None,
        int(str(entries)),
        source,
    )
