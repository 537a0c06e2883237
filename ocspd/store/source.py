"""The request path's reads: status and stored response of a CertID, concurrent ones in one round trip.

With ``[database] read_dsn`` (a hot standby, say), they go to that pool while it
is in the read set (readset.py), fenced (fence.py): a read the standby made
before it had replayed every change this process was notified of is read
again on the primary (``dsn``), and when that fails the answer is tryLater,
never the standby's rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ocspd.cache import Entry, windows
from ocspd.exceptions import DatabaseBusy, OcspdError, SourceUnavailable, StoreError
from ocspd.metrics import STATUS_READS
from ocspd.sources import Lookup
from ocspd.status import SERVED_BY_VALUE
from ocspd.store.batching import Batcher
from ocspd.store.connector import Connector, Row
from ocspd.store.fence import Fence
from ocspd.store.readset import ReadTarget
from ocspd.store.values import row_status, serial_hex, text_array

FAR_AHEAD = 1 << 62  # the replay position of a read target not in recovery: never behind a fence

# (issuer id, serial hex, CertID hash name, signer fingerprint)
FetchKey = tuple[str, str, str, str]

# Where the reads went when there is a read_dsn (ocspd_status_reads_total, whose
# labels are this table): the read pool's answer served ("read_dsn", "fresh"),
# or read on the primary because the fence was pending, the read pool had not
# replayed up to it, the read pool failed, or it was out of the read set
# (readset.py: lagging, down).
READ_TARGETS = STATUS_READS


class Source:
    """Batched ``fetch`` of the status table and the response tier (the query ``fetch``)."""

    def __init__(
        self,
        connector: Connector,
        reader: Connector | None = None,
        fence: Fence | None = None,
        read_target: ReadTarget | None = None,
    ) -> None:
        """``reader``: the pool on ``read_dsn``, if any, fenced by ``fence`` (raised by the
        listener), and used while ``read_target`` says it is in the read set."""
        self._connector = connector
        self._reader = reader
        self.fence = fence if fence is not None else Fence()
        self.read_target = read_target
        # The furthest replay position a read of reader (or a check of it) has seen.
        self._seen_replay = 0
        self._read_counts = dict.fromkeys(READ_TARGETS, 0)
        self._windows = windows()  # the stored responses read in one second share their Window
        # Concurrent misses share round trips (see batching.py); at most a batch per pooled connection.
        self._fetches: Batcher[FetchKey, Lookup] = Batcher(self._fetch_batch, max_running=connector.maxsize)

    async def fetch(self, issuer_id: str, serial: int, hash_name: str, signer: str) -> Lookup:
        """Status and (if current and signed by ``signer``) the stored response of one CertID.

        One round trip, shared with the other fetches of the same loop turn.
        """
        return await self._fetches.submit((issuer_id, serial_hex(serial), hash_name, signer))

    async def close(self) -> None:
        """Cancel the fetches in flight and those waiting for one."""
        await self._fetches.close()

    def take_read_counts(self) -> dict[tuple[str, str], int]:
        """Fetch batches by (target, reason) since the last call (all 0 without a read_dsn)."""
        counts = self._read_counts
        self._read_counts = dict.fromkeys(counts, 0)
        return counts

    async def _fetch_batch(self, keys: Sequence[FetchKey]) -> list[Lookup]:
        params = {
            "issuers": text_array([k[0] for k in keys]),
            "serials": text_array([k[1] for k in keys]),
            "hash_algs": text_array([k[2] for k in keys]),
            "signers": text_array([k[3] for k in keys]),
        }
        if self._reader is None:
            rows = await self._connector.query("fetch", params)
        else:
            rows = await self._fenced_fetch(self._reader, params)
        lookups = []
        for row in rows:
            status = row_status(row[1:5])
            stored = None
            if row[5] is not None:
                stored = Entry(bytes(row[5]), SERVED_BY_VALUE[row[6]], self._windows[row[7], row[8]])
            lookups.append(Lookup(status, stored))
        return lookups

    async def _fenced_fetch(self, reader: Connector, params: dict[str, str]) -> list[Row]:
        reason = "pending"
        target = self.read_target
        if target is not None and not target.in_use:
            reason = target.state.value  # lagging or down: the next check may put it back
        elif not self.fence.pending:
            if self._seen_replay < self.fence.lsn:
                # Known to be behind the fence (just after a notification, say): ask both at
                # once rather than one after the other, and take the standby's if it caught up.
                return await self._raced_fetch(reader, params)
            try:
                replayed, rows = await reader.replayed_query("fetch", params)
            except DatabaseBusy:
                raise  # the deadline is spent: tryLater now, not a second wait on the primary
            except SourceUnavailable as exc:
                reason = "read_dsn_failed"
                if target is not None:
                    target.failed(str(exc))  # out until a check finds it answering
            except StoreError:
                reason = "read_dsn_failed"  # a query cancelled by a conflict with recovery, say
            else:
                self._saw(replayed)
                # The fence as it is now, not as it was when the read began: it only rises.
                if self.fence.admits(replayed):
                    self._read_counts["read_dsn", "fresh"] += 1
                    return rows
                reason = "pending" if self.fence.pending else "behind"
        self._read_counts["primary", reason] += 1
        # The primary or nothing: its failure is the caller's tryLater.
        return await self._connector.query("fetch", params)

    async def _raced_fetch(self, reader: Connector, params: dict[str, str]) -> list[Row]:
        """The standby's and the primary's answer, asked together: the standby's if the fence
        admits it, else the primary's (whose failure is the caller's tryLater)."""
        standby, primary = await asyncio.gather(
            reader.replayed_query("fetch", params), self._connector.query("fetch", params), return_exceptions=True
        )
        if isinstance(standby, BaseException):
            if isinstance(standby, SourceUnavailable) and self.read_target is not None:
                self.read_target.failed(str(standby))
            if not isinstance(standby, OcspdError):
                raise standby  # cancelled, or a bug
        else:
            replayed, rows = standby
            self._saw(replayed)
            if self.fence.admits(replayed):
                self._read_counts["read_dsn", "fresh"] += 1
                return rows
        self._read_counts["primary", "behind"] += 1
        if isinstance(primary, BaseException):
            raise primary
        return primary

    def _saw(self, replayed: int | None) -> None:
        """How far the standby had replayed at a read (None: not in recovery, current)."""
        self._seen_replay = max(self._seen_replay, FAR_AHEAD if replayed is None else replayed)
