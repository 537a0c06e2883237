"""``Store``: the status database as the rest of ocspd holds it.

One connector (``connector``: the pool, deadlines, the one translation of
driver errors) and the store's roles on it, each in a module of its own:

- ``source``: the request path's batched reads (``source.py``), on the pool of
  ``read_dsn`` when there is one and it is in the read set (``readset.py``),
  fenced (``fence.py``);
- ``writes``: the write-behind queue of responses signed on a miss (``writes.py``);
- ``responses`` and ``certificates``: what refresh, presign and the CLI do
  (``responses.py``, ``certificates.py``);
- ``migrations``: the migrator and the schema check (``migrations.py``).

The methods here are the ``StatusSource`` seam and what the app's loops call.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ocspd.cache import Entry
from ocspd.sources import Lookup
from ocspd.store import readset
from ocspd.store.certificates import Certificates
from ocspd.store.connector import OPERATION_TIMEOUT, POOL_MAX, Connector, Row
from ocspd.store.crls import CrlRows
from ocspd.store.fence import Fence
from ocspd.store.migrations import PING_BUDGET, Migrator
from ocspd.store.readset import ReadTarget
from ocspd.store.responses import DueRow, Responses
from ocspd.store.source import Source
from ocspd.store.writes import WriteBehind


class Store:
    """A pool of connections to the status database, and the store's roles on it."""

    def __init__(
        self,
        dsn: str,
        *,
        maxsize: int = POOL_MAX,
        timeout: float = OPERATION_TIMEOUT,
        lock_timeout: float | None = None,
        statement_timeout: float | None = None,
        read_dsn: str = "",
        read_max_lag: float = 5.0,
    ) -> None:
        """See :class:`~ocspd.store.connector.Connector` for the arguments. With ``read_dsn``
        (a hot standby), the request path's status reads use a pool of their own on it,
        fenced by ``fence``, while ``read_target`` has it in the read set (answering, and
        at most ``read_max_lag`` seconds behind: ``watch_read_target``); everything else
        stays on ``dsn``."""
        settings: dict[str, Any] = {
            "maxsize": maxsize,
            "timeout": timeout,
            "lock_timeout": lock_timeout,
            "statement_timeout": statement_timeout,
        }
        self.connector = Connector(dsn, **settings)
        self.reader = Connector(read_dsn, what="[database] read_dsn", primary=False, **settings) if read_dsn else None
        self.fence = Fence()
        self.read_target = ReadTarget(read_max_lag) if read_dsn else None
        self.source = Source(self.connector, self.reader, self.fence, self.read_target)
        self.responses = Responses(self.connector)
        # Write-backs are off the request path: queued, and sent in batches.
        self.writes = WriteBehind(self.responses)
        self.certificates = Certificates(self.connector)
        self.crls = CrlRows(self.connector, self.certificates)
        self.migrations = Migrator(self.connector)

    @property
    def dsn(self) -> str:
        return self.connector.dsn

    async def open(self) -> None:
        """Create the pool(s). Connects lazily, so a database that is down now is no start-up error."""
        await self.connector.open()
        if self.reader is not None:
            await self.reader.open()

    async def close(self) -> None:
        """Send what is queued (within the operation timeout), then close the pool."""
        await self.source.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.writes.flush(), self.connector.timeout)
        await self.connector.close()
        if self.reader is not None:
            await self.reader.close()

    # -- the request path (StatusSource) ------------------------------------------------

    async def fetch(self, issuer_id: str, serial: int, hash_name: str, signer: str) -> Lookup:
        """Status and (if current and signed by ``signer``) the stored response of one CertID."""
        return await self.source.fetch(issuer_id, serial, hash_name, signer)

    def write_back(self, issuer_id: str, serial: int, hash_name: str, entry: Entry, version: int, signer: str) -> None:
        """Queue a conditional write-back (``WriteBehind.write_back``)."""
        self.writes.write_back(issuer_id, serial, hash_name, entry, version, signer)

    async def flush(self) -> None:
        """Send the queued write-backs now and wait for every write-back in flight."""
        await self.writes.flush()

    def take_read_counts(self) -> dict[tuple[str, str], int]:
        """Status reads by (target, reason) since the last call (``Source.take_read_counts``)."""
        return self.source.take_read_counts()

    def take_write_back_counts(self) -> dict[str, int]:
        """Write-backs by result (written, refused, failed, dropped) since the last call."""
        return self.writes.take_counts()

    # -- the app's loops, readiness, the CLI ----------------------------------------------

    async def ping(self, budget: float = PING_BUDGET) -> None:
        """The readiness check (``Migrator.check``): reachable, answering within ``budget``, our schema."""
        await self.migrations.check(budget)

    async def watch_read_target(self) -> None:
        """Check the read target every second, forever (readset.py); returns at once without one."""
        if self.reader is not None and self.read_target is not None:
            await readset.watch(self.read_target, self.connector, self.reader)

    async def refresh_due(
        self, signers: Mapping[str, str], sign: Callable[[DueRow], Awaitable[Entry]], *, lead: dt.timedelta, limit: int
    ) -> int:
        """Re-sign up to ``limit`` stored responses due within ``lead`` (``Responses.refresh_due``)."""
        return await self.responses.refresh_due(signers, sign, lead=lead, limit=limit)

    async def migrate(self, progress: Callable[[str], Awaitable[None] | None] | None = None) -> list[str]:
        """Apply the migrations not yet applied (``Migrator.migrate``); returns their names."""
        return await self.migrations.migrate(progress)

    async def query(self, name: str, params: Mapping[str, Any], *, retry: bool = True) -> list[Row]:
        """Run a named query of ``ocspd/sql/queries.sql`` (``Connector.query``)."""
        return await self.connector.query(name, params, retry=retry)
