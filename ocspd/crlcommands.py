"""``ocspd crl show`` and ``ocspd crl sync`` (issue 15): what CRLs are in force, and a one-shot round.

With a database, the CRLs in force are the ones the replicas share
(``ocspd_crl_sources``): ``show`` prints that row; ``sync`` runs one round
now, as a replica would (claimed, fetched, checked, merged into the status
table, so every replica learns the changes by NOTIFY), which suits a
systemd timer. Without a database each ocspd process keeps its own CRLs:
``show`` and ``sync`` then fetch and check them now and say what a process
would put in force, without changing anything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from ocspd import crlshared, crlsource
from ocspd.commands import CLI_DATABASE_TIMEOUT, UsageError, issuer_config
from ocspd.config import Config, IssuerConfig
from ocspd.crlfetch import CrlFetcher, FetchLimits
from ocspd.crlsource import CrlState, Kind, Outcome
from ocspd.exceptions import ConfigError
from ocspd.store import Store
from ocspd.store.crls import CrlRecord, CrlRow


def _crl_issuers(config: Config, issuer_ids: Sequence[str]) -> list[IssuerConfig]:
    issuers = [issuer_config(config, i) for i in issuer_ids] or [i for i in config.issuers if i.crl]
    for issuer in issuers:
        if not issuer.crl:
            raise UsageError(f"--issuer: issuer {issuer.id!r} has no crl in {config.source}")
    if not issuers:
        raise UsageError(f"no issuer in {config.source} has a crl")
    return issuers


def _shared(config: Config, issuer: IssuerConfig) -> bool:
    """Whether the issuer's CRLs are merged into the database (as the daemon decides: app.init_app)."""
    return config.database is not None and issuer.index is None


def _state(issuer: IssuerConfig) -> CrlState:
    try:
        data = Path(issuer.ca_cert).read_bytes()
        ca = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load ca_cert {issuer.ca_cert}: {' '.join(str(exc).split())}") from None
    return crlsource.state_for(issuer, ca)


def _fetcher(config: Config) -> CrlFetcher:
    crl = config.crl
    return CrlFetcher(FetchLimits(crl.timeout.total_seconds(), crl.max_bytes, crl.max_redirects))


def _when(moment: dt.datetime | None) -> str:
    return "none" if moment is None else moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def _lines(kind: Kind, record: CrlRecord | None) -> list[str]:
    if record is None:
        return [f"  {kind.value}: none"]
    return [
        f"  {kind.value}: CRL number {record.number}, {record.entries} entries, from {record.source}",
        f"    thisUpdate {_when(record.this_update)}, nextUpdate {_when(record.next_update)}",
    ]


def _local_lines(state: CrlState) -> list[str]:
    lines = []
    for kind, trusted in ((Kind.BASE, state.base), (Kind.DELTA, state.delta)):
        record = None if trusted is None else crlshared.as_record(trusted, state.source.get(kind, ""))
        lines += _lines(kind, record)
    return lines


def crl_show(config: Config, issuer_ids: Sequence[str]) -> int:
    """``ocspd crl show``: what is in force (with a database), or what would be (fetched now)."""
    failed = False
    for issuer in _crl_issuers(config, issuer_ids):
        if _shared(config, issuer):
            row = asyncio.run(_in_force(config, issuer.id))
            if row is None or row.base is None:
                print(f"issuer {issuer.id}: no CRL in force yet (no replica has applied one)")
                failed = True
                continue
            print(f"issuer {issuer.id}: in force (shared by the replicas through the database)")
            print("\n".join(_lines(Kind.BASE, row.base) + _lines(Kind.DELTA, row.delta)))
            print(f"  applied {_when(row.applied_at)}, last fetched {_when(row.fetched_at)}, "
                  f"next round due {_when(row.next_fetch_at)}")  # fmt: skip
            if row.last_error:
                print(f"  last error: {row.last_error}")
            failed = failed or bool(row.last_error)
        else:
            failed = _check_now(config, issuer) or failed
    return 1 if failed else 0


def crl_sync(config: Config, issuer_ids: Sequence[str]) -> int:
    """``ocspd crl sync``: one round now; exit 1 if a CRL could not be fetched or was refused."""
    failed = False
    for issuer in _crl_issuers(config, issuer_ids):
        if not _shared(config, issuer):
            failed = _check_now(config, issuer) or failed
            continue
        state = _state(issuer)
        claimed = asyncio.run(_shared_round(config, state))
        if not claimed:
            print(f"issuer {issuer.id}: another replica is running a round now; nothing done")
            failed = True
            continue
        print(f"issuer {issuer.id}: in force now")
        print("\n".join(_local_lines(state)))
        for kind, error in state.last_error.items():
            print(f"  {kind.value}: {error}")
        failed = failed or bool(state.last_error)
    return 1 if failed else 0


def _check_now(config: Config, issuer: IssuerConfig) -> bool:
    """Fetch and check an issuer's CRLs now (no database: nothing shared to change); True if one failed."""
    state = _state(issuer)
    result = asyncio.run(_sync(config, state))
    print(f"issuer {issuer.id}: fetched and checked now (each ocspd process polls its own; nothing changed)")
    print("\n".join(_local_lines(state)))
    for kind, error in state.last_error.items():
        print(f"  {kind.value}: {error}")
    return any(o in (Outcome.FAILED, Outcome.REFUSED) for o in result.outcomes.values())


async def _sync(config: Config, state: CrlState) -> crlsource.SyncResult:
    fetcher = _fetcher(config)
    try:
        return await crlsource.sync(state, fetcher)
    finally:
        await fetcher.close()


async def _shared_round(config: Config, state: CrlState) -> bool:
    assert config.database is not None
    store = Store(config.database.dsn, timeout=CLI_DATABASE_TIMEOUT)
    fetcher = _fetcher(config)
    await store.open()
    try:
        return await crlshared.shared_round(state, fetcher, store.crls, config.crl, force=True, clock=time.time)
    finally:
        await fetcher.close()
        await store.close()


async def _in_force(config: Config, issuer_id: str) -> CrlRow | None:
    assert config.database is not None
    store = Store(config.database.dsn, timeout=CLI_DATABASE_TIMEOUT)
    await store.open()
    try:
        return await store.crls.in_force(issuer_id)
    finally:
        await store.close()
