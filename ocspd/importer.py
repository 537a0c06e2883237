"""``ocspd cert import``: PEM/DER certificates or an OpenSSL index.txt into the
certificate table, merged, never downgraded (SPEC §3 invariant 9).

Every file is read and checked before anything is written: a certificate of
another CA, an unreadable file or a revocation time in the future stops the
import with one line and nothing imported. The records of all files are then
folded to one per serial (easy-rsa keeps each certificate twice, in
``issued/`` and ``certs_by_serial/``; a bundle may repeat a member) and merged
into the table in batches, the database keeping every revocation it has.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ocspd.commands import UsageError, database_issuer, with_certificates
from ocspd.config import Config
from ocspd.index import IndexFile
from ocspd.status import Status
from ocspd.store import Certificates, CertRecord, ImportCounts, fold_duplicates

IMPORT_BATCH = 5000
# The read and check of the files is reported at most this often (seconds): 20k PEM files take ~16 s.
PROGRESS_SECONDS = 1.0
# New rows past which the import refreshes the planner's statistics itself (queries.sql,
# analyze_certificates) instead of leaving presign to crawl until autovacuum does.
ANALYZE_AFTER = 1000
# The database refuses revocation times further ahead of its clock than this
# (ocspd/sql/migrations/0003): checked here first, so that nothing half-imports.
CLOCK_SKEW = dt.timedelta(minutes=1)


def cert_import(config: Config, issuer_id: str, files: Sequence[Path]) -> int:
    """``ocspd cert import``: read and check every file, fold duplicates, merge in batches."""
    issuer = database_issuer(config, issuer_id, "cert import")
    ca = _load_certificate(issuer.ca_cert)
    offered: list[CertRecord] = []
    started = time.monotonic()
    said = started
    for n, path in enumerate(files, 1):
        offered.extend(_read_import_file(path, ca))
        if time.monotonic() - said >= PROGRESS_SECONDS and n < len(files):
            said = time.monotonic()
            print(f"read {n}/{len(files)} files ({said - started:.1f}s)", file=sys.stderr, flush=True)
    records, folded = fold_duplicates(offered)
    _refuse_future_revocations(records)
    total = len(records)

    async def work(table: Certificates) -> ImportCounts:
        started = time.monotonic()
        outcomes = ImportCounts()
        for done, batch in _batches(records, IMPORT_BATCH):
            outcomes += await table.merge_in(issuer_id, batch)
            elapsed = time.monotonic() - started
            print(f"imported {done}/{total} certificates ({elapsed:.1f}s)", file=sys.stderr, flush=True)
        if outcomes.new >= ANALYZE_AFTER:
            await table.analyze()
            print(f"analysed the table ({time.monotonic() - started:.1f}s)", file=sys.stderr, flush=True)
        return outcomes

    outcomes = with_certificates(config, work)
    print(
        f"imported {total} certificates for issuer {issuer_id}: {outcomes.new} new, "
        f"{outcomes.revoked} revoked, {outcomes.kept} already revoked, kept, "
        f"{outcomes.conflict} revoked otherwise in the database, kept, {outcomes.unchanged} unchanged; "
        f"{folded} duplicates merged",
        file=sys.stderr,
    )
    return 0


def _batches(items: Sequence[CertRecord], size: int) -> Iterator[tuple[int, Sequence[CertRecord]]]:
    for start in range(0, len(items), size):
        batch = items[start : start + size]
        yield start + len(batch), batch


def _refuse_future_revocations(records: Sequence[CertRecord]) -> None:
    limit = dt.datetime.now(dt.UTC) + CLOCK_SKEW
    for record in records:
        if record.revoked_at is not None and record.revoked_at > limit:
            raise UsageError(
                f"serial {record.serial:X}: revocation time {record.revoked_at.isoformat()} is in the future; "
                "nothing was imported"
            )


def _load_certificate(path: Path) -> x509.Certificate:
    data = path.read_bytes()
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
        return _index_records(path)
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


def _index_records(path: Path) -> list[CertRecord]:
    index = IndexFile(path, keep_expiry=True)
    index.load()  # malformed lines are logged with their line number and skipped
    not_after, good = index.not_after, Status.GOOD
    return [
        CertRecord(serial, status.status, status.revoked_at, status.reason, not_after(serial))
        if status.status is not good
        else CertRecord(serial, good, None, None, not_after(serial))
        for serial, status in index.items()
    ]
