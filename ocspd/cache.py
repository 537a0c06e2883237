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
import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

from ocspd.memo import Memo
from ocspd.protocol import http_date
from ocspd.status import Served

T = TypeVar("T")

# Python-object bytes of one cached entry beyond its DER (Entry object, bytes
# header and digest, key, the LRU's dict slot and list node), counted against
# max_bytes; measured by bench/memory.py.
ENTRY_OVERHEAD = 280


class Stamp:
    """A point in time with its HTTP-date text."""

    __slots__ = ("http", "ts")

    def __init__(self, ts: float, http: str) -> None:
        self.ts = ts
        self.http = http


class Window:
    """thisUpdate and nextUpdate of a response, shared by every entry signed in the same second.

    Responses signed in the same second carry the same times, so interning
    these keeps the per-entry cost of the times and date headers at a pointer.
    """

    __slots__ = ("next", "refresh_at", "this")

    def __init__(self, this: Stamp, next_: Stamp) -> None:
        self.this = this
        self.next = next_
        # Refreshed when less than half of the validity remains (SPEC §2).
        self.refresh_at = (this.ts + next_.ts) / 2


WINDOWS_MEMO = 4096  # distinct windows remembered; entries keep their own references


def _window(times: tuple[float, float]) -> Window:
    this_ts, next_ts = times
    this_text = http_date(dt.datetime.fromtimestamp(this_ts, dt.UTC))
    next_text = http_date(dt.datetime.fromtimestamp(next_ts, dt.UTC))
    return Window(Stamp(this_ts, this_text), Stamp(next_ts, next_text))


def windows() -> Memo[tuple[float, float], Window]:
    """A memo of interned Windows: ``memo[(this_ts, next_ts)]`` for two POSIX timestamps.

    Each maker of entries owns one (the memory tier, the store's reads), so
    that the entries it makes in one second share one Window.
    """
    return Memo(WINDOWS_MEMO, _window)


DIGEST = 32  # SHA-256 of the DER, kept after it in the same bytes object


class Entry:
    """A signed response plus what the HTTP layer needs to serve it as is.

    Kept small (SPEC §7: <= 300 bytes above the DER): the DER and its SHA-256
    share one bytes object, the times are an interned Window (from the
    maker's ``windows()`` memo), and what only the write-back needs (status
    version, signer) is passed beside it.
    """

    __slots__ = ("blob", "status", "window")

    def __init__(self, der: bytes, status: Served, window: Window) -> None:
        self.blob = der + hashlib.sha256(der).digest()
        self.status = status
        self.window = window

    @property
    def der(self) -> bytes:
        return self.blob[:-DIGEST]

    @property
    def size(self) -> int:
        """Bytes accounted against max_bytes (DER plus per-entry overhead)."""
        return len(self.blob) - DIGEST + ENTRY_OVERHEAD

    @property
    def this_update(self) -> float:
        return self.window.this.ts

    @property
    def next_update(self) -> float:
        return self.window.next.ts

    @property
    def refresh_at(self) -> float:
        return self.window.refresh_at

    @property
    def etag(self) -> str:
        """Strong ETag: the hex SHA-256 of the body (RFC 9919 §6)."""
        return '"' + self.blob[-DIGEST:].hex() + '"'

    def __repr__(self) -> str:
        return f"<Entry {self.status.value} {len(self.blob) - DIGEST}B>"


class MemoryTier:
    """Signed responses in memory, least recently used first out; time comes from ``clock``.

    Bounded by entry count and by bytes (DER plus ENTRY_OVERHEAD). One
    OrderedDict is the whole structure: a hit is a dict lookup and a
    move_to_end, both in C. (cachetools' LRUCache keeps two more mappings per
    entry, which doubled the per-entry memory; see bench/README.md.)
    An entry past its refresh point is never returned; it is dropped when
    met, and ``sweep`` drops such entries from the cold end.
    """

    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float]) -> None:
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        # The Windows of the entries made for this tier (by the responder).
        self.windows = windows()

    def get(self, key: Hashable) -> Entry | None:
        """The entry for key, or None if absent or past its refresh point."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.window.refresh_at:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: Entry) -> None:
        """Store entry unless it is already past its refresh point; evict to stay in bounds."""
        if self._clock() >= entry.refresh_at:
            return
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        entries[key] = entry
        self._bytes += entry.size
        while len(entries) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = entries.popitem(last=False)
            self._bytes -= evicted.size

    def _remove(self, key: Hashable) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True

    def drop(self, keys: Iterable[Hashable]) -> int:
        """Remove these keys; returns how many were present."""
        return sum(1 for key in keys if self._remove(key))

    def clear(self) -> int:
        """Remove everything; returns how many entries there were."""
        count = len(self._entries)
        self._entries.clear()
        self._bytes = 0
        return count

    def sweep(self, limit: int = 10_000) -> int:
        """Drop expired entries among the ``limit`` least recently used; returns how many."""
        now = self._clock()
        expired = [
            key for key, entry in itertools.islice(self._entries.items(), limit) if now >= entry.window.refresh_at
        ]
        return self.drop(expired)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        """A snapshot of the keys held (expired ones included)."""
        return list(self._entries)

    @property
    def bytes(self) -> int:
        """Bytes accounted against max_bytes (DER plus per-entry overhead)."""
        return self._bytes


class Flight(Generic[T]):
    """One production in progress; ``stale`` is set when its key is invalidated.

    ``future`` exists only once a second caller waits: most misses have no
    waiter, and a future per miss (with the running-loop lookup it takes) was
    measurable on the cold-miss path.
    """

    __slots__ = ("future", "stale")

    def __init__(self) -> None:
        self.stale = False
        self.future: asyncio.Future[T] | None = None


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Singleflight(Generic[T]):
    """Per-key deduplication of concurrent work.

    The first caller for a key (the leader) runs the work itself, in its own
    task: no task is created for the common case of a miss nobody else waits
    for. Later callers wait on a future the leader resolves. If the leader is
    cancelled (its client went away), a waiter takes over and runs the work;
    the table entry is removed when the work ends, however it ends.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, Flight[T]] = {}

    async def do(self, key: Hashable, work: Callable[[Flight[T]], Awaitable[T]]) -> T:
        """Run ``work`` for key unless a run is already in flight; share its result."""
        while True:
            current = self._flights.get(key)
            if current is None:
                break
            future = current.future
            if future is None:
                future = current.future = asyncio.get_running_loop().create_future()
            try:
                # shield: a waiter that is cancelled must not cancel the others' result.
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                if future.cancelled() and not _cancelling():
                    continue  # the leader was cancelled, not us: take over
                raise
        flight: Flight[T] = Flight()
        self._flights[key] = flight
        try:
            result = await work(flight)
        except asyncio.CancelledError:
            if flight.future is not None:
                flight.future.cancel()
            raise
        except BaseException as exc:
            if flight.future is not None:
                flight.future.set_exception(exc)
                flight.future.exception()  # retrieved: a waiter may be gone already
            raise
        else:
            if flight.future is not None:
                flight.future.set_result(result)
            return result
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]

    def invalidate(self, keys: Iterable[Hashable]) -> None:
        """Mark the flights of these keys stale: their results must not be kept."""
        for key in keys:
            current = self._flights.get(key)
            if current is not None:
                current.stale = True

    def invalidate_all(self) -> None:
        """Mark every flight stale (e.g. notifications may have been missed)."""
        for flight in self._flights.values():
            flight.stale = True

    def __len__(self) -> int:
        return len(self._flights)

    def keys(self) -> list[Hashable]:
        """A snapshot of the keys in flight."""
        return list(self._flights)

    async def drain(self) -> None:
        """Wait for every flight in progress to end (used at shutdown and in tests)."""
        loop = asyncio.get_running_loop()
        futures = []
        for flight in self._flights.values():
            if flight.future is None:
                flight.future = loop.create_future()
            futures.append(flight.future)
        if futures:
            await asyncio.wait(futures)
