"""Memory per cached entry, above the size of its DER.

In this process: the Responder that ``ocspd serve`` builds (``init_app`` on a
config made for the run) signs real responses (P-256 delegated responder by
default, random 128-bit serials as CAs issue them, SHA-1 CertIDs) and its
memory tier is filled with them under the responder's keys, (issuer id, hash
name, serial). Two figures:

- tracemalloc: bytes Python allocated for the filled tier (responses,
  Entry objects, header strings, keys, the LRU's bookkeeping) per entry,
  minus the average DER length;
- RSS: the growth of the process's resident set per entry, minus the same.

Responses are signed before either measurement starts; each measurement
then builds the entries from fresh copies of the DER, as the request path
does (the store returns new bytes, the signer returns new bytes).

    python bench/memory.py                 # 100,000 entries
    python bench/memory.py --entries 200000 --key-type rsa2048
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import linecache
import os
import secrets
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import common
from common import Row, log

from ocspd.app import RESPONDER, init_app
from ocspd.cache import ENTRY_OVERHEAD, Entry
from ocspd.config import load_config
from ocspd.pki import KEY_TYPES
from ocspd.protocol import CertId
from ocspd.status import CertStatus, Status


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000, help="entries in the memory tier (default 100,000)")
    parser.add_argument("--key-type", choices=KEY_TYPES, default="p256", help="responder key type")
    parser.add_argument("--serial-bits", type=int, default=128, help="size of the random serials (default 128)")
    parser.add_argument("--top", type=int, default=8, help="allocation sites to list (default 8)")
    parser.add_argument("--out", help="results name (default memory)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    n = args.entries

    with common.work_dir("memory", args.keep) as work:
        bench_pki = common.make_pki(work, key_type=args.key_type)
        config_path = bench_pki.write_config(
            work / "ocspd.toml", common.free_port(), cache=f'max_entries = {n * 2}\nmax_bytes = "8GiB"'
        )
        responder = init_app(load_config(config_path, environ={}))[RESPONDER]
        issuer = responder.issuers[bench_pki.issuer_id]
        serials = [secrets.randbits(args.serial_bits) | (1 << (args.serial_bits - 2)) for _ in range(n)]
        log(f"signing {n:,} responses ({args.key_type})")

        async def sign_all() -> list[Entry]:
            signed = []
            for i, serial in enumerate(serials):
                certid = CertId("sha1", bench_pki.name_hash, bench_pki.key_hash, serial)
                # Status versions come from a database sequence: one per certificate.
                status = CertStatus(Status.GOOD, version=1_000_000 + i)
                signed.append(await responder.sign_entry(issuer, certid, status))
            return signed

        signed = asyncio.run(sign_all())
        der_lengths = [len(e.der) for e in signed]
        avg_der = statistics.mean(der_lengths)
        issuer_id = bench_pki.issuer_id
        # Attributes that the responder shares between entries (status names, the
        # signer's fingerprint) stay shared; the others are copied, so every
        # entry owns its objects as it would in a server.
        slots = [s for s in Entry.__slots__ if hasattr(signed[0], s)]
        own = [s for s in slots if n < 2 or getattr(signed[0], s) is not getattr(signed[1], s)]
        log(f"per-entry attributes: {', '.join(own)}")

        def fresh(value: Any) -> Any:
            if isinstance(value, bytes):
                return bytes(bytearray(value))
            if isinstance(value, str):
                return "".join(list(value))
            if isinstance(value, float):
                return value + 0.0
            if isinstance(value, int) and not isinstance(value, bool):
                return int(str(value))
            if isinstance(value, dt.datetime):
                return value.replace()
            return value

        def fill() -> None:
            """Entries and keys made afresh (new DER bytes, strings, numbers), as requests make them."""
            for serial, entry in zip(serials, signed, strict=True):
                copy = Entry.__new__(Entry)
                for slot in slots:
                    value = getattr(entry, slot)
                    setattr(copy, slot, fresh(value) if slot in own else value)
                responder.memory.put(responder.key(issuer_id, "sha1", int(str(serial))), copy)

        # RSS first (tracemalloc's own bookkeeping would inflate it).
        responder.memory.clear()
        gc.collect()
        rss0 = rss_bytes()
        fill()
        gc.collect()
        rss1 = rss_bytes()
        if len(responder.memory) != n:
            raise SystemExit(f"the tier holds {len(responder.memory)} entries, not {n}: bounds too small?")
        responder.memory.clear()
        gc.collect()

        tracemalloc.start(1)
        gc.collect()
        before = tracemalloc.take_snapshot()
        traced0 = tracemalloc.get_traced_memory()[0]
        fill()
        gc.collect()
        traced1 = tracemalloc.get_traced_memory()[0]
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        held = len(responder.memory)
        accounted = responder.memory.bytes

    traced_per_entry = (traced1 - traced0) / held
    rss_per_entry = (rss1 - rss0) / held
    sites: list[dict[str, Any]] = []
    for stat in after.compare_to(before, "lineno")[: args.top]:
        frame = stat.traceback[0]
        name = Path(frame.filename)
        where = str(name.relative_to(common.REPO)) if name.is_relative_to(common.REPO) else name.name
        code = linecache.getline(frame.filename, frame.lineno).strip()
        sites.append({"site": f"{where}:{frame.lineno}", "code": code, "bytes_per_entry": stat.size_diff / held})
    for site in sites:
        log(f"  {site['bytes_per_entry']:7.1f} B/entry  {site['site']}  {site['code']}")
    # Where the bytes above the DER go, for one entry (sys.getsizeof); the
    # remainder of the traced figure is the LRU's dicts and bookkeeping.
    sample = signed[0]
    parts: dict[str, float] = {
        "bytes object of the DER, beyond the DER (header, SHA-256 for the ETag)": (
            sys.getsizeof(sample.blob) - len(sample.der)
        ),
        "Entry object (slots)": sys.getsizeof(sample),
        "per-entry attributes besides the DER": sum(sys.getsizeof(getattr(sample, s)) for s in own if s != "blob"),
        "key (one int packing serial, issuer, hash)": sys.getsizeof(responder.key(issuer_id, "sha1", serials[0])),
    }
    parts["cache structures (rest of the traced figure)"] = traced_per_entry - avg_der - sum(parts.values())
    for what, size in parts.items():
        log(f"  {size:7.1f} B/entry  {what}")
    rows = [
        Row.make(
            f"memory per entry above DER (tracemalloc, {held:,} entries)",
            traced_per_entry - avg_der,
            None,
            unit="B",
            target="<= 300",
            ratio=False,
        ),
        Row.make(
            "memory per entry above DER (RSS delta)",
            rss_per_entry - avg_der,
            None,
            unit="B",
            target="<= 300",
            ratio=False,
        ),
        Row.make("average DER of an entry", avg_der, None, unit="B"),
        Row.make(
            "max_bytes accounting per entry above DER (cache.ENTRY_OVERHEAD)",
            accounted / held - avg_der,
            None,
            unit="B",
        ),
    ]
    details = {
        "entries": held,
        "key_type": args.key_type,
        "serial_bits": args.serial_bits,
        "avg_der_bytes": avg_der,
        "traced_bytes_per_entry": traced_per_entry,
        "rss_bytes_per_entry": rss_per_entry,
        "entry_overhead_constant": ENTRY_OVERHEAD,
        "breakdown_bytes_per_entry": parts,
        "per_entry_attributes": own,
        "top_allocation_sites": sites,
    }
    common.report(args.out or "memory", rows, details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
