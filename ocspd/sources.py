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
from ocspd.crlsource import CrlState
from ocspd.index import IndexFile
from ocspd.status import HOLD, UNKNOWN, CertStatus, Status


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


class CrlSource:
    """Status from CRLs (``CrlState``), paired per issuer with its index.txt, or unlisted-means-good.

    A CRL lists revoked certificates only. With an issuance list (``index``),
    a serial it lists and no CRL lists is good, and one neither lists is
    unknown (the unknown_serial policy); with ``crl_unlisted = "good"``,
    every serial the CRLs do not list is good. A revocation either side
    knows is never answered good: a CRL's entry, a hold included, wins over
    the file's "good", and the file's revocation over a CRL that does not
    list it, or over a hold the CRL has, or released.
    """

    def __init__(self, states: Mapping[str, CrlState], index: IndexSource | None = None) -> None:
        self.states = dict(states)
        self.index = index

    async def fetch(self, issuer_id: str, serial: int, hash_name: str, signer: str) -> Lookup:
        state = self.states[issuer_id]
        listed = state.status(serial)  # SourceUnavailable before the first CRL
        issued = None
        if self.index is not None and issuer_id in self.index.files:
            issued = self.index.files[issuer_id].lookup(serial)
        return Lookup(paired(listed, issued, state.issuer.crl_unlisted == "good"))

    def write_back(self, issuer_id: str, serial: int, hash_name: str, entry: Entry, version: int, signer: str) -> None:
        return None  # no response tier: a new CRL reaches the responder through invalidate()


def paired(listed: CertStatus | None, issued: CertStatus | None, unlisted_good: bool) -> CertStatus:
    """One status from what the CRLs say (``listed``) and what the issuance list says (``issued``)."""
    if (
        issued is not None
        and issued.status is Status.REVOKED
        and (
            listed is None
            or listed.status is Status.GOOD
            or (listed.reason is HOLD.flag and issued.reason is not HOLD.flag)
        )
    ):
        return issued
    if listed is not None:
        return listed  # revoked; or GOOD: a hold released, listed before, so issued
    if issued is not None:
        return issued
    return CertStatus(Status.GOOD) if unlisted_good else UNKNOWN
