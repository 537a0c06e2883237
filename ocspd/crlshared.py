"""CRLs with a database: one replica a round fetches and merges them, every replica learns (issue 15).

For an issuer served from PostgreSQL whose status comes from its CA's CRLs,
each replica runs :func:`poll_shared`. A round that finds the issuer's row
in ``ocspd_crl_sources`` due claims it (a row-level claim with a lease, no
session state: it works through PgBouncer), runs :func:`ocspd.crlsource.sync`
and merges what changed into ``ocspd_certificates``: revocations by the
import's merge (never a downgrade), released holds by ``ocspd_unhold``. The
table's triggers delete the stale stored responses and NOTIFY every replica
of each changed serial, as for any other writer. The other replicas only
read the row: what is in force, for the nextUpdate that bounds their
answers and for /readyz. A replica that claims a round without the CRLs'
entries in memory (it did not apply the last ones) fetches them in full
and merges all of them (unchanged rows are not written, so nothing is
notified for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping

from ocspd import crl
from ocspd.config import CrlConfig
from ocspd.crlfetch import CrlFetcher, Validators
from ocspd.crlsource import MIN_DELAY, Counter, CrlState, Kind, Outcome, log, sync
from ocspd.exceptions import SourceUnavailable, StoreError
from ocspd.logs import event
from ocspd.status import Status
from ocspd.store.certificates import CertRecord
from ocspd.store.crls import CrlRecord, CrlRow, CrlRows

# A claim outlives a round that hangs this long past its fetch timeout (then another replica may claim).
LEASE_MARGIN = 60.0


def replica_id() -> str:
    """Who a poller is in ocspd_crl_sources.applier (one per app: in-process replicas differ too)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _grace(config: CrlConfig) -> float:
    """How overdue a round must be before a replica other than the last applier claims it."""
    return 2 * min(config.poll, config.retry).total_seconds() + 1.0


async def shared_round(
    state: CrlState,
    fetcher: CrlFetcher,
    rows: CrlRows,
    config: CrlConfig,
    count: Counter | None = None,
    *,
    force: bool = False,
    clock: Callable[[], float] = time.time,
    me: str = "",
) -> bool:
    """One round for one issuer; whether this replica claimed it (and fetched)."""
    lease = 2 * config.timeout.total_seconds() + LEASE_MARGIN
    me = me or replica_id()
    claimed = await rows.claim(state.issuer_id, me, lease=lease, grace=_grace(config), force=force)
    try:
        row = await rows.in_force(state.issuer_id)
        adopt(state, row)  # also for the claimer: a CRL older than the one in force is refused
        if not claimed:
            return False
        await _claimed_round(state, fetcher, rows, config, count, row, clock)
    except BaseException:
        # Stopped (SIGTERM, shutdown) or failed mid-round: hand the round back rather than hold it for the lease.
        if claimed:
            with contextlib.suppress(Exception):
                await asyncio.shield(rows.release(state.issuer_id, me))
        raise
    return True


async def _claimed_round(
    state: CrlState,
    fetcher: CrlFetcher,
    rows: CrlRows,
    config: CrlConfig,
    count: Counter | None,
    row: CrlRow | None,
    clock: Callable[[], float],
) -> None:
    """The round of the replica that claimed it: fetch, merge what changed, record."""
    full = state.hollow or state.base is None
    if full and row is not None:
        state.validators = {loc: _validators(v) for loc, v in row.validators.items()}
    before = None if full else state.pair()
    result = await sync(state, fetcher, count)
    fetched = {kind for kind, outcome in result.outcomes.items() if outcome is Outcome.APPLIED}
    if state.hollow and fetched and fetched != set(result.outcomes):
        # Something changed, and this replica lacks the entries of the CRL that did not: that one in full.
        for kind in set(result.outcomes) - fetched:
            for location in state.issuer.crl if kind is Kind.BASE else state.delta_locations():
                state.validators.pop(location, None)
        result = await sync(state, fetcher, count)
        fetched.update(kind for kind, outcome in result.outcomes.items() if outcome is Outcome.APPLIED)
    after = state.pair()
    if state.hollow and after is not None and fetched >= set(result.outcomes):
        state.hollow = False
    applied = after is not None and after != before and not state.hollow
    if applied and after is not None:
        base, delta = after
        await _merge(state, rows, base, delta, None if before is None else result.changed)
    error = "; ".join(f"{k.value}: {e}" for k, e in state.last_error.items()) or None
    await rows.record(
        state.issuer_id,
        as_record(state.base, state.source.get(Kind.BASE, "")),
        as_record(state.delta, state.source.get(Kind.DELTA, "")),
        last_error=error,
        applied=applied,
        delay=state.delay(clock(), config),
        validators={loc: dataclasses.asdict(v) for loc, v in state.validators.items()},
    )


async def _merge(
    state: CrlState, rows: CrlRows, base: crl.TrustedCrl, delta: crl.TrustedCrl | None, serials: set[int] | None
) -> None:
    """Merge the revocations among ``serials`` (None: every listed one) into the table; release the
    holds the CRLs no longer list. The records are built in a worker thread (a million take seconds)."""
    started = time.perf_counter()
    revoked = await asyncio.get_running_loop().run_in_executor(None, _revocations, base, delta, serials)
    counts, released = await rows.merge(state.issuer_id, revoked, _Listed(base, delta))
    event(
        log,
        "crl_merged",
        issuer=state.issuer_id,
        revocations=len(revoked),
        new=counts.new,
        revoked=counts.revoked,
        kept=counts.kept + counts.conflict,
        unchanged=counts.unchanged,
        released=released,
        seconds=round(time.perf_counter() - started, 3),
    )


def _revocations(base: crl.TrustedCrl, delta: crl.TrustedCrl | None, serials: set[int] | None) -> list[CertRecord]:
    if serials is None:
        serials = set(base.entries) | (set(delta.entries) if delta is not None else set())
    revoked = []
    for serial in serials:
        status = crl.status(base, delta, serial)
        if status is not None and status.status is Status.REVOKED:
            revoked.append(CertRecord(serial, Status.REVOKED, status.revoked_at, status.reason))
    return revoked


def _validators(raw: Mapping[str, object]) -> Validators:
    etag, modified, stat = raw.get("etag"), raw.get("last_modified"), raw.get("file_stat")
    file_stat = None
    if isinstance(stat, list) and len(stat) == 3 and all(isinstance(n, int) for n in stat):
        file_stat = (int(stat[0]), int(stat[1]), int(stat[2]))
    return Validators(
        etag if isinstance(etag, str) else None, modified if isinstance(modified, str) else None, file_stat
    )


class _Listed:
    """Whether the CRLs in force list a serial (a hold they list stays held)."""

    def __init__(self, base: crl.TrustedCrl, delta: crl.TrustedCrl | None) -> None:
        self._base, self._delta = base, delta

    def __contains__(self, serial: object) -> bool:
        return isinstance(serial, int) and crl.effective(self._base, self._delta, serial) is not None


def as_record(trusted: crl.TrustedCrl | None, source: str) -> CrlRecord | None:
    if trusted is None:
        return None
    return CrlRecord(trusted.number, trusted.this_update, trusted.next_update, len(trusted.entries), source)


def adopt(state: CrlState, row: CrlRow | None) -> None:
    """What another replica put in force: its numbers and times, without the entries (hollow)."""
    if row is None:
        return
    for kind, record in ((Kind.BASE, row.base), (Kind.DELTA, row.delta)):
        current = state.base if kind is Kind.BASE else state.delta
        if record is None:
            if current is not None and kind is Kind.DELTA:
                state.delta = None
            continue
        if current is not None and current.number == record.number:
            continue
        hollow = crl.TrustedCrl(
            record.number,
            record.this_update,
            record.next_update,
            None if kind is Kind.BASE else 0,
            {},
        )
        if kind is Kind.BASE:
            state.base = hollow
        else:
            state.delta = hollow
        state.source[kind] = record.source
        state.hollow = True
    state.last_error = {Kind.BASE: row.last_error} if row.last_error else {}


async def poll_shared(
    state: CrlState,
    fetcher: CrlFetcher,
    rows: CrlRows,
    config: CrlConfig,
    *,
    count: Counter | None = None,
    on_bug: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Rounds of :func:`shared_round` for ever: due ones claimed by one replica, the row read by the others."""
    failing, me = False, replica_id()
    while True:
        delay = min(config.poll, config.retry).total_seconds()
        try:
            claimed = await shared_round(state, fetcher, rows, config, count, clock=clock, me=me)
            if claimed:
                delay = state.delay(clock(), config)
            failing = False
        except (SourceUnavailable, StoreError) as exc:
            level = logging.DEBUG if failing else logging.WARNING
            event(log, "crl_round_skipped", level, issuer=state.issuer_id, reason=str(exc))
            failing = True
        except Exception:  # a bug: what is in force stays, the next round tries again
            log.exception("crl round error issuer=%s", state.issuer_id)
            if on_bug is not None:
                on_bug()
        await asyncio.sleep(max(MIN_DELAY, delay))
