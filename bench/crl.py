"""The CRL status source (issue 15): building, applying and holding a CRL of N entries.

For each size (100,000 and 1,000,000 entries by default), in this process:

- build a CRL as a CA issues them: our own DER encoder for the TBSCertList
  (cryptography's CertificateRevocationListBuilder takes ~200 s for a
  million entries), 20-octet random positive serials, revocation times over
  the past year (UTCTime), a third of the entries with a reasonCode, an
  AuthorityKeyIdentifier, a CRLNumber and a nextUpdate (``--no-next-update``:
  none), signed with the P-256 key of a CA made with ``ocspd.pki.make_ca``;
  and a second CRL, the next number, with one entry added. The encoder is
  checked byte for byte against cryptography's builder on a few entries.

Then, for each size, in a fresh subprocess (so that its RSS says what the
CRL costs, nothing else):

- apply: wall time of ``crl.load`` + ``crl.verify``, what the daemon runs in
  a worker thread (ocspd/crlsource.py); then of the second CRL over the
  first (``in_use``), and of ``crl.changed_serials`` between the two (the
  one added serial: what a new CRL invalidates), and from none (the first
  CRL: every serial);
- RSS (VmRSS, VmHWM of /proc/self/status; the peak reset through
  /proc/self/clear_refs first) before loading, and after verify with the
  parsed cryptography object dropped and ``gc.collect()``: bytes per entry
  held (the TrustedCrl) and at the peak; beside them what ``sys.getsizeof``
  counts for the dict, its keys and values;
- the baseline of the same run: cryptography alone (load, the signature
  check, a dict of serial -> revocation date from iterating the entries),
  alternating with ocspd's load + verify in ``--rounds`` rounds: the ratio
  is what ocspd's checks and packing add.

    python bench/crl.py                          # 100,000 and 1,000,000 entries
    python bench/crl.py --entries 1000 --rounds 1   # about a second
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
from common import Row, log
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ocspd import crl, der, pki

SIZES = (100_000, 1_000_000)
SERIAL_OCTETS = 20
# RFC 5280 reason codes a CA puts on an end-entity's entry in a complete CRL.
REASON_CODES = (1, 3, 4, 5)  # keyCompromise, affiliationChanged, superseded, cessationOfOperation
REASON_FLAGS = {
    1: x509.ReasonFlags.key_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
}
ECDSA_SHA256 = der.sequence(der.oid("1.2.840.10045.4.3.2"))  # no parameters (RFC 5758 §3.2)
REASON_EXTENSIONS = {  # Extensions of one entry: reasonCode, not critical (DEFAULT FALSE: omitted)
    code: der.sequence(der.sequence(der.oid("2.5.29.21"), der.octet_string(der.tlv(0x0A, bytes((code,))))))
    for code in REASON_CODES
}
SAMPLES = 64  # entries the subprocess checks against what was encoded


# -- building -----------------------------------------------------------------------------


def utc_time(seconds: int) -> bytes:
    """UTCTime (RFC 5280 §4.1.2.5.1: years 1950 to 2049) of POSIX ``seconds``."""
    moment = time.gmtime(seconds)
    if not 1950 <= moment.tm_year < 2050:
        raise ValueError("UTCTime covers 1950 to 2049 only")
    return b"\x17\x0d" + time.strftime("%y%m%d%H%M%SZ", moment).encode("ascii")


@dataclass
class Entries:
    """The revoked certificates of a CRL: the encoded entries, and what they say."""

    der: list[bytes]  # one revokedCertificates element each
    serials: list[int]
    times: list[int]  # POSIX seconds
    codes: list[int | None]  # reasonCode, None: none

    def encode_one(self, serial: bytes, at: int, code: int | None) -> None:
        body = b"\x02" + bytes((len(serial),)) + serial + utc_time(at)
        if code is not None:
            body += REASON_EXTENSIONS[code]
        self.der.append(b"\x30" + bytes((len(body),)) + body)  # under 128 octets: a short length
        self.serials.append(int.from_bytes(serial, "big"))
        self.times.append(at)
        self.codes.append(code)


def make_entries(n: int, rng: random.Random, until: int) -> Entries:
    """``n`` entries with distinct 20-octet positive serials, revoked over the year before ``until``, in
    the order a CA appends them (by revocation time); every third with a reasonCode."""
    raw = rng.randbytes(SERIAL_OCTETS * n)
    times = sorted(rng.randrange(until - 365 * 86400, until - 3600) for _ in range(n))
    entries = Entries([], [], [], [])
    for i in range(n):
        serial = raw[SERIAL_OCTETS * i : SERIAL_OCTETS * (i + 1)]
        # Positive and minimal: a first octet of 0x01..0x7f.
        serial = bytes(((serial[0] & 0x7F) or 1,)) + serial[1:]
        code = REASON_CODES[rng.randrange(len(REASON_CODES))] if i % 3 == 0 else None
        entries.encode_one(serial, times[i], code)
    if len(set(entries.serials)) != n:
        raise RuntimeError("two random serials collided: another --seed")
    return entries


def tbs_cert_list(ca: pki.Identity, revoked: bytes, *, number: int, this_update: int, next_update: int | None) -> bytes:
    """A v2 TBSCertList (RFC 5280 §5.1) of ``revoked`` (the encoded entries, joined)."""
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    extensions = der.sequence(
        der.sequence(der.oid("2.5.29.35"), der.octet_string(der.sequence(der.tlv(0x80, ski)))),  # AKI keyIdentifier
        der.sequence(der.oid("2.5.29.20"), der.octet_string(der.integer(number))),  # CRLNumber
    )
    return der.sequence(
        der.integer(1),  # v2
        ECDSA_SHA256,
        ca.cert.subject.public_bytes(),
        utc_time(this_update),
        utc_time(next_update) if next_update is not None else b"",
        der.tlv(0x30, revoked) if revoked else b"",  # revokedCertificates (omitted when empty)
        der.explicit(0, extensions),
    )


def ec_key(ca: pki.Identity) -> ec.EllipticCurvePrivateKey:
    if not isinstance(ca.key, ec.EllipticCurvePrivateKey):
        raise TypeError("the bench CA has a P-256 key")
    return ca.key


def certificate_list(ca: pki.Identity, tbs: bytes) -> bytes:
    """The signed CertificateList: TBSCertList, ecdsa-with-SHA256, the signature as a BIT STRING."""
    signature = ec_key(ca).sign(tbs, ec.ECDSA(hashes.SHA256()))
    return der.sequence(tbs, ECDSA_SHA256, der.tlv(0x03, b"\x00" + signature))


def check_encoder(ca: pki.Identity, rng: random.Random, now: int) -> None:
    """Our TBSCertList against cryptography's builder, byte for byte, on a few entries."""
    entries = make_entries(7, rng, now)
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(dt.datetime.fromtimestamp(now, dt.UTC))
        .next_update(dt.datetime.fromtimestamp(now + 7 * 86400, dt.UTC))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for serial, at, code in zip(entries.serials, entries.times, entries.codes, strict=True):
        revoked = x509.RevokedCertificateBuilder().serial_number(serial)
        revoked = revoked.revocation_date(dt.datetime.fromtimestamp(at, dt.UTC))
        if code is not None:
            revoked = revoked.add_extension(x509.CRLReason(REASON_FLAGS[code]), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    theirs = builder.sign(ec_key(ca), hashes.SHA256()).tbs_certlist_bytes
    ours = tbs_cert_list(ca, b"".join(entries.der), number=1, this_update=now, next_update=now + 7 * 86400)
    if ours != theirs:
        raise RuntimeError("our TBSCertList differs from cryptography's")


@dataclass
class Built:
    der1: bytes
    der2: bytes
    added: int  # the serial the second CRL adds
    samples: list[tuple[int, int, int | None]]  # (serial, time, code) of some entries of the first
    seconds_entries: float
    seconds_encode_sign: float  # both CRLs


def build(ca: pki.Identity, n: int, rng: random.Random, now: int, next_update: bool) -> Built:
    """The first CRL (number 1, an hour ago) of ``n`` entries, and the next (number 2, now) with one more."""
    t0 = time.perf_counter()
    entries = make_entries(n + 1, rng, now - 3600)
    t1 = time.perf_counter()
    # The last entry (the latest revocation) is the one the second CRL adds.
    revoked = b"".join(entries.der[:n])
    week = 7 * 86400 if next_update else None
    this1, this2 = now - 3600, now
    tbs1 = tbs_cert_list(ca, revoked, number=1, this_update=this1, next_update=this1 + week if week else None)
    der1 = certificate_list(ca, tbs1)
    revoked += entries.der[n]
    tbs2 = tbs_cert_list(ca, revoked, number=2, this_update=this2, next_update=this2 + week if week else None)
    der2 = certificate_list(ca, tbs2)
    del tbs1, tbs2, revoked
    t2 = time.perf_counter()
    picks = sorted(rng.sample(range(n), min(SAMPLES, n)))
    samples = [(entries.serials[i], entries.times[i], entries.codes[i]) for i in picks]
    return Built(der1, der2, entries.serials[n], samples, t1 - t0, t2 - t1)


# -- the subprocess: apply and hold --------------------------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, bytes."""
    values: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: 5 to /proc/self/clear_refs); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def malloc_trim() -> bool:
    """Give freed heap memory back to the system (glibc's malloc_trim); False where there is none."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this thread, result) of one call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    result = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.thread_time() - cpu, result


def apply(data: bytes, ca: x509.Certificate, *, in_use: crl.TrustedCrl | None = None) -> crl.TrustedCrl:
    """What the daemon runs in a worker thread (ocspd/crlsource.py ``_apply``)."""
    return crl.verify(crl.load(data), ca, in_use=in_use)


def cryptography_alone(data: bytes, ca: x509.Certificate) -> int:
    """The baseline: load, the signature check, serial -> revocation date over the entries."""
    parsed = x509.load_der_x509_crl(data)
    if not parsed.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise RuntimeError("bad signature")
    dates = {r.serial_number: r.revocation_date_utc for r in parsed}
    return len(dates)


def held_objects(entries: Mapping[int, int]) -> int:
    """What sys.getsizeof counts for the dict, its keys and its values."""
    return sys.getsizeof(entries) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in entries.items())


def child(directory: Path) -> int:
    meta = json.loads((directory / "meta.json").read_text())
    n, rounds = int(meta["entries"]), int(meta["rounds"])
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    der1 = (directory / "crl1.der").read_bytes()
    der2 = (directory / "crl2.der").read_bytes()
    out: dict[str, Any] = {}

    # 1. The first CRL, in a process that holds nothing else.
    gc.collect()
    out["peak_reset"] = reset_peak()
    before = proc_status()
    load_s, load_cpu, parsed = timed(crl.load, der1)
    verify_s, verify_cpu, trusted1 = timed(crl.verify, parsed, ca)
    listed = len(parsed)
    signature_s, _, valid = timed(parsed.is_signature_valid, ca.public_key())
    if not valid or listed != n or len(trusted1.entries) != n:
        raise RuntimeError(f"signature valid {valid}, {listed} entries parsed, {len(trusted1.entries)} kept, not {n}")
    del parsed
    gc.collect()
    held1 = proc_status()
    # What of that is memory freed but kept by malloc (a figure beside it, not what the daemon sees).
    out["trimmed"] = malloc_trim()
    out["rss_held_trimmed"] = proc_status()["VmRSS"]
    for serial, at, code in meta["samples"]:
        entry = trusted1.entry(serial)
        wanted = crl.CrlEntry(dt.datetime.fromtimestamp(at, dt.UTC), None if code is None else REASON_FLAGS[code])
        if entry != wanted:
            raise RuntimeError(f"entry {serial:X}: {entry}, encoded {wanted}")
    out.update(
        load_seconds=load_s,
        verify_seconds=verify_s,
        apply_cpu_seconds=load_cpu + verify_cpu,
        signature_seconds=signature_s,
        rss_before=before["VmRSS"],
        hwm_before=before["VmHWM"],
        rss_held=held1["VmRSS"],
        hwm_first=held1["VmHWM"],
        getsizeof_held=held_objects(trusted1.entries),
    )

    # 2. The next CRL over it (one entry added), both held a moment as during a swap.
    reset_peak()
    apply2_s, apply2_cpu, trusted2 = timed(apply, der2, ca, in_use=trusted1)
    gc.collect()
    held2 = proc_status()
    out.update(apply_next_seconds=apply2_s, apply_next_cpu_seconds=apply2_cpu, rss_both=held2["VmRSS"])
    out["hwm_next"] = held2["VmHWM"]

    # 3. What the next CRL invalidates: the one added serial; from none, every serial.
    incremental = []
    for _ in range(3):
        seconds, _, changed = timed(crl.changed_serials, (trusted1, None), (trusted2, None))
        if changed != {meta["added"]}:
            raise RuntimeError(f"changed_serials gave {len(changed)} serials, not the one added")
        incremental.append(seconds)
    first = []
    for _ in range(3):
        seconds, _, changed = timed(crl.changed_serials, None, (trusted2, None))
        if len(changed) != n + 1:
            raise RuntimeError(f"changed_serials from none gave {len(changed)} serials, not {n + 1}")
        first.append(seconds)
        del changed
    out.update(changed_one_seconds=incremental, changed_all_seconds=first)

    # The packed int against a record per entry (CrlEntry and its datetime; the reason enum is shared).
    value = next(iter(trusted1.entries.values()))
    record = crl.unpack(value)
    out["record_extra_bytes"] = sys.getsizeof(record) + sys.getsizeof(record.revoked_at) - sys.getsizeof(value)

    # 4. Rounds, alternating: ocspd's load + verify against cryptography alone.
    del trusted1
    gc.collect()
    ocspd_s, alone_s = [], []
    for r in range(rounds):
        for which in ("ocspd", "alone") if r % 2 == 0 else ("alone", "ocspd"):
            if which == "ocspd":
                seconds, _, result = timed(apply, der1, ca)
                ocspd_s.append(seconds)
            else:
                seconds, _, result = timed(cryptography_alone, der1, ca)
                alone_s.append(seconds)
            del result
            gc.collect()
    out.update(rounds_ocspd_seconds=ocspd_s, rounds_alone_seconds=alone_s)
    (directory / "result.json").write_text(json.dumps(out, indent=1))
    return 0


# -- the parent ----------------------------------------------------------------------------


def sizes(text: str) -> list[int]:
    values = [int(part) for part in text.replace(" ", "").split(",") if part]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive entry counts")
    return values


def rows_for(n: int, der_bytes: int, built: Built, res: dict[str, Any]) -> list[Row]:
    name = f"{n:,} entries"
    held = (res["rss_held"] - res["rss_before"]) / n
    trimmed = (res["rss_held_trimmed"] - res["rss_before"]) / n
    peak = (res["hwm_first"] - res["rss_before"]) / n
    ocspd_s = statistics.median(res["rounds_ocspd_seconds"]) if res["rounds_ocspd_seconds"] else None
    alone_s = statistics.median(res["rounds_alone_seconds"]) if res["rounds_alone_seconds"] else None
    rounds = len(res["rounds_ocspd_seconds"])
    return [
        Row.make(f"{name}: CRL DER size", der_bytes, None, unit="B", note=f"{der_bytes / n:.1f} B per entry"),
        Row.make(
            f"{name}: build, our DER encoder + P-256 signature (both CRLs)",
            built.seconds_entries + built.seconds_encode_sign,
            None,
            unit="s",
            note=f"entries {built.seconds_entries:.2f} s, join + sign {built.seconds_encode_sign:.2f} s",
        ),
        Row.make(
            f"{name}: apply, crl.load + crl.verify (fresh process)",
            res["load_seconds"] + res["verify_seconds"],
            None,
            unit="s",
            note=f"load {res['load_seconds']:.3f} s, verify {res['verify_seconds']:.3f} s"
            f" (signature {res['signature_seconds']:.3f} s); CPU {res['apply_cpu_seconds']:.2f} s",
        ),
        Row.make(
            f"{name}: apply the next CRL (one entry added, in_use=previous)",
            res["apply_next_seconds"],
            None,
            unit="s",
            note=f"CPU {res['apply_next_cpu_seconds']:.2f} s",
        ),
        Row.make(
            f"{name}: load + verify vs cryptography alone (load, signature, serial -> date)",
            ocspd_s,
            alone_s,
            unit="s",
            baseline_name="cryptography alone",
            note=f"median of {rounds}, rounds alternating",
        ),
        Row.make(
            f"{name}: changed_serials, one entry added",
            statistics.median(res["changed_one_seconds"]) * 1000,
            None,
            unit="ms",
            note="median of 3",
        ),
        Row.make(
            f"{name}: changed_serials from none (every serial)",
            statistics.median(res["changed_all_seconds"]) * 1000,
            None,
            unit="ms",
            note="median of 3",
        ),
        Row.make(
            f"{name}: RSS held per entry (TrustedCrl; parsed CRL dropped, gc)",
            held,
            None,
            unit="B",
            note=f"sys.getsizeof: {res['getsizeof_held'] / n:.0f} B per entry",
        ),
        Row.make(
            f"{name}: RSS held per entry after malloc_trim(0) (freed heap given back)",
            trimmed if res["trimmed"] else None,
            None,
            unit="B",
        ),
        Row.make(
            f"{name}: RSS peak per entry during load + verify",
            peak,
            None,
            unit="B",
            note="VmHWM reset before" if res["peak_reset"] else "VmHWM not reset: since the process started",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--entries", type=sizes, default=list(SIZES), help="comma-separated CRL sizes (default 100000,1000000)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of load + verify vs cryptography (default 2)")
    parser.add_argument("--no-next-update", action="store_true", help="CRLs without a nextUpdate")
    parser.add_argument("--seed", type=int, default=15, help="random serials and times (default 15)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per size's subprocess")
    parser.add_argument("--out", help="results name: bench/results/<out>.json (default crl)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (the CRLs, CA)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the subprocess of one size: its directory
    args = parser.parse_args(argv)
    if args.child:
        return child(Path(args.child))
    if args.rounds < 0:
        parser.error("--rounds must be 0 or more")
    started = time.perf_counter()
    rng = random.Random(args.seed)
    now = int(time.time())
    rows: list[Row] = []
    details: dict[str, Any] = {
        "rounds": args.rounds,
        "next_update": not args.no_next_update,
        "seed": args.seed,
        "reason_codes": list(REASON_CODES),
        "sizes": {},
    }
    with common.work_dir("crl", args.keep) as work:
        ca = pki.make_ca("ocspd bench CA crl", "p256")
        pki.write_cert(work / "ca.pem", ca.cert)
        check_encoder(ca, rng, now)
        log("our TBSCertList is cryptography's, byte for byte (7 entries)")
        for n in args.entries:
            directory = work / f"n{n}"
            directory.mkdir()
            log(f"building two CRLs of {n:,} entries")
            built = build(ca, n, rng, now, not args.no_next_update)
            (directory / "crl1.der").write_bytes(built.der1)
            (directory / "crl2.der").write_bytes(built.der2)
            (directory / "ca.pem").write_bytes((work / "ca.pem").read_bytes())
            meta = {"entries": n, "rounds": args.rounds, "added": built.added, "samples": built.samples}
            (directory / "meta.json").write_text(json.dumps(meta))
            der_bytes = len(built.der1)
            built.der1 = built.der2 = b""
            log(
                f"  built in {built.seconds_entries + built.seconds_encode_sign:.1f} s, {der_bytes:,} B;"
                " applying in a fresh process"
            )
            t0 = time.perf_counter()
            subprocess.run(
                [common.PYTHON, str(Path(__file__).resolve()), "--child", str(directory)],
                check=True,
                timeout=args.timeout,
            )
            res = json.loads((directory / "result.json").read_text())
            log(f"  subprocess done in {time.perf_counter() - t0:.1f} s")
            new_rows = rows_for(n, der_bytes, built, res)
            for row in new_rows:
                if row.note:
                    log(f"  {row.measure}: {row.note}")
            rows.extend(new_rows)
            details["sizes"][str(n)] = {
                "der_bytes": der_bytes,
                "der_bytes_per_entry": der_bytes / n,
                "build_entries_seconds": built.seconds_entries,
                "build_encode_sign_seconds": built.seconds_encode_sign,
                "subprocess_seconds": time.perf_counter() - t0,
                "rss_held_bytes_per_entry": (res["rss_held"] - res["rss_before"]) / n,
                "rss_peak_bytes_per_entry": (res["hwm_first"] - res["rss_before"]) / n,
                "rss_held_after_malloc_trim_bytes_per_entry": (res["rss_held_trimmed"] - res["rss_before"]) / n,
                "rss_both_held_bytes_per_entry": (res["rss_both"] - res["rss_before"]) / n,
                "rss_peak_next_bytes_per_entry": (res["hwm_next"] - res["rss_before"]) / n,
                "getsizeof_bytes_per_entry": res["getsizeof_held"] / n,
                "record_instead_of_packed_int_extra_bytes": res["record_extra_bytes"],
                **res,
            }
    common.report(args.out or "crl", rows, details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
