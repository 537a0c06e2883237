"""The request path's reads: status and stored response of a CertID, concurrent ones in one round trip."""

from __future__ import annotations

from collections.abc import Sequence

from ocspd.cache import Entry, windows
from ocspd.sources import Lookup
from ocspd.status import SERVED_BY_VALUE
from ocspd.store.batching import Batcher
from ocspd.store.connector import Connector
from ocspd.store.values import row_status, serial_hex, text_array

# (issuer id, serial hex, CertID hash name, signer fingerprint)
FetchKey = tuple[str, str, str, str]


class Source:
    """Batched ``fetch`` of the status table and the response tier (the query ``fetch``)."""

    def __init__(self, connector: Connector) -> None:
        self._connector = connector
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

    async def _fetch_batch(self, keys: Sequence[FetchKey]) -> list[Lookup]:
        rows = await self._connector.query(
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
            status = row_status(row[1:5])
            stored = None
            if row[5] is not None:
                stored = Entry(bytes(row[5]), SERVED_BY_VALUE[row[6]], self._windows[row[7], row[8]])
            lookups.append(Lookup(status, stored))
        return lookups
