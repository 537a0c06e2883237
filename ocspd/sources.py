"""The status-source seam: what sits under the memory tier.

A source answers "what is the status of (issuer, serial)?" and may also hold
a tier of pre-signed responses (the Postgres store does; the index.txt source
does not). The responder talks only to ``StatusSource``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ocspd.cache import Entry
from ocspd.index import IndexFile
from ocspd.status import UNKNOWN, CertStatus


@dataclass(frozen=True, slots=True)
class Lookup:
    """The current status of one certificate, and a stored response if the source has one."""

    status: CertStatus
    stored: Entry | None = None


class StatusSource(Protocol):
    """Where the truth about certificates (and optionally pre-signed responses) lives."""

    async def fetch(self, issuer_id: str, serial: int, hash_name: str, signer: str) -> Lookup:
        """Status of (issuer, serial), and a stored response signed by ``signer`` if any.

        Raises SourceUnavailable when the status cannot be known now.
        """
        ...

    def write_back(self, issuer_id: str, serial: int, hash_name: str, entry: Entry, version: int, signer: str) -> None:
        """Keep a response signed by ``signer`` for others, only if status ``version`` is still current then.

        Asynchronous and best effort (the answer does not wait for it); a
        no-op where the source keeps no response tier.
        """
        ...


class IndexSource:
    """Status from OpenSSL ``index.txt`` files, one per issuer; no response tier."""

    def __init__(self, files: Mapping[str, IndexFile]) -> None:
        self.files = dict(files)

    async def fetch(self, issuer_id: str, serial: int, hash_name: str, signer: str) -> Lookup:
        status = self.files[issuer_id].lookup(serial)
        return Lookup(UNKNOWN if status is None else status)

    def write_back(self, issuer_id: str, serial: int, hash_name: str, entry: Entry, version: int, signer: str) -> None:
        # No response tier; a change reaches the responder through invalidate().
        return None
