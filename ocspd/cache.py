"""The memory tier and per-key singleflight.

``MemoryTier`` holds signed responses (``Entry``) bounded by entry count and
bytes; an entry is never returned past its refresh point, which is never
later than its nextUpdate. ``Singleflight`` makes N concurrent misses for one
key share one production; each flight carries a ``stale`` flag that an
invalidation sets, so a production that read the status before the
invalidation knows not to write its result back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

from ocspd.protocol import etag_of, http_date

T = TypeVar("T")

# Python-object overhead of one cached entry beyond its DER (key tuple, Entry,
# header strings, dict slots in the LRU), used for the max_bytes budget.
ENTRY_OVERHEAD = 400


class Entry:
    """A signed response plus what the HTTP layer needs to serve it as is."""

    __slots__ = (
        "der",
        "etag",
        "expires",
        "last_modified",
        "next_update",
        "refresh_at",
        "signer",
        "status",
        "this_update",
        "version",
    )

    def __init__(
        self,
        der: bytes,
        status: str,
        this_update: dt.datetime,
        next_update: dt.datetime,
        version: int = 0,
        signer: str = "",
    ) -> None:
        self.der = der
        self.signer = signer  # fingerprint of the key that signed it (shared string)
        self.status = status
        self.this_update = this_update.timestamp()
        self.next_update = next_update.timestamp()
        # Refreshed when less than half of the validity remains (SPEC §2).
        self.refresh_at = self.this_update + (self.next_update - self.this_update) / 2
        self.version = version
        self.etag = etag_of(der)
        self.last_modified = http_date(this_update)
        self.expires = http_date(next_update)

    def __repr__(self) -> str:
        return f"<Entry {self.status} v{self.version} {len(self.der)}B>"


class _Lru(LRUCache[Hashable, Entry]):
    """An LRU bounded by bytes (maxsize) and also by entry count."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=_size_of)
        self.max_entries = max_entries

    def __setitem__(self, key: Hashable, value: Entry) -> None:
        while len(self) >= self.max_entries and key not in self:
            self.popitem()
        super().__setitem__(key, value)


def _size_of(entry: Entry) -> int:
    return len(entry.der) + ENTRY_OVERHEAD


class MemoryTier:
    """Signed responses in memory, by key; time comes from ``clock``."""

    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float]) -> None:
        self._lru = _Lru(max_entries, max_bytes)
        self._clock = clock

    def get(self, key: Hashable) -> Entry | None:
        """The entry for key, or None if absent or past its refresh point."""
        entry = self._lru.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.refresh_at:
            del self._lru[key]
            return None
        return entry

    def put(self, key: Hashable, entry: Entry) -> None:
        """Store entry unless it is already past its refresh point."""
        if self._clock() < entry.refresh_at:
            self._lru[key] = entry

    def drop(self, keys: Iterable[Hashable]) -> int:
        """Remove these keys; returns how many were present."""
        dropped = 0
        for key in keys:
            if self._lru.pop(key, None) is not None:
                dropped += 1
        return dropped

    def clear(self) -> int:
        """Remove everything; returns how many entries there were."""
        count = len(self._lru)
        self._lru.clear()
        return count

    def __len__(self) -> int:
        return len(self._lru)

    def keys(self) -> list[Hashable]:
        """A snapshot of the keys held (expired ones included)."""
        return list(self._lru.keys())

    def __contains__(self, key: Hashable) -> bool:
        return self.get(key) is not None

    @property
    def bytes(self) -> int:
        """Bytes accounted against max_bytes (DER plus per-entry overhead)."""
        return int(self._lru.currsize)


class Flight:
    """One production in progress; ``stale`` is set when its key is invalidated."""

    __slots__ = ("stale",)

    def __init__(self) -> None:
        self.stale = False


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Singleflight(Generic[T]):
    """Per-key deduplication of concurrent work.

    The work runs in a task of its own, so a caller that is cancelled (its
    client went away) neither cancels it for the others nor leaves an entry
    behind; the table entry is removed when the work ends, however it ends.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, tuple[Flight, asyncio.Task[T]]] = {}

    async def do(self, key: Hashable, work: Callable[[Flight], Awaitable[T]]) -> T:
        """Run ``work`` for key unless a run is already in flight; share its result."""
        current = self._flights.get(key)
        if current is None:
            flight = Flight()
            task = asyncio.ensure_future(self._run(key, flight, work))
            # If every caller was cancelled nobody reads the outcome; mark it
            # retrieved so asyncio does not log it as lost.
            task.add_done_callback(_retrieve)
            self._flights[key] = (flight, task)
        else:
            task = current[1]
        return await asyncio.shield(task)

    async def _run(self, key: Hashable, flight: Flight, work: Callable[[Flight], Awaitable[T]]) -> T:
        try:
            return await work(flight)
        finally:
            current = self._flights.get(key)
            if current is not None and current[0] is flight:
                del self._flights[key]

    def invalidate(self, keys: Iterable[Hashable]) -> None:
        """Mark the flights of these keys stale: their results must not be kept."""
        for key in keys:
            current = self._flights.get(key)
            if current is not None:
                current[0].stale = True

    def invalidate_all(self) -> None:
        """Mark every flight stale (e.g. notifications may have been missed)."""
        for flight, _ in self._flights.values():
            flight.stale = True

    def __len__(self) -> int:
        return len(self._flights)

    def keys(self) -> list[Hashable]:
        """A snapshot of the keys in flight."""
        return list(self._flights)

    async def drain(self) -> None:
        """Wait for every flight in progress to end (used at shutdown and in tests)."""
        tasks: list[asyncio.Task[Any]] = [t for _, t in self._flights.values()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
