"""The shared response tier as refresh, presign and the write-behind queue use it.

Every write is conditional (the query ``store_responses``): a response is
kept only while its certificate still has the status version it was signed
from, so one signed from a status that has changed since is never stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ocspd.cache import Entry
from ocspd.status import CertStatus
from ocspd.store.connector import Connector
from ocspd.store.values import number_array, row_status, serial_hex, text_array


class SignedResponse(NamedTuple):
    """A response to keep: for ``serial`` (CertID hash ``hash_alg``), signed from status ``version``."""

    serial: int
    hash_alg: str
    entry: Entry
    version: int


@dataclass(frozen=True, slots=True)
class DueRow:
    """A stored response due for re-signing, with its certificate's current status."""

    issuer_id: str
    serial: int
    hash_alg: str
    status: CertStatus


@dataclass(frozen=True, slots=True)
class PresignRow:
    """A certificate without a fresh stored response (``presign_batch``), with its status."""

    serial: int
    status: CertStatus


class Responses:
    """Writes to ``ocspd_responses``, and the reads that pick what to (re-)sign."""

    def __init__(self, connector: Connector) -> None:
        self._connector = connector

    async def store_many(self, issuer_id: str, signer: str, items: Sequence[SignedResponse]) -> int:
        """Conditional write-back of responses signed by ``signer``; returns how many were written."""
        return len(await self._connector.query("store_responses", _store_params(issuer_id, signer, items)))

    async def refresh_due(
        self,
        signers: Mapping[str, str],
        sign: Callable[[DueRow], Awaitable[Entry]],
        *,
        lead: dt.timedelta,
        limit: int,
    ) -> int:
        """Re-sign up to ``limit`` stored responses due within ``lead``; returns how many.

        Claimed rows are locked (``SKIP LOCKED``) until this transaction ends, so
        replicas refreshing at once share the work without doing any row twice.
        """
        async with self._connector.transaction() as cur:
            await cur.execute(
                self._connector.sql("claim_refresh"), {"lead": lead, "issuers": list(signers), "limit": limit}
            )
            due = [DueRow(r[0], int(r[1], 16), r[2], row_status(r[3:7])) for r in await cur.fetchall()]
            # All at once: a token key signs in all its sessions (ocspd/hsm.py); a key file inline.
            entries = await asyncio.gather(*(sign(row) for row in due))
            by_issuer: dict[str, list[SignedResponse]] = {}
            for row, entry in zip(due, entries, strict=True):
                item = SignedResponse(row.serial, row.hash_alg, entry, row.status.version)
                by_issuer.setdefault(row.issuer_id, []).append(item)
            for issuer_id, items in by_issuer.items():
                await cur.execute(
                    self._connector.sql("store_responses"), _store_params(issuer_id, signers[issuer_id], items)
                )
        return len(due)

    async def presign_batch(
        self, issuer_id: str, hash_alg: str, signer: str, after: int | None, limit: int
    ) -> list[PresignRow]:
        """Up to ``limit`` certificates, in serial order after serial ``after`` (None: from the first),
        that lack a fresh stored response signed by ``signer``."""
        params = {
            "issuer": issuer_id,
            "hash_alg": hash_alg,
            "signer": signer,
            # The stored spelling (the table's CHECK admits no other): the query pages in its text order.
            "after": "" if after is None else serial_hex(after),
            "limit": limit,
        }
        async with self._connector.transaction() as cur:
            # The plan is a few index probes, but its estimated cost (the LIMIT's filter on a
            # table without statistics yet) passes PostgreSQL's JIT thresholds: 100-150 ms of
            # compiling per batch of 500 for the first half of a presign (bench/README.md, issue 14).
            await cur.execute("SET LOCAL jit = off")
            await cur.execute(self._connector.sql("presign_batch"), params)
            rows = await cur.fetchall()
        return [PresignRow(int(r[0], 16), row_status(r[1:5])) for r in rows]


def _store_params(issuer_id: str, signer: str, items: Sequence[SignedResponse]) -> dict[str, Any]:
    ders = [item.entry.der for item in items]
    starts, at = [], 1
    for der in ders:
        starts.append(at)
        at += len(der)
    return {
        "issuer": issuer_id,
        "signer": signer,
        "serials": text_array([serial_hex(item.serial) for item in items]),
        "hash_algs": text_array([item.hash_alg for item in items]),
        "ders": b"".join(ders),
        "der_ats": number_array(starts),
        "der_lens": number_array([len(der) for der in ders]),
        "statuses": text_array([item.entry.status.value for item in items]),
        # Epoch numbers, turned into timestamptz by the query.
        "this_updates": number_array([item.entry.this_update for item in items]),
        "next_updates": number_array([item.entry.next_update for item in items]),
        "refresh_ats": number_array([item.entry.refresh_at for item in items]),
        "versions": number_array([item.version for item in items]),
    }
