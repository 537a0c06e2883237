"""What a request of several CertIDs costs, against a single-CertID miss, in one process.

The Responder that ``ocspd serve`` builds (``init_app``, status from an
index.txt of ``--listed`` serials, a quarter of them revoked) answers
requests one after the other on an asyncio loop, parse included
(``parse_request`` then ``Responder.respond``): a single-CertID request for a
serial not in memory (a miss: status, one signature, into the memory tier)
and a request of ``--certids`` CertIDs for distinct serials (signed live,
never cached). Rounds alternate the two, so each ratio compares figures
taken seconds apart; the table gives the median of the rounds' ratios.
Costs are CPU seconds of this thread per request (wall time in the JSON).

Beside them, in the same rounds: the signer alone (``Signer.sign`` with one
CertID and with ``--certids``), the parse alone, and one bare ``sign()`` of
the key (the cost of one live signature).

    python bench/multi_certid.py                          # 16 CertIDs, P-256, 5 rounds of 1 s each
    python bench/multi_certid.py --certids 16 --key-type rsa2048 --rounds 5 --seconds 1

To measure another tree's code (e.g. before a change), run its copy of this
script from that tree: ``bench/`` puts its own repository first on sys.path.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import common
from asn1crypto import ocsp as asn1_ocsp
from common import Row, log
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp

import ocspd
from ocspd.app import INDEX_FILES, RESPONDER, init_app
from ocspd.config import load_config
from ocspd.pki import KEY_TYPES
from ocspd.protocol import CertId, parse_request
from ocspd.signer import Answer
from ocspd.status import Served, Status

FIRST_SERIAL = 0x7000_0000
REASONS = ("keyCompromise", "superseded", "cessationOfOperation", "")


def request_der(name_hash: bytes, key_hash: bytes, serials: list[int]) -> bytes:
    """An OCSPRequest with one SHA-1 CertID per serial, no nonce (cryptography builds only one)."""
    items = [
        {"req_cert": {"hash_algorithm": {"algorithm": "sha1"}, "issuer_name_hash": name_hash,
                      "issuer_key_hash": key_hash, "serial_number": serial}}
        for serial in serials
    ]  # fmt: skip
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": {"request_list": items}}).dump())


def index_lines(count: int) -> str:
    """``count`` index.txt lines from FIRST_SERIAL on: three good, then one revoked (reasons in turn)."""
    lines = []
    for i in range(count):
        serial = f"{FIRST_SERIAL + i:X}"
        if i % 4 == 3:
            reason = REASONS[(i // 4) % len(REASONS)]
            revocation = "260102030405Z" + (f",{reason}" if reason else "")
            lines.append(f"R\t301231235959Z\t{revocation}\t{serial}\tunknown\t/CN=leaf")
        else:
            lines.append(f"V\t301231235959Z\t\t{serial}\tunknown\t/CN=leaf")
    return "\n".join(lines) + "\n"


def bare_sign(key: Any) -> Callable[[bytes], bytes]:
    """One signature of the key over some bytes, as the signer makes it (the hash for the key type)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa = ec.ECDSA(hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256())
        return lambda data: key.sign(data, ecdsa)
    assert isinstance(key, rsa.RSAPrivateKey)
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    return lambda data: key.sign(data, pkcs1, sha256)


async def timed(seconds: float, step: Callable[[int], Awaitable[object] | object]) -> dict[str, float]:
    """Run ``step(i)`` for i = 0, 1, ... for about ``seconds``; CPU and wall seconds per step."""
    count = 0
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    deadline = wall0 + seconds
    while time.perf_counter() < deadline or count < 3:
        for _ in range(8):
            result = step(count)
            if asyncio.iscoroutine(result):
                await result
            count += 1
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    return {"count": count, "cpu_us": cpu / count * 1e6, "wall_us": wall / count * 1e6}


def code_version() -> str:
    """The commit of the ocspd measured, with "+changes" when its tree differs from it."""
    repo = str(Path(ocspd.__file__).resolve().parent.parent)
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "ocspd"], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


async def measure(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    n = args.certids
    bench_pki = common.make_pki(work, key_type=args.key_type)
    bench_pki.index_path.write_text(index_lines(args.listed))
    config_path = bench_pki.write_config(
        work / "ocspd.toml", common.free_port(), responses=f"max_certids_per_request = {max(16, n)}"
    )
    app = init_app(load_config(config_path, environ={}))
    responder = app[RESPONDER]
    app[INDEX_FILES][bench_pki.issuer_id].load()
    issuer = responder.issuers[bench_pki.issuer_id]
    signer = issuer.signer
    name_hash, key_hash = bench_pki.name_hash, bench_pki.key_hash
    # Requests made beforehand; single misses take serials in turn (the tier is emptied when they
    # come round again), each request of n CertIDs the next n.
    singles = [request_der(name_hash, key_hash, [FIRST_SERIAL + i]) for i in range(args.listed)]
    multis = [
        request_der(name_hash, key_hash, [FIRST_SERIAL + (j * n + k) % args.listed for k in range(n)])
        for j in range(max(1, args.listed // n))
    ]
    certids = [CertId("sha1", name_hash, key_hash, FIRST_SERIAL + k) for k in range(n)]
    answers = [Answer(Status.GOOD), Answer(Status.REVOKED, dt.datetime(2026, 1, 2, tzinfo=dt.UTC))] * n
    this_update = dt.datetime.now(dt.UTC).replace(microsecond=0)
    next_update = this_update + dt.timedelta(hours=24)
    sign = bare_sign(bench_pki.responder.key)
    tbs_like = signer.sign(certids[:1], answers[:1], this_update, next_update, produced_at=this_update)[:300]

    async def miss(i: int) -> None:
        if i % len(singles) == 0:
            responder.memory.clear()
        await responder.respond(parse_request(singles[i % len(singles)]))

    async def multi(i: int) -> None:
        await responder.respond(parse_request(multis[i % len(multis)]))

    # Each entry: what, the step. Measured in this order in every round.
    steps: list[tuple[str, Callable[[int], Any]]] = [
        ("single_miss", miss),
        ("multi", multi),
        ("sign_1", lambda i: signer.sign(certids[:1], answers[:1], this_update, next_update, produced_at=this_update)),
        ("sign_n", lambda i: signer.sign(certids, answers[:n], this_update, next_update, produced_at=this_update)),
        ("parse_1", lambda i: parse_request(singles[i % len(singles)])),
        ("parse_n", lambda i: parse_request(multis[i % len(multis)])),
        ("bare_sign", lambda i: sign(tbs_like)),
    ]
    # Once: a request of n CertIDs gets n SingleResponses, good and revoked among them.
    entry = (await responder.respond(parse_request(multis[0]))).entry
    singles_answered = list(ocsp.load_der_ocsp_response(entry.der).responses)
    if entry.status is not Served.MIXED or len(singles_answered) != n:
        raise SystemExit(f"unexpected answer to {n} CertIDs: {entry.status.value}, {len(singles_answered)} responses")
    for _, step in steps[:2]:  # warm both paths
        await timed(0.05, step)
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        figures = {name: await timed(args.seconds, step) for name, step in steps}
        rounds.append(figures)
        log(
            f"round {r + 1}: single miss {figures['single_miss']['cpu_us']:.0f} µs, "
            f"{n} CertIDs {figures['multi']['cpu_us']:.0f} µs "
            f"({figures['multi']['cpu_us'] / figures['single_miss']['cpu_us']:.2f}x), "
            f"bare sign() {figures['bare_sign']['cpu_us']:.0f} µs"
        )
    details = {
        "certids": n,
        "key_type": args.key_type,
        "listed_serials": args.listed,
        "ocspd": code_version(),
        "ocspd_path": ocspd.__file__,
        "response_bytes": {
            "1": len(signer.sign(certids[:1], answers[:1], this_update, next_update, produced_at=this_update)),
            str(n): len(signer.sign(certids, answers[:n], this_update, next_update, produced_at=this_update)),
        },
        "rounds": rounds,
    }
    return rounds, details


def median_of(rounds: list[dict[str, Any]], name: str) -> float:
    return statistics.median(float(r[name]["cpu_us"]) for r in rounds)


def median_ratio(rounds: list[dict[str, Any]], top: str, bottom: str) -> float:
    return statistics.median(float(r[top]["cpu_us"] / r[bottom]["cpu_us"]) for r in rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--certids", type=int, default=16, help="CertIDs in the large request (default 16)")
    parser.add_argument("--key-type", choices=KEY_TYPES, default="p256", help="responder key type (default p256)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each measuring everything (default 5)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per measure and round (default 1)")
    parser.add_argument("--listed", type=int, default=20_000, help="serials in index.txt (default 20,000)")
    parser.add_argument("--out", help="results name (default multi_certid)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.certids < 2 or args.listed < args.certids:
        parser.error("--certids must be at least 2 and at most --listed")
    started = time.perf_counter()
    with common.work_dir("multi-certid", args.keep) as work:
        rounds, details = asyncio.run(measure(args, work))
    n = args.certids
    version = details["ocspd"]

    def ratio_row(measure: str, top: str, bottom: str, baseline_name: str, target: str = "") -> Row:
        row = Row.make(
            measure,
            median_of(rounds, top),
            median_of(rounds, bottom),
            unit="µs",
            baseline_name=baseline_name,
            target=target,
        )
        row.value = median_ratio(rounds, top, bottom)  # the rounds' own ratios, not a ratio of medians
        row.met = common.check_target(row.value, target) if target else None
        return row

    rows = [
        ratio_row(
            f"{n}-CertID request ÷ single-CertID miss, CPU per request ({version})",
            "multi",
            "single_miss",
            "single miss",
            "<= 4",
        ),
        ratio_row(f"{n}-CertID request ÷ one bare sign() ({args.key_type})", "multi", "bare_sign", "sign()"),
        ratio_row(f"Signer.sign: {n} CertIDs ÷ 1", "sign_n", "sign_1", "1 CertID"),
        ratio_row(f"parse_request: {n} CertIDs ÷ 1", "parse_n", "parse_1", "1 CertID"),
    ]
    common.report(args.out or "multi_certid", rows, details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
