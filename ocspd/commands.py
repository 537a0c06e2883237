"""The database commands of the CLI: db migrate, cert add/import, revoke,
status, presign (SPEC §4). Parsing of user input lives here too: serials,
times, reasons, each refused with one line naming what is wrong.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ocspd.config import Config
from ocspd.exceptions import ConfigError, OcspdError
from ocspd.index import IndexFile
from ocspd.status import Status
from ocspd.store import REASON_NAMES, REASON_OF_FLAG, CertRecord, Store

IMPORT_BATCH = 5000
PRESIGN_BATCH = 500
PRESIGN_HASHES = ("sha1", "sha256")

_SERIAL = re.compile(r"^(?:0x)?([0-9a-f]+)$")
_REASONS_LOWER = {name.lower(): name for name in REASON_NAMES}


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


def parse_reason(text: str) -> str:
    """An RFC 5280 reason name, any case, returned in its canonical spelling."""
    name = _REASONS_LOWER.get(text.strip().lower())
    if name is None:
        raise UsageError(f"--reason: {text!r} is not an RFC 5280 reason (one of {', '.join(REASON_NAMES)})")
    return name


def _store(config: Config) -> Store:
    if config.database is None:
        raise ConfigError("this command needs a [database] section (or OCSPD_DATABASE_DSN)", file=config.source)
    return Store(config.database.dsn)


def _issuer(config: Config, issuer_id: str) -> None:
    ids = [issuer.id for issuer in config.issuers]
    if issuer_id not in ids:
        raise UsageError(f"--issuer: {issuer_id!r} is not configured in {config.source} (known: {', '.join(ids)})")


async def _with_store(config: Config, work: Any, store: Store | None = None) -> Any:
    store = store or _store(config)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


def db_migrate(config: Config, out: TextIO = sys.stdout) -> int:
    """``ocspd db migrate``: apply what is missing; running it again is a no-op."""
    store = _store(config)
    applied = asyncio.run(store.migrate(progress=lambda name: print(f"applied {name}", file=out, flush=True)))
    if not applied:
        print("database schema is up to date", file=out)
    return 0


def cert_add(config: Config, issuer_id: str, serial_text: str, not_after_text: str | None) -> int:
    """``ocspd cert add``: record one issued certificate (status good)."""
    _issuer(config, issuer_id)
    record = CertRecord(
        parse_serial(serial_text),
        not_after=parse_time(not_after_text, "--not-after") if not_after_text else None,
    )
    asyncio.run(_with_store(config, lambda store: store.add_certificates(issuer_id, [record])))
    return 0


def revoke(config: Config, issuer_id: str, serial_text: str, reason: str | None, at: str | None) -> int:
    """``ocspd revoke``: every replica answers revoked once this commits."""
    _issuer(config, issuer_id)
    serial = parse_serial(serial_text)
    reason_name = parse_reason(reason) if reason else None
    when = parse_time(at, "--at") if at else dt.datetime.now(dt.UTC)
    version = asyncio.run(_with_store(config, lambda store: store.revoke(issuer_id, serial, reason_name, when)))
    print(f"revoked issuer={issuer_id} serial={serial:X} version={version}")
    return 0


def status(config: Config, issuer_id: str, serial_text: str, as_json: bool, out: TextIO = sys.stdout) -> int:
    """``ocspd status``: what the store says about one certificate."""
    _issuer(config, issuer_id)
    serial = parse_serial(serial_text)
    row = asyncio.run(_with_store(config, lambda store: store.status(issuer_id, serial)))
    info: dict[str, Any] = {"issuer": issuer_id, "serial": f"{serial:X}"}
    if row is None:
        info["status"] = "unknown"
    else:
        info.update({k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()})
    if as_json:
        print(json.dumps(info), file=out)
    else:
        for key, value in info.items():
            if value is not None:
                print(f"{key}: {value}", file=out)
    return 0


def cert_import(config: Config, issuer_id: str, files: Sequence[Path], err: TextIO = sys.stderr) -> int:
    """``ocspd cert import``: PEM/DER certificates or an OpenSSL index.txt, in batches."""
    _issuer(config, issuer_id)
    ca = _ca_cert(config, issuer_id)
    records: list[CertRecord] = []
    for path in files:
        records.extend(_read_import_file(path, ca))
    total = len(records)

    async def work(store: Store) -> None:
        started = time.monotonic()
        for done, batch in _batches(records, IMPORT_BATCH):
            await store.add_certificates(issuer_id, batch)
            print(f"imported {done}/{total} certificates ({time.monotonic() - started:.1f}s)", file=err, flush=True)

    asyncio.run(_with_store(config, work))
    print(f"imported {total} certificates for issuer {issuer_id}", file=err)
    return 0


def _batches(items: Sequence[CertRecord], size: int) -> Iterator[tuple[int, Sequence[CertRecord]]]:
    for start in range(0, len(items), size):
        batch = items[start : start + size]
        yield start + len(batch), batch


def _ca_cert(config: Config, issuer_id: str) -> x509.Certificate:
    issuer = next(i for i in config.issuers if i.id == issuer_id)
    data = issuer.ca_cert.read_bytes()
    return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)


def _read_import_file(path: Path, ca: x509.Certificate) -> list[CertRecord]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise UsageError(f"{path}: not a readable PEM certificate file") from None
    elif data[:1] == b"\x30":
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise UsageError(f"{path}: not a DER certificate") from None
    elif _looks_like_index(data):
        return list(_index_records(path))
    else:
        raise UsageError(f"{path}: neither PEM/DER certificates nor an OpenSSL index.txt")
    for cert in certs:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise UsageError(
                f"{path}: certificate serial {cert.serial_number:X} was not issued by this issuer's CA"
            ) from None
    return [CertRecord(cert.serial_number, not_after=cert.not_valid_after_utc) for cert in certs]


def _looks_like_index(data: bytes) -> bool:
    first = data.lstrip().split(b"\n", 1)[0]
    return first[:2] in (b"V\t", b"R\t", b"E\t")


def _index_records(path: Path) -> Iterable[CertRecord]:
    index = IndexFile(path)
    index.load()  # malformed lines are logged with their line number and skipped
    for serial, status in index.items():
        if status.status is Status.REVOKED:
            reason = REASON_OF_FLAG.get(status.reason) if status.reason else None
            yield CertRecord(serial, "revoked", status.revoked_at, reason)
        else:
            yield CertRecord(serial)


def presign(config: Config, issuer_ids: Sequence[str], err: TextIO = sys.stderr) -> int:
    """``ocspd presign``: sign and store responses for every listed certificate ahead of traffic."""
    for issuer_id in issuer_ids:
        _issuer(config, issuer_id)
    from ocspd.engine import Engine
    from ocspd.signer import load_signers

    signers = load_signers(config)
    store = _store(config)
    # The engine knows how to sign a stored row; it serves no requests here.
    engine = Engine(config, signers, {i.id: store for i in config.issuers})

    async def work(store: Store) -> None:
        started = time.monotonic()
        for issuer_id in issuer_ids:
            total = await store.count_certificates(issuer_id)
            for hash_alg in PRESIGN_HASHES:
                after, done, written = "", 0, 0
                fingerprint = signers[issuer_id].fingerprint
                while batch := await store.presign_batch(issuer_id, hash_alg, fingerprint, after, PRESIGN_BATCH):
                    items = [
                        (
                            int(serial, 16), hash_alg,
                            engine.sign_stored(issuer_id, int(serial, 16), hash_alg, status), status.version,
                        )
                        for serial, status in batch
                    ]
                    written += await store.store_many(issuer_id, fingerprint, items)
                    done += len(batch)
                    after = batch[-1][0]
                    print(
                        f"presign issuer={issuer_id} hash={hash_alg} signed={done} stored={written} "
                        f"certificates={total} elapsed={time.monotonic() - started:.1f}s",
                        file=err, flush=True,
                    )
                print(f"presigned issuer={issuer_id} hash={hash_alg} stored={written}", file=err, flush=True)

    asyncio.run(_with_store(config, work, store))
    return 0
