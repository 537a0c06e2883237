"""The migrator: applies ``ocspd/sql/migrations/`` once, and tells a schema this code cannot use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ocspd.exceptions import SchemaOutdated
from ocspd.store.connector import Connector
from ocspd.store.queries import migrations

# Seconds a readiness check waits for the database.
PING_BUDGET = 1.0
# Migrations take their time (an index build); connecting still may not.
MIGRATION_CONNECT_TIMEOUT = 60.0
MIGRATION_LOCK = 0x0C5BD  # pg_advisory_lock key serialising `ocspd db migrate`


class Migrator:
    """``ocspd db migrate``, and the schema check of readiness and start-up."""

    def __init__(self, connector: Connector) -> None:
        self._connector = connector

    async def migrate(self, progress: Callable[[str], Awaitable[None] | None] | None = None) -> list[str]:
        """Apply the migrations not yet applied; returns their names.

        Idempotent, and safe when several replicas run it at once: a session
        advisory lock serialises them, and each migration commits with its
        bookkeeping row in one transaction.
        """
        applied: list[str] = []
        async with self._connector.migration_connection(MIGRATION_CONNECT_TIMEOUT) as conn, conn.cursor() as cur:
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
        return applied

    async def check(self, budget: float = PING_BUDGET) -> None:
        """Raise SourceUnavailable unless the database answers, SchemaOutdated unless it has our schema,
        DatabaseBusy unless it answers within ``budget`` seconds (a health check must answer fast
        even while the pool's connections all wait on a lock).

        A schema newer than this code is fine: a replica upgraded first migrated it.
        """
        async with self._connector.deadline(min(budget, self._connector.timeout)):
            rows = await self._connector.query("schema_version", {}, retry=False)
        have, need = rows[0][0], migrations()[-1].version
        if have < need:
            raise SchemaOutdated(have, need)
