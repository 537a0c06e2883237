"""The connector: the store's one way to the database, and its one translation of driver errors.

Every role of the store (the request path's reads, the write-behind queue,
the admin operations, the migrator) reaches PostgreSQL through here, and
meets driver errors only as ocspd's: ``SourceUnavailable`` (the database
cannot be reached: the caller answers tryLater), ``DatabaseBusy`` (it did
not answer in time: tryLater too, without a second try), ``SchemaOutdated``
(``ocspd db migrate`` was not run), ``RuleViolation`` (a revocation rule
refused the write) or ``StoreError`` (the database refused what we asked: a
bug or bad input).

Every operation has a deadline (``timeout``). When it passes, the query is
cancelled on the server too (psycopg sends a cancel request when its task is
cancelled), so a backend never goes on waiting for a client that has left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import psycopg
import psycopg.errors

from ocspd.exceptions import DatabaseBusy, OcspdError, RuleViolation, SchemaOutdated, SourceUnavailable, StoreError
from ocspd.store.pool import Pool
from ocspd.store.queries import queries
from ocspd.store.values import primary_dsn, session_dsn

# Seconds a database operation (connect and retry included) may take before
# the caller gets tryLater instead of waiting on; the request path's comes
# from ``[database] timeout``.
OPERATION_TIMEOUT = 5.0
POOL_MAX = 10
# PgBouncer (1.18, Debian 12's) refuses a connection whose startup packet sets
# ``options``, which is where the session's lock_timeout and statement_timeout go.
POOLER_REFUSAL = "unsupported startup parameter: options"
POOLER_HINT = (
    'a pooler such as PgBouncer: set [database] lock_timeout and statement_timeout to "0" and set them on '
    "the database or role instead (README, Scaling out)"
)
RULE_VIOLATION = "23R01"  # SQLSTATE of the revocation rules (ocspd/sql/migrations/0003_revocation_rules.sql)

Cursor = psycopg.AsyncCursor[tuple[Any, ...]]
Connection = psycopg.AsyncConnection[tuple[Any, ...]]
Row = tuple[Any, ...]


def translate(exc: psycopg.Error | OSError, *, migration: bool = False) -> OcspdError:
    """ocspd's exception for a driver error (or an OSError beneath the driver).

    A ``migration`` either cannot reach the database or failed: the request
    path's finer readings (busy, schema outdated, a revocation rule) are not
    what happened to a schema change.
    """
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
        if not migration and isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
            # lock_timeout, statement_timeout (or a cancel by someone else) on the server.
            return DatabaseBusy(f"database busy: {one_line(exc)}")
        message = one_line(exc)
        if POOLER_REFUSAL in message:
            message += f" ({POOLER_HINT})"
        return SourceUnavailable(f"database unavailable: {message}")
    if migration:
        hint = ""
        if isinstance(exc, psycopg.errors.InsufficientPrivilege) and "schema public" in str(exc):
            # PostgreSQL 15: only the database's owner may create in its public schema.
            hint = " (the database must be owned by the role that migrates it: createdb -O <role> <database>)"
        return StoreError(f"migration failed: {one_line(exc)}{hint}")
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
        # Not an outage of the server, but this replica cannot answer either.
        return SchemaOutdated()
    if isinstance(exc, psycopg.IntegrityError) and exc.sqlstate == RULE_VIOLATION:
        return RuleViolation(" ".join((exc.diag.message_primary or str(exc)).split()))
    return StoreError(f"database refused the request: {one_line(exc)}")


@contextlib.contextmanager
def translated(*, migration: bool = False) -> Iterator[None]:
    """Driver errors raised in the block come out as :func:`translate` says."""
    try:
        yield
    except (psycopg.Error, OSError) as exc:
        raise translate(exc, migration=migration) from exc


class Connector:
    """A pool of connections to the status database: cursors under a deadline, named queries."""

    def __init__(
        self,
        dsn: str,
        *,
        maxsize: int = POOL_MAX,
        timeout: float = OPERATION_TIMEOUT,
        lock_timeout: float | None = None,
        statement_timeout: float | None = None,
        what: str = "[database] dsn",
        primary: bool = True,
    ) -> None:
        """``lock_timeout`` and ``statement_timeout`` (seconds) are set on the server for
        the pool's connections: a query waiting on a lock, or running too long, then
        gives up there, and its backend is free again, whatever happened to the client.
        A ``dsn`` libpq cannot read is a StoreError (naming ``what``) here, not at the
        first query. The ``primary``'s connections never settle on a hot standby
        (``values.primary_dsn``); a read pool's (``primary=False``) may."""
        self.dsn = dsn
        self.maxsize = maxsize
        self.timeout = timeout
        self._pool_dsn = session_dsn(
            dsn, lock_timeout=lock_timeout, statement_timeout=statement_timeout, what=what, primary=primary
        )
        self._pool: Pool | None = None
        self._queries = queries()

    async def open(self) -> None:
        """Create the pool. Connects lazily, so a database that is down now is no start-up error."""
        self._pool = Pool(self._pool_dsn, size=self.maxsize)

    async def close(self) -> None:
        """Close the pool (its connections lent out close when they come back)."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def sql(self, name: str) -> str:
        """The text of the named query ``name`` of ``ocspd/sql/queries.sql``."""
        return self._queries[name]

    @contextlib.asynccontextmanager
    async def cursor(self) -> AsyncIterator[Cursor]:
        """A cursor on a pooled connection, with driver errors translated.

        No deadline of its own: the caller's (``deadline``) covers a retry too.
        """
        if self._pool is None:
            raise SourceUnavailable("database pool is not open")
        with translated():
            async with self._pool.connection() as conn, conn.cursor() as cur:
                yield cur

    @contextlib.asynccontextmanager
    async def deadline(self, seconds: float | None = None) -> AsyncIterator[None]:
        """The operation's deadline (``timeout`` unless ``seconds``): past it, DatabaseBusy
        (the task's query is cancelled on the server)."""
        seconds = self.timeout if seconds is None else seconds
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError:
            raise DatabaseBusy(f"database did not answer within {seconds:g}s") from None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Cursor]:
        """A cursor in one transaction, under the operation's deadline: commits when the block ends."""
        async with self.deadline(), self.cursor() as cur, cur.connection.transaction():
            yield cur

    async def query(self, name: str, params: Mapping[str, Any], *, retry: bool = True) -> list[Row]:
        """Run a named query of ``ocspd/sql/queries.sql``; one retry when a pooled connection turns out dead.

        Both tries together are bounded by the operation's deadline.
        """
        async with self.deadline():
            for attempt in (1, 2):
                try:
                    async with self.cursor() as cur:
                        await cur.execute(self._queries[name], params)
                        return await cur.fetchall() if cur.description else []
                except DatabaseBusy:
                    raise  # asking again would wait as long again: the answer is tryLater now
                except SourceUnavailable:
                    # A connection that died while pooled (server restart) fails on
                    # first use; a fresh one may well work.
                    if attempt == 2 or not retry:
                        raise
        raise AssertionError("unreachable")

    async def replayed_query(self, name: str, params: Mapping[str, Any]) -> tuple[int | None, list[Row]]:
        """The named query's rows, with the WAL position the server had replayed before it
        (``replay_lsn``: None on a server not in recovery); retried as ``query`` is.

        Both go in one round trip (a pipeline), the position first, in a
        transaction at READ COMMITTED: the query's snapshot, taken after the
        position was read, sees every change up to it.
        """
        async with self.deadline():
            for attempt in (1, 2):
                try:
                    async with self.cursor() as cur, cur.connection.cursor() as position:
                        conn = cur.connection
                        async with conn.pipeline(), conn.cursor() as control:
                            await control.execute(self._queries["begin_read_committed"])
                            await position.execute(self._queries["replay_lsn"])
                            await cur.execute(self._queries[name], params)
                            await control.execute(self._queries["commit"])
                        replayed = await position.fetchone()
                        rows = await cur.fetchall() if cur.description else []
                        return (None if replayed is None else replayed[0]), rows
                except DatabaseBusy:
                    raise
                except SourceUnavailable:
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def migration_connection(self, connect_timeout: float) -> AsyncIterator[Connection]:
        """A connection of its own to ``dsn``, in autocommit mode, for the migrator.

        Not the pool's: it has none of the pool's session timeouts (a migration
        takes its time), only ``connect_timeout`` seconds to connect. Never to a
        hot standby (``primary_dsn``), and a StoreError if it reaches a pooler:
        the migrator's advisory lock is a session's. Driver errors in the block
        are translated as a migration's.
        """
        with translated(migration=True):
            async with asyncio.timeout(connect_timeout):
                conn = await psycopg.AsyncConnection.connect(primary_dsn(self.dsn), autocommit=True)
            async with conn:
                if await through_pooler(conn):
                    raise StoreError(
                        "ocspd db migrate needs a direct connection to the primary (it holds a session advisory "
                        "lock), and [database] listen_dsn (dsn when not set) reaches a pooler such as PgBouncer: "
                        "point listen_dsn (or OCSPD_DATABASE_LISTEN_DSN) at the primary itself"
                    )
                # A role's defaults (set there for a pooler's sake) are not a migration's.
                await conn.execute("SET lock_timeout = 0; SET statement_timeout = 0")
                yield conn


async def through_pooler(conn: Connection) -> bool:
    """Whether ``conn`` reaches PostgreSQL through a pooler: the backend that runs its
    queries is not the one it was told of at connect time (PgBouncer makes up that one)."""
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    return row is None or row[0] != conn.info.backend_pid


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its type's name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
