"""The write-behind queue: responses signed on a miss go to the response tier off the request path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ocspd.cache import Entry
from ocspd.exceptions import SourceUnavailable, StoreError
from ocspd.logs import event
from ocspd.store.responses import Responses, SignedResponse

log = logging.getLogger("ocspd.store")

# Write-backs queued within this many seconds, or this many of them, go to
# the database as one statement (a statement per miss cost more CPU, here and
# in the server, than the signature). Beyond MAX_PENDING queued or being
# written (the database is slow or down) new ones are dropped: the response
# tier is a cache.
WRITE_BEHIND_SECONDS = 0.01
WRITE_BEHIND_BATCH = 256
WRITE_BEHIND_MAX_PENDING = 10_000

# (issuer id, signer fingerprint, response)
WriteRequest = tuple[str, str, SignedResponse]


class WriteBehind:
    """Queued conditional write-backs, sent in batches by ``Responses.store_many``, counted by result."""

    def __init__(self, responses: Responses) -> None:
        self._responses = responses
        self._writes: list[WriteRequest] = []
        self._write_timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()
        self._unsent = 0  # queued or being written
        self._write_counts = {"written": 0, "refused": 0, "failed": 0, "dropped": 0}

    def write_back(self, issuer_id: str, serial: int, hash_name: str, entry: Entry, version: int, signer: str) -> None:
        """Queue a conditional write-back: it goes out with the others of the next few milliseconds.

        The database keeps it only while the certificate still has status
        ``version`` (``store_responses``), so a response signed from a status
        that has changed since is never stored, however late it arrives.
        Answers for serials the table does not list (version 0) are never
        stored: a certificate inserted later cannot race with them here, and
        its NOTIFY drops them from memory.
        """
        if version == 0:
            return
        if self._unsent >= WRITE_BEHIND_MAX_PENDING:
            # The database is slow or gone: this is a cache, not a journal.
            self._write_counts["dropped"] += 1
            return
        self._unsent += 1
        self._writes.append((issuer_id, signer, SignedResponse(serial, hash_name, entry, version)))
        if len(self._writes) >= WRITE_BEHIND_BATCH:
            self._flush_writes()
        elif self._write_timer is None:
            loop = asyncio.get_running_loop()
            self._write_timer = loop.call_later(WRITE_BEHIND_SECONDS, self._flush_writes)

    def take_counts(self) -> dict[str, int]:
        """Write-backs by result (written, refused, failed, dropped) since the last call."""
        counts = self._write_counts
        self._write_counts = dict.fromkeys(counts, 0)
        return counts

    async def flush(self) -> None:
        """Send the queued write-backs now and wait for every write-back in flight."""
        self._flush_writes()
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)

    def _flush_writes(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if not self._writes:
            return
        batch, self._writes = self._writes, []
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, batch: Sequence[WriteRequest]) -> None:
        groups: dict[tuple[str, str], list[SignedResponse]] = {}
        for issuer_id, signer, item in batch:
            groups.setdefault((issuer_id, signer), []).append(item)
        try:
            for (issuer_id, signer), items in groups.items():
                try:
                    written = await self._responses.store_many(issuer_id, signer, items)
                except (SourceUnavailable, StoreError) as exc:
                    self._write_counts["failed"] += len(items)
                    event(log, "write_back_failed", logging.WARNING, responses=len(items), error=str(exc))
                else:
                    self._write_counts["written"] += written
                    self._write_counts["refused"] += len(items) - written
        finally:
            self._unsent -= len(batch)
