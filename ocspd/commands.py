"""The database commands of the CLI: db migrate, cert add, revoke, unhold,
status, presign (SPEC §4); cert import is in ``importer``. Parsing of user
input lives here too: serials, times, reasons, each refused with one line
naming what is wrong.

The revocation rules are the database's (ocspd/sql/migrations/0003): these
commands say what they found and kept, and turn a refusal into one line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from cryptography import x509

from ocspd.config import Config, DatabaseConfig, IssuerConfig
from ocspd.exceptions import ConfigError, OcspdError, RuleViolation
from ocspd.index import IndexFile
from ocspd.status import REASONS, Status, revocation_reason
from ocspd.store import Certificates, CertRecord, CertRow, RevokeResult, SignedResponse, Store

PRESIGN_BATCH = 500
PRESIGN_HASHES = ("sha1", "sha256")

_SERIAL = re.compile(r"^(?:0x)?([0-9a-f]+)$")
T = TypeVar("T")


class UsageError(OcspdError):
    """Bad command-line input: one line, exit status 2."""


def parse_serial(text: str) -> int:
    """A serial in hex: any case, optional ``0x``, optional colons (``01:A2``)."""
    match = _SERIAL.match(text.strip().lower().replace(":", ""))
    if not match:
        raise UsageError(f"--serial: {text!r} is not a hex serial (e.g. 1A2B, 0x1a2b, 1a:2b)")
    serial = int(match.group(1), 16)
    if serial.bit_length() > 160:
        raise UsageError(f"--serial: {text!r} is longer than 20 octets (RFC 5280 §4.1.2.2)")
    return serial


def parse_time(text: str, option: str) -> dt.datetime:
    """An RFC 3339 time with an offset (``2026-01-02T03:04:05Z``)."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not an RFC 3339 time (e.g. 2026-01-02T03:04:05Z)") from None
    if moment.tzinfo is None:
        raise UsageError(f"{option}: {text!r} has no UTC offset (add Z or +01:00)")
    return moment.astimezone(dt.UTC)


def parse_reason(text: str) -> x509.ReasonFlags | None:
    """An RFC 5280 reason name, any case; None for ``unspecified`` (answers leave it out)."""
    reason = revocation_reason(text)
    if reason is None:
        if text.strip().lower() == "removefromcrl":
            raise UsageError("--reason: removeFromCRL marks a delta-CRL entry (RFC 5280 §5.3.1), not a revocation")
        names = ", ".join(r.name for r in REASONS if r.revocation)
        raise UsageError(f"--reason: {text!r} is not an RFC 5280 revocation reason (one of {names})")
    return None if reason.flag is x509.ReasonFlags.unspecified else reason.flag


def _database(config: Config) -> DatabaseConfig:
    if config.database is None:
        raise ConfigError("this command needs a [database] section (or OCSPD_DATABASE_DSN)", file=config.source)
    return config.database


# The CLI waits for a busy database (a lock, a long import batch) far longer
# than a request would; it still does not wait for ever.
CLI_DATABASE_TIMEOUT = 60.0


def _store(config: Config) -> Store:
    return Store(_database(config).dsn, timeout=CLI_DATABASE_TIMEOUT)


def issuer_config(config: Config, issuer_id: str) -> IssuerConfig:
    """The configured issuer ``issuer_id``, or a UsageError naming the known ones."""
    for issuer in config.issuers:
        if issuer.id == issuer_id:
            return issuer
    ids = ", ".join(i.id for i in config.issuers)
    raise UsageError(f"--issuer: {issuer_id!r} is not configured in {config.source} (known: {ids})")


def database_issuer(config: Config, issuer_id: str, command: str) -> IssuerConfig:
    """The issuer, if its status lives in the database: one source of truth per issuer."""
    issuer = issuer_config(config, issuer_id)
    if issuer.index is not None:
        raise UsageError(
            f"{command}: issuer {issuer_id!r} takes its status from {issuer.index} (`index` in {config.source}), "
            "not from the database; change it there, with `openssl ca -revoke` or `easyrsa revoke` "
            "(ocspd reloads the file within a second)"
        )
    _database(config)
    return issuer


async def _with_store(config: Config, work: Callable[[Store], Awaitable[T]], store: Store | None = None) -> T:
    store = store or _store(config)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


def with_certificates(config: Config, work: Callable[[Certificates], Awaitable[T]]) -> T:
    """Run ``work`` on the certificate table of ``config``'s database."""
    return asyncio.run(_with_store(config, lambda store: work(store.certificates)))


def db_migrate(config: Config) -> int:
    """``ocspd db migrate``: apply what is missing; running it again is a no-op."""
    # listen_dsn: a direct connection to the primary (dsn may be a pooler), as the
    # migrator's session advisory lock needs.
    store = Store(_database(config).listen_dsn, timeout=CLI_DATABASE_TIMEOUT)
    applied = asyncio.run(store.migrate(progress=lambda name: print(f"applied {name}", flush=True)))
    if not applied:
        print("database schema is up to date")
    return 0


def describe(row: CertRow) -> str:
    """``revoked (keyCompromise, since 2026-01-02T03:04:05Z)``, ``on hold (...)`` or ``good``."""
    if row.status is not Status.REVOKED:
        return str(row.status.value)
    assert row.revoked_at is not None
    since = row.revoked_at.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    reason = str(row.reason.value) if row.reason is not None else "no reason"
    return f"{'on hold' if row.reason is x509.ReasonFlags.certificate_hold else 'revoked'} ({reason}, since {since})"


def cert_add(config: Config, issuer_id: str, serial_text: str, not_after_text: str | None) -> int:
    """``ocspd cert add``: record one issued certificate; a revocation already there is kept."""
    database_issuer(config, issuer_id, "cert add")
    record = CertRecord(
        parse_serial(serial_text),
        not_after=parse_time(not_after_text, "--not-after") if not_after_text else None,
    )

    async def work(table: Certificates) -> tuple[CertRow | None, CertRow | None]:
        before = await table.status(issuer_id, record.serial)
        await table.merge_in(issuer_id, [record])
        return before, await table.status(issuer_id, record.serial)

    before, after = with_certificates(config, work)
    assert after is not None
    where = f"issuer={issuer_id} serial={record.serial:X}"
    if after.status is Status.REVOKED:
        print(f"already revoked {where}: {describe(after)}, kept")
    else:
        print(f"{'added' if before is None else 'already listed'} {where} version={after.version}")
    return 0


def revoke(
    config: Config, issuer_id: str, serial_text: str, reason_text: str | None, at: str | None, amend: bool = False
) -> int:
    """``ocspd revoke``: every replica answers revoked once this commits; permanent but for a hold."""
    database_issuer(config, issuer_id, "revoke")
    serial = parse_serial(serial_text)
    reason = parse_reason(reason_text) if reason_text else None
    when = parse_time(at, "--at") if at else None
    if when is not None and when > dt.datetime.now(dt.UTC):
        raise UsageError(f"--at: {at!r} is in the future (a revocation time says when it happened)")
    where = f"issuer={issuer_id} serial={serial:X}"

    async def work(table: Certificates) -> RevokeResult:
        try:
            return await table.revoke(issuer_id, serial, reason, when, amend=amend)
        except RuleViolation:
            before = await table.status(issuer_id, serial)
            if amend or before is None or before.status is not Status.REVOKED:
                raise
            raise RuleViolation(
                f"{where} is already {describe(before)}: a revocation is not changed silently; "
                "to correct its reason or time, add --amend"
            ) from None

    result = with_certificates(config, work)
    if not result.changed:
        print(f"already revoked {where}: {describe(result.after)}, unchanged")
    else:
        was_revoked = result.before is not None and result.before.status is Status.REVOKED
        verb = "amended" if amend and was_revoked else "revoked"
        print(f"{verb} {where}: {describe(result.after)} version={result.after.version}")
    return 0


def unhold(config: Config, issuer_id: str, serial_text: str) -> int:
    """``ocspd unhold``: release a certificateHold (the only way from revoked back to good)."""
    database_issuer(config, issuer_id, "unhold")
    serial = parse_serial(serial_text)
    version = with_certificates(config, lambda table: table.unhold(issuer_id, serial))
    print(f"released issuer={issuer_id} serial={serial:X}: good version={version}")
    return 0


def status(config: Config, issuer_id: str, serial_text: str, as_json: bool) -> int:
    """``ocspd status``: what the issuer's status source says, i.e. what the responder serves."""
    issuer = issuer_config(config, issuer_id)
    serial = parse_serial(serial_text)
    info: dict[str, Any] = {"issuer": issuer_id, "serial": f"{serial:X}"}
    if issuer.index is not None:
        index = IndexFile(issuer.index, keep_expiry=True)
        index.load()
        found = index.lookup(serial)
        info["source"] = f"index {issuer.index}"
        info["status"] = (found.status if found is not None else Status.UNKNOWN).value
        if found is not None and found.status is Status.REVOKED:
            info["revoked_at"] = found.revoked_at
            info["reason"] = found.reason.value if found.reason is not None else None
        info["not_after"] = index.not_after(serial)
    else:
        row = with_certificates(config, lambda table: table.status(issuer_id, serial))
        info["source"] = "postgres"
        if row is None:
            info["status"] = Status.UNKNOWN.value
        else:
            info.update(
                status=row.status.value,
                revoked_at=row.revoked_at,
                reason=row.reason.value if row.reason is not None else None,
                not_after=row.not_after,
                version=row.version,
                updated_at=row.updated_at,
                stored_responses=row.stored_responses,
            )
    if info["status"] == Status.UNKNOWN.value:
        info["served"] = {"unknown": "unknown", "revoked": "revoked (extended)", "unauthorized": "unauthorized"}[
            issuer.unknown_serial
        ]
    info = {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in info.items()}
    if as_json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            if value is not None:
                print(f"{key}: {value}")
    return 0


def presign(config: Config, issuer_ids: Sequence[str]) -> int:
    """``ocspd presign``: sign and store responses for every listed certificate ahead of traffic."""
    for issuer_id in issuer_ids:
        database_issuer(config, issuer_id, "presign")
    from ocspd import crlshared, crlsource
    from ocspd.keys import load_signers, tokens_for
    from ocspd.responder import Responder

    tokens = tokens_for(config)
    signers = load_signers(config, tokens)
    store = _store(config)

    async def work(store: Store) -> None:
        # The responder knows how to sign a stored row; it serves no requests here. An
        # issuer whose status comes from CRLs signs within the nextUpdate of those in force.
        crls = {}
        for issuer in config.issuers:
            if issuer.crl and issuer.id in issuer_ids:
                crls[issuer.id] = state = crlsource.state_for(issuer, signers[issuer.id].ca_cert)
                crlshared.adopt(state, await store.crls.in_force(issuer.id))
                if state.base is None:
                    raise UsageError(f"presign: issuer {issuer.id!r} has no CRL in force yet; run `ocspd crl sync`")
        responder = Responder(config, signers, {i.id: store for i in config.issuers}, crls=crls)
        started = time.monotonic()
        for issuer_id in issuer_ids:
            total = await store.certificates.count(issuer_id)
            for hash_alg in PRESIGN_HASHES:
                after: int | None = None
                done, written = 0, 0
                fingerprint = signers[issuer_id].fingerprint
                while batch := await store.responses.presign_batch(
                    issuer_id, hash_alg, fingerprint, after, PRESIGN_BATCH
                ):
                    # All of a batch at once: a token key signs in every session of its token.
                    entries = await asyncio.gather(
                        *(responder.sign_stored(issuer_id, row.serial, hash_alg, row.status) for row in batch)
                    )
                    items = [
                        SignedResponse(row.serial, hash_alg, entry, row.status.version)
                        for row, entry in zip(batch, entries, strict=True)
                    ]
                    written += await store.responses.store_many(issuer_id, fingerprint, items)
                    done += len(batch)
                    after = batch[-1].serial
                    print(
                        f"presign issuer={issuer_id} hash={hash_alg} signed={done} stored={written} "
                        f"certificates={total} elapsed={time.monotonic() - started:.1f}s",
                        file=sys.stderr,
                        flush=True,
                    )
                print(f"presigned issuer={issuer_id} hash={hash_alg} stored={written}", file=sys.stderr, flush=True)

    try:
        asyncio.run(_with_store(config, work, store))
    finally:
        tokens.close()
    return 0
