"""The PostgreSQL store: status source, shared response tier, migrations.

The only place (with ``listener`` and ``pool``) that talks to psycopg; driver
errors are translated here, at the edge, into ``SourceUnavailable`` (the
database cannot be reached: the caller answers tryLater), ``DatabaseBusy``
(it did not answer in time: tryLater too, without a second try) or
``StoreError`` (the database refused what we asked: a bug or bad input).

Every operation has a deadline (``timeout``). When it passes, the query is
cancelled on the server too (psycopg sends a cancel request when its task is
cancelled), so a backend never goes on waiting for a client that has left.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors

from ocspd.cache import Entry
from ocspd.exceptions import DatabaseBusy, RuleViolation, SchemaOutdated, SourceUnavailable, StoreError
from ocspd.logs import event
from ocspd.sources import Lookup
from ocspd.status import UNKNOWN, CertStatus, Status
from ocspd.store.batching import Batcher
from ocspd.store.pool import Pool
from ocspd.store.queries import migrations, queries
from ocspd.store.values import number_array, reason_flag, serial_hex, session_dsn, text_array

log = logging.getLogger("ocspd.store")

# Seconds a database operation (connect and retry included) may take before
# the caller gets tryLater instead of waiting on; the request path's comes
# from ``[database] timeout``.
OPERATION_TIMEOUT = 5.0
# Seconds a readiness check waits for the database.
PING_BUDGET = 1.0
# Migrations take their time (an index build); connecting still may not.
MIGRATION_CONNECT_TIMEOUT = 60.0
POOL_MAX = 10
# Write-backs queued within this many seconds, or this many of them, go to
# the database as one statement (a statement per miss cost more CPU, here and
# in the server, than the signature). Beyond MAX_PENDING queued or being
# written (the database is slow or down) new ones are dropped: the response
# tier is a cache.
WRITE_BEHIND_SECONDS = 0.01
WRITE_BEHIND_BATCH = 256
WRITE_BEHIND_MAX_PENDING = 10_000
MIGRATION_LOCK = 0x0C5BD  # pg_advisory_lock key serialising `ocspd db migrate`
RULE_VIOLATION = "23R01"  # SQLSTATE of the revocation rules (sql/migrations/0003_revocation_rules.sql)


def _status(row: Sequence[Any]) -> CertStatus:
    """CertStatus from (status, revoked_at, reason, version) columns."""
    status, revoked_at, reason, version = row[:4]
    if status is None:
        return UNKNOWN
    if status == "revoked":
        return CertStatus(Status.REVOKED, revoked_at, reason_flag(reason), version)
    return CertStatus(Status.GOOD, None, None, version)


# (serial, CertID hash name, signed response, status version it was signed from)
StoreItem = tuple[int, str, Entry, int]
# (issuer id, serial hex, CertID hash name, signer fingerprint)
FetchKey = tuple[str, str, str, str]
# (issuer id, signer fingerprint, item)
StoreRequest = tuple[str, str, StoreItem]


@dataclass(frozen=True, slots=True)
class DueRow:
    """A stored response due for re-signing, with its certificate's current status."""

    issuer_id: str
    serial: int
    hash_alg: str
    status: CertStatus


class Store:
    """A pool of connections to the status database and the queries on it."""

    def __init__(
        self, dsn: str, *, maxsize: int = POOL_MAX, timeout: float = OPERATION_TIMEOUT,
        lock_timeout: float | None = None, statement_timeout: float | None = None,
    ) -> None:
        """``lock_timeout`` and ``statement_timeout`` (seconds) are set on the server for
        the pool's connections: a query waiting on a lock, or running too long, then
        gives up there, and its backend is free again, whatever happened to the client.
        A ``dsn`` libpq cannot read is a StoreError here, not at the first query."""
        self.dsn = dsn
        self._pool_dsn = session_dsn(dsn, lock_timeout=lock_timeout, statement_timeout=statement_timeout)
        self._maxsize = maxsize
        self._timeout = timeout
        self._pool: Pool | None = None
        self._q = queries()
        # Concurrent misses share round trips (see batching.py).
        self._fetches: Batcher[FetchKey, Lookup] = Batcher(self._fetch_batch, max_running=maxsize)
        # Write-backs are off the request path: queued, and sent in batches.
        self._writes: list[StoreRequest] = []
        self._write_timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()
        self._unsent = 0  # queued or being written
        self._write_counts = {"written": 0, "refused": 0, "failed": 0, "dropped": 0}

    async def open(self) -> None:
        """Create the pool. Connects lazily, so a database that is down now is no start-up error."""
        self._pool = Pool(self._pool_dsn, size=self._maxsize)

    async def close(self) -> None:
        """Send what is queued (within the operation timeout), then close the pool."""
        await self._fetches.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), self._timeout)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def _cursor(self) -> AsyncIterator[psycopg.AsyncCursor[tuple[Any, ...]]]:
        """A cursor on a pooled connection, with driver errors translated.

        No deadline of its own: the caller's (``query``) covers the retry too.
        """
        if self._pool is None:
            raise SourceUnavailable("database pool is not open")
        try:
            async with self._pool.connection() as conn, conn.cursor() as cur:
                yield cur
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
            # lock_timeout, statement_timeout (or a cancel by someone else) on the server.
            raise DatabaseBusy(f"database busy: {_one_line(exc)}") from None
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction):
            # Not an outage of the server, but this replica cannot answer either.
            raise SchemaOutdated() from None
        except psycopg.IntegrityError as exc:
            if exc.sqlstate == RULE_VIOLATION:
                raise RuleViolation(" ".join((exc.diag.message_primary or str(exc)).split())) from None
            raise StoreError(f"database refused the request: {_one_line(exc)}") from None
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            raise SourceUnavailable(f"database unavailable: {_one_line(exc)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"database refused the request: {_one_line(exc)}") from None

    @contextlib.asynccontextmanager
    async def _deadline(self) -> AsyncIterator[None]:
        """The operation's deadline: past it, DatabaseBusy (the task's query is cancelled on the server)."""
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except TimeoutError:
            raise DatabaseBusy(f"database did not answer within {self._timeout:g}s") from None

    async def query(self, name: str, params: dict[str, Any], *, retry: bool = True) -> list[tuple[Any, ...]]:
        """Run a named query of ``sql/queries.sql``; one retry when a pooled connection turns out dead.

        Both tries together are bounded by the operation's deadline.
        """
        async with self._deadline():
            for attempt in (1, 2):
                try:
                    async with self._cursor() as cur:
                        await cur.execute(self._q[name], params)
                        return await cur.fetchall() if cur.description else []
                except DatabaseBusy:
                    raise  # asking again would wait as long again: the answer is tryLater now
                except SourceUnavailable:
                    # A connection that died while pooled (server restart) fails on
                    # first use; a fresh one may well work.
                    if attempt == 2 or not retry:
                        raise
        raise AssertionError("unreachable")

    # -- the request path ------------------------------------------------------------

    async def fetch(self, issuer_id: str, serial: int, hash_name: str, signer: str) -> Lookup:
        """Status and (if current and signed by ``signer``) the stored response of one CertID.

        One round trip, shared with the other fetches of the same loop turn.
        """
        return await self._fetches.submit((issuer_id, serial_hex(serial), hash_name, signer))

    async def _fetch_batch(self, keys: Sequence[FetchKey]) -> list[Lookup]:
        rows = await self.query(
            "fetch",
            {
                "issuers": text_array([k[0] for k in keys]),
                "serials": text_array([k[1] for k in keys]),
                "hash_algs": text_array([k[2] for k in keys]),
                "signers": text_array([k[3] for k in keys]),
            },
        )
        lookups = []
        for row in rows:
            status = _status(row[1:5])
            stored = Entry.at(bytes(row[5]), row[6], row[7], row[8]) if row[5] is not None else None
            lookups.append(Lookup(status, stored))
        return lookups

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
        self._writes.append((issuer_id, signer, (serial, hash_name, entry, version)))
        if len(self._writes) >= WRITE_BEHIND_BATCH:
            self._flush_writes()
        elif self._write_timer is None:
            loop = asyncio.get_running_loop()
            self._write_timer = loop.call_later(WRITE_BEHIND_SECONDS, self._flush_writes)

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

    async def _write(self, batch: Sequence[StoreRequest]) -> None:
        groups: dict[tuple[str, str], list[StoreItem]] = {}
        for issuer_id, signer, item in batch:
            groups.setdefault((issuer_id, signer), []).append(item)
        try:
            for (issuer_id, signer), items in groups.items():
                try:
                    written = await self.store_many(issuer_id, signer, items)
                except (SourceUnavailable, StoreError) as exc:
                    self._write_counts["failed"] += len(items)
                    event(log, "write_back_failed", logging.WARNING, responses=len(items), error=str(exc))
                else:
                    self._write_counts["written"] += written
                    self._write_counts["refused"] += len(items) - written
        finally:
            self._unsent -= len(batch)

    def take_write_back_counts(self) -> dict[str, int]:
        """Write-backs by result (written, refused, failed, dropped) since the last call."""
        counts = self._write_counts
        self._write_counts = dict.fromkeys(counts, 0)
        return counts

    async def flush(self) -> None:
        """Send the queued write-backs now and wait for every write-back in flight."""
        self._flush_writes()
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)

    async def store_many(self, issuer_id: str, signer: str, items: Sequence[StoreItem]) -> int:
        """Conditional write-back of responses signed by ``signer``; returns how many were written."""
        return len(await self.query("store_responses", _store_params(issuer_id, signer, items)))

    async def ping(self, budget: float = PING_BUDGET) -> None:
        """Raise SourceUnavailable unless the database answers, SchemaOutdated unless it has our schema,
        DatabaseBusy unless it answers within ``budget`` seconds (a health check must answer fast
        even while the pool's connections all wait on a lock).

        A schema newer than this code is fine: a replica upgraded first migrated it.
        """
        try:
            async with asyncio.timeout(min(budget, self._timeout)):
                rows = await self.query("schema_version", {}, retry=False)
        except TimeoutError:
            raise DatabaseBusy(f"database did not answer within {min(budget, self._timeout):g}s") from None
        have, need = rows[0][0], migrations()[-1].version
        if have < need:
            raise SchemaOutdated(have, need)

    # -- shared refresh and presign --------------------------------------------------------

    async def refresh_due(
        self,
        signers: Mapping[str, str],
        sign: Callable[[DueRow], Entry],
        *,
        lead: dt.timedelta,
        limit: int,
    ) -> int:
        """Re-sign up to ``limit`` stored responses due within ``lead``; returns how many.

        Claimed rows are locked (``SKIP LOCKED``) until this transaction ends, so
        replicas refreshing at once share the work without doing any row twice.
        """
        async with self._deadline(), self._cursor() as cur, cur.connection.transaction():
            await cur.execute(self._q["claim_refresh"], {"lead": lead, "issuers": list(signers), "limit": limit})
            due = [DueRow(r[0], int(r[1], 16), r[2], _status(r[3:7])) for r in await cur.fetchall()]
            by_issuer: dict[str, list[StoreItem]] = {}
            for row in due:
                item = (row.serial, row.hash_alg, sign(row), row.status.version)
                by_issuer.setdefault(row.issuer_id, []).append(item)
            for issuer_id, items in by_issuer.items():
                await cur.execute(self._q["store_responses"], _store_params(issuer_id, signers[issuer_id], items))
        return len(due)

    async def presign_batch(
        self, issuer_id: str, hash_alg: str, signer: str, after: str, limit: int
    ) -> list[tuple[str, CertStatus]]:
        """Certificates after serial ``after`` that lack a fresh stored response signed by ``signer``."""
        rows = await self.query(
            "presign_batch",
            {"issuer": issuer_id, "hash_alg": hash_alg, "signer": signer, "after": after, "limit": limit},
        )
        return [(r[0], _status(r[1:5])) for r in rows]

    # -- migrations --------------------------------------------------------------------

    async def migrate(self, progress: Callable[[str], Awaitable[None] | None] | None = None) -> list[str]:
        """Apply the migrations not yet applied; returns their names.

        Idempotent, and safe when several replicas run it at once: a session
        advisory lock serialises them, and each migration commits with its
        bookkeeping row in one transaction.
        """
        applied: list[str] = []
        try:
            async with asyncio.timeout(MIGRATION_CONNECT_TIMEOUT):
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            async with conn, conn.cursor() as cur:
                await cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
                try:
                    await cur.execute(
                        "CREATE TABLE IF NOT EXISTS ocspd_migrations ("
                        " version integer PRIMARY KEY, name text NOT NULL,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                    await cur.execute("SELECT version FROM ocspd_migrations")
                    done = {row[0] for row in await cur.fetchall()}
                    for migration in migrations():
                        if migration.version in done:
                            continue
                        # The migration and its bookkeeping row commit together or not at all.
                        async with conn.transaction():
                            await cur.execute(migration.sql)
                            await cur.execute(
                                "INSERT INTO ocspd_migrations (version, name) VALUES (%s, %s)",
                                (migration.version, migration.name),
                            )
                        applied.append(migration.name)
                        if progress is not None:
                            result = progress(migration.name)
                            if result is not None:
                                await result
                finally:
                    await cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        except (TimeoutError, psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            raise SourceUnavailable(f"database unavailable: {_one_line(exc)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"migration failed: {_one_line(exc)}") from None
        return applied


def _store_params(issuer_id: str, signer: str, items: Sequence[StoreItem]) -> dict[str, Any]:
    ders = [e.der for _, _, e, _ in items]
    starts, at = [], 1
    for der in ders:
        starts.append(at)
        at += len(der)
    return {
        "issuer": issuer_id,
        "signer": signer,
        "serials": text_array([serial_hex(serial) for serial, _, _, _ in items]),
        "hash_algs": text_array([hash_alg for _, hash_alg, _, _ in items]),
        "ders": b"".join(ders),
        "der_ats": number_array(starts),
        "der_lens": number_array([len(der) for der in ders]),
        "statuses": text_array([e.status for _, _, e, _ in items]),
        # Epoch numbers, turned into timestamptz by the query.
        "this_updates": number_array([e.this_update for _, _, e, _ in items]),
        "next_updates": number_array([e.next_update for _, _, e, _ in items]),
        "refresh_ats": number_array([e.refresh_at for _, _, e, _ in items]),
        "versions": number_array([version for _, _, _, version in items]),
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
