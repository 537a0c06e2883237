"""Responder keys in a PKCS#11 token (SoftHSM2) against the same keys from files (issue 16).

One SoftHSM2 of the run's own (a token directory and configuration in the
temporary directory, tests/softhsm.py) gets the delegated responder key of
each ``--key-types`` PKI before any process loads the PKCS#11 module
(SoftHSM2 reads ``SOFTHSM2_CONF`` once, and sees no token made later; this
process never loads it, every process it starts gets ``SOFTHSM2_CONF``).
Each figure is the token key's against the key file's, measured in the same
run, alternating (file first in odd runs, token first in even ones):

1. signing: ``Signer.sign_async`` with the token key from ``--tasks``
   concurrent tasks (default ``--sessions``, the token's sessions and
   signing threads) against ``Signer.sign`` with the key file, for
   ``--sign-seconds`` each, in a child process (a token that hangs cannot
   hang the bench); signatures per second and the process's CPU (every
   thread) per signature;
2. cold misses: two ``ocspd serve`` (index.txt; one with the token key, one
   with the key file), a different serial with every request (serials not in
   index.txt: signed "unknown" answers, each a miss), the load tool the other
   scripts use (wrk, else bench/loadgen.py); req/s and ocspd's CPU per miss;
3. hits: the same request again and again to the same two servers (answered
   from memory, the key untouched: the ratio should be about 1);
4. ``ocspd presign`` of ``--rows`` certificates (``ocspd cert import`` of an
   index.txt first) on a fresh PostgreSQL database each run, both hashes;
   signatures per second over presign's own elapsed time (its progress
   lines), and the wall time of the command (start-up, login included).

Failures are counted, not fatal: signatures that raised KeyUnavailable (the
signing runs reopen the token at once and go on), a signature or reopening
taking over 10 s (the token hung: the signing process is stopped),
``token_down`` events in the token server's log and the answers that were
not signed responses, presign runs that failed; the last row of each key
sums them (target 0).

PostgreSQL (presign only): --dsn, else $OCSPD_BENCH_DSN, else tests/pg.py's
(a throwaway cluster, or the local server). Needs softhsm2-util, SoftHSM2's
module (/usr/lib/softhsm/libsofthsm2.so) and python-pkcs11 (pip install
'.[pkcs11]'): without them the script says so in one line and exits 1.

    python bench/hsm.py                       # rsa2048,p256; 2 runs of 3 s; 2,000 rows: ~2.5 min
    python bench/hsm.py --key-types p256 --duration 1 --runs 1 --rows 200 --sign-seconds 0.2
    python bench/hsm.py --sessions 1          # [pkcs11] sessions (and signing tasks) 1
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
import load
import presign
from common import Row, log
from load import LoadResult, LoadSpec

from ocspd import pki
from ocspd.pki import KEY_TYPES

MODES = ("file", "token")
SERIAL_BLOCK = 10_000_000  # serials per load run: no run of misses asks a serial twice
KEY_NAMES = {"rsa2048": "RSA-2048", "p256": "P-256", "p384": "P-384", "ed25519": "Ed25519"}


def missing_softhsm() -> str | None:
    """Why the token cannot be used here, or None (without loading the PKCS#11 module)."""
    from tests.softhsm import MODULE

    if shutil.which("softhsm2-util") is None or not Path(MODULE).exists():
        return "SoftHSM2 is not installed (apt-get install softhsm2)"
    if importlib.util.find_spec("pkcs11") is None:
        return "python-pkcs11 is not installed (.venv/bin/pip install -e '.[pkcs11]')"
    return None


def alternating(run: int) -> tuple[str, ...]:
    """The order of the modes in run ``run`` (0-based): file first, then token first, ..."""
    return MODES if run % 2 == 0 else MODES[::-1]


@dataclass
class KeySetup:
    """One key type's PKI and the token object holding its responder key."""

    key_type: pki.KeyType
    bench_pki: common.BenchPki
    label: str  # the key's object in the token

    @property
    def name(self) -> str:
        return KEY_NAMES.get(self.key_type, self.key_type)


def write_config(
    setup: KeySetup,
    mode: str,
    name: str,
    port: int,
    *,
    sessions: int,
    pin_file: Path,
    database: str | None = None,
) -> Path:
    """An ocspd.toml serving the PKI (index.txt, or ``database``) with its key file or its token key."""
    from tests.softhsm import MODULE, key_uri

    bench_pki = setup.bench_pki
    path = bench_pki.write_config(
        bench_pki.directory / f"{name}-{mode}.toml", port, database=database, use_index=database is None
    )
    if mode == "token":
        text = path.read_text()
        key_line = f'responder_key = "{bench_pki.key_path.name}"\n'
        if key_line not in text:
            raise RuntimeError(f"no {key_line.strip()!r} line in {path}")
        token_lines = (
            f"responder_key = {json.dumps(key_uri(setup.label))}\n"
            f"pkcs11_module = {json.dumps(MODULE)}\npkcs11_pin_file = {json.dumps(str(pin_file))}\n"
        )
        path.write_text(text.replace(key_line, token_lines) + f"\n[pkcs11]\nsessions = {sessions}\n")
    return path


# -- 1. signing, in a process of its own ------------------------------------------------

SIGN_LINE = "HSM_SIGN "
HANG_SECONDS = 10.0  # a signature (or a reopening of the token) taking longer is taken as hung


@dataclass
class SignRun:
    mode: str
    run: int
    signatures: int = 0  # that succeeded
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the process, every thread (the token's signing threads included)
    failures: int = 0  # KeyUnavailable: the token failed, or was down when asked
    reopens: int = 0  # the token reopened after a failure (as ocspd's watch would)
    hung: bool = False  # a signature or a reopening did not return within HANG_SECONDS
    causes: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.signatures / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_seconds / self.signatures if self.signatures else float("nan")

    def cause(self, text: str) -> None:
        self.causes[text] = self.causes.get(text, 0) + 1

    def emit(self) -> None:
        print(SIGN_LINE + json.dumps(asdict(self)), flush=True)


def sign_worker(spec_path: Path) -> int:
    """``--sign-worker``: the signing runs of one key, in this process (a child of the bench, so that
    a token that hangs cannot hang the bench): one SIGN_LINE per run on stdout."""
    from ocspd.config import load_config
    from ocspd.exceptions import KeyUnavailable
    from ocspd.hsm import HsmError
    from ocspd.keys import load_signers
    from ocspd.protocol import CertId
    from ocspd.signer import Answer, Signer
    from ocspd.status import Status
    from ocspd.tokens import Tokens

    spec = json.loads(spec_path.read_text())
    seconds, tasks = float(spec["sign_seconds"]), int(spec["tasks"])
    name_hash, key_hash = bytes.fromhex(spec["name_hash"]), bytes.fromhex(spec["key_hash"])
    answer = (Answer(Status.GOOD),)
    tokens = Tokens(int(spec["sessions"]))
    signers: dict[str, Signer] = {
        mode: load_signers(load_config(spec["configs"][mode]), tokens)[spec["issuer"]] for mode in MODES
    }
    token_key = signers["token"].token_key
    if token_key is None or signers["file"].token_key is not None:
        raise SystemExit("the token config did not load a token key (or the file config did)")
    token = token_key.token
    serials = itertools.count(common.SERIAL_BASE)

    def certid() -> tuple[CertId]:
        return (CertId("sha1", name_hash, key_hash, next(serials)),)

    def window() -> tuple[dt.datetime, dt.datetime, dt.datetime]:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        return now, now, now + dt.timedelta(hours=24)

    def file_run(run: int) -> SignRun:
        signer, result = signers["file"], SignRun("file", run)
        produced_at, this_update, next_update = window()
        cpu0, start = time.process_time(), time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(20):
                signer.sign(certid(), answer, this_update, next_update, produced_at=produced_at)
            result.signatures += 20
        result.seconds, result.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu0
        return result

    async def token_run(run: int) -> SignRun:
        signer, result = signers["token"], SignRun("token", run)
        loop = asyncio.get_running_loop()
        reopening = asyncio.Lock()
        produced_at, this_update, next_update = window()
        cpu0, start = time.process_time(), time.perf_counter()
        deadline = start + seconds

        async def recover() -> None:
            """Reopen the token once (the other tasks wait), as ocspd's watch does, without its backoff."""
            async with reopening:
                if token.up:
                    return
                try:
                    await asyncio.wait_for(loop.run_in_executor(None, token.open), HANG_SECONDS)
                    result.reopens += 1
                except HsmError as exc:
                    result.cause(f"reopen: {exc}")
                    await asyncio.sleep(0.05)
                except TimeoutError:
                    result.hung = True

        async def task() -> None:
            while time.perf_counter() < deadline and not result.hung:
                signing = signer.sign_async(certid(), answer, this_update, next_update, produced_at=produced_at)
                try:
                    await asyncio.wait_for(signing, HANG_SECONDS)
                    result.signatures += 1
                except KeyUnavailable as exc:
                    result.failures += 1
                    result.cause(str(exc))
                    await recover()
                except TimeoutError:
                    result.hung = True

        await asyncio.gather(*(task() for _ in range(tasks)))
        result.seconds, result.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu0
        if result.hung:
            result.cause(f"a signature or reopening took over {HANG_SECONDS:g} s: the token hung")
            result.emit()
            os._exit(3)  # its thread is stuck in the module: no clean shutdown to wait for
        return result

    # A few signatures each first, one at a time: every session finds the key object once.
    produced_at, this_update, next_update = window()
    for _ in range(4):
        signers["file"].sign(certid(), answer, this_update, next_update, produced_at=produced_at)
        token_key.sign(b"warm-up")
    for run in range(int(spec["runs"])):
        for mode in alternating(run):
            (file_run(run) if mode == "file" else asyncio.run(token_run(run))).emit()
    tokens.close()
    return 0


def sign_runs(
    setup: KeySetup, pin_file: Path, work: Path, args: argparse.Namespace
) -> tuple[list[SignRun], str | None]:
    """The signing runs of one key type, in a child process (``--sign-worker``); (runs, what went wrong)."""
    bench_pki = setup.bench_pki
    configs = {
        mode: str(write_config(setup, mode, "sign", common.free_port(), sessions=args.sessions, pin_file=pin_file))
        for mode in MODES
    }
    spec = {
        "configs": configs,
        "issuer": bench_pki.issuer_id,
        "name_hash": bench_pki.name_hash.hex(),
        "key_hash": bench_pki.key_hash.hex(),
        "sessions": args.sessions,
        "tasks": args.tasks,
        "sign_seconds": args.sign_seconds,
        "runs": args.runs,
    }
    spec_path = work / f"sign-{setup.key_type}.json"
    spec_path.write_text(json.dumps(spec))
    command = [common.PYTHON, str(Path(__file__).resolve()), "--sign-worker", str(spec_path)]
    proc = load.start_process(f"sign-{setup.key_type}", command, work, env={"PYTHONPATH": str(common.REPO)})
    problem: str | None = None
    try:
        proc.popen.wait(args.runs * 2 * (args.sign_seconds + HANG_SECONDS) + 60)
    except subprocess.TimeoutExpired:
        problem = "the signing process did not finish in time"
    finally:
        code = load.stop_process(proc)
    output = proc.log_path.read_text(errors="replace")
    runs = [SignRun(**json.loads(line[len(SIGN_LINE) :])) for line in output.splitlines() if line.startswith(SIGN_LINE)]
    if problem is None and code != 0:
        problem = "the token hung" if any(r.hung for r in runs) else f"the signing process exited with {code}"
    if problem is not None:
        log(f"sign {setup.name}: {problem}:\n{proc.log_tail(8)}")
    for r in runs:
        trouble = f", {r.failures} failures, {r.reopens} reopenings" if r.failures or r.hung else ""
        log(
            f"sign {setup.name} {r.mode:5} run {r.run + 1}: {r.rate:8.0f}/s, {r.cpu_us:6.0f} us CPU per signature"
            f"{trouble}{', HUNG' if r.hung else ''}"
        )
    return runs, problem


# -- 2. and 3. ocspd serve: cold misses and hits ---------------------------------------------


@dataclass
class ServeRun:
    mode: str
    kind: str  # "miss" or "hit"
    run: int
    result: LoadResult
    ocspd_cpu_us: float  # ocspd's CPU per request
    token_down: int = 0  # "token_down" events ocspd logged during the run
    token_reopened: int = 0

    @property
    def failed(self) -> int:
        """Answers that were not a signed response (tryLater...) or did not come."""
        return (self.result.ocsp_errors or 0) + sum(self.result.errors.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _events(proc: load.Process) -> tuple[int, int]:
    text = proc.log_path.read_text(errors="replace")
    return text.count("token_down"), text.count("token_reopened")


def serve_runs(
    setup: KeySetup, pin_file: Path, work: Path, client: str, args: argparse.Namespace
) -> tuple[list[ServeRun], str | None]:
    """Both servers (key file, token key) side by side; misses, then hits, alternating in each run."""
    bench_pki = setup.bench_pki
    env = {**load.OCSPD_ENV, "SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"]}
    ports = {mode: common.free_port() for mode in MODES}
    configs = {
        mode: write_config(setup, mode, "serve", ports[mode], sessions=args.sessions, pin_file=pin_file)
        for mode in MODES
    }
    hit_der = bench_pki.request_for(bench_pki.leaves[0].cert.serial_number)
    template = common.serial_template(bench_pki)
    blocks = itertools.count(1)  # block 0: the warm-up's serials
    runs: list[ServeRun] = []
    problem: str | None = None
    with ExitStack() as stack:
        procs = {
            mode: stack.enter_context(
                load.running(
                    f"ocspd-{setup.key_type}-{mode}", load.ocspd_args(configs[mode]), work,
                    load.port_open(ports[mode]), env=env,
                )
            )
            for mode in MODES
        }  # fmt: skip
        for mode in MODES:
            port = ports[mode]
            for i in range(20):  # misses of serials outside the measured ones (one at a time)
                warm = common.ocsp_post(port, template.der(i))
                if warm.status != 200 or common.certificate_status(warm.body) != "unknown":
                    raise SystemExit(f"ocspd ({mode}) answered {warm.status} {warm.body[:40]!r} to an unknown serial")
            first = common.ocsp_post(port, hit_der)
            if first.status != 200 or common.certificate_status(first.body) != "good":
                raise SystemExit(f"ocspd ({mode}) answered {first.status} {first.body[:40]!r}")
            if common.ocsp_post(port, hit_der).body != first.body:
                raise SystemExit(f"ocspd ({mode}) answered the same request with other bytes: not a memory hit")
        for kind in ("miss", "hit"):
            for run in range(args.runs):
                for mode in alternating(run):
                    load_spec = LoadSpec(
                        port=ports[mode], connections=args.connections, threads=args.threads,
                        duration=args.duration, check_body=True,
                    )  # fmt: skip
                    if kind == "miss":
                        base = template.base + next(blocks) * SERIAL_BLOCK
                        if base + SERIAL_BLOCK > common.SERIAL_LIMIT:
                            raise SystemExit("out of 4-octet serials: fewer runs")
                        load_spec.template = common.SerialTemplate(template.prefix, template.suffix, base)
                    else:
                        load_spec.body = hit_der
                    proc = procs[mode]
                    cpu0, (down0, reopened0) = common.cpu_seconds(proc.pid), _events(proc)
                    result = load.run_load(load_spec, client, work, f"{kind}-{setup.key_type}-{mode}")
                    cpu_us = (common.cpu_seconds(proc.pid) - cpu0) * 1e6 / max(result.requests, 1)
                    down, reopened = _events(proc)
                    runs.append(ServeRun(mode, kind, run, result, cpu_us, down - down0, reopened - reopened0))
                    trouble = (
                        f"  token_down {down - down0}, token_reopened {reopened - reopened0}" if down > down0 else ""
                    )
                    log(f"{kind} {setup.name} {mode:5} run {run + 1}: {result.brief()}  ocspd cpu {cpu_us:.0f} us/req"
                        f"{trouble}")  # fmt: skip
        for mode, proc in procs.items():
            if proc.popen.poll() is not None:
                problem = f"ocspd ({mode}) exited during the runs"
                log(f"{problem}:\n{proc.log_tail()}")
    return runs, problem


# -- 4. ocspd presign --------------------------------------------------------------------


@dataclass
class PresignRun:
    mode: str
    run: int
    signed: int  # over both hashes
    elapsed: float  # presign's own last elapsed= (from its start, after loading keys)
    wall: float  # the command, start to exit
    import_seconds: float
    failure: str = ""  # the command failed (or timed out): its last lines

    @property
    def rate(self) -> float:
        return self.signed / self.elapsed if self.elapsed > 0 and not self.failure else float("nan")


def presign_runs(
    setup: KeySetup, server: common.Postgres, pin_file: Path, args: argparse.Namespace
) -> list[PresignRun]:
    """``ocspd cert import`` then ``ocspd presign`` on a fresh database, key file and token key alternating."""
    bench_pki = setup.bench_pki
    work = bench_pki.directory
    index = work / "presign-index.txt"
    presign.write_index(index, args.rows, 50)
    tree = presign.Tree("this", common.REPO, common.PYTHON, "")  # its env() keeps SOFTHSM2_CONF (os.environ)
    runs: list[PresignRun] = []
    for run in range(args.runs):
        for mode in alternating(run):
            name = f"{setup.key_type}-{mode}-{run}"
            failure, imported, wall = "", 0.0, float("nan")
            with common.fresh_database(server, "hsm") as dsn:
                config = write_config(
                    setup, mode, "presign", common.free_port(), sessions=args.sessions, pin_file=pin_file,
                    database=dsn,
                )  # fmt: skip
                base = ["--config", str(config), "--issuer", bench_pki.issuer_id]
                imported, _ = presign.run_cli(
                    tree, ["cert", "import", *base, str(index)], work, f"import-{name}", args.timeout
                )
                started = time.perf_counter()
                try:
                    wall, _ = presign.run_cli(tree, ["presign", *base], work, f"presign-{name}", args.timeout)
                except SystemExit as exc:  # presign failed: its output says how far it got
                    wall, failure = time.perf_counter() - started, str(exc).strip().splitlines()[-1]
            points = presign.parse_progress((work / f"presign-{name}.log").read_text(errors="replace"))
            result = PresignRun(
                mode, run, points[-1].cumulative if points else 0, points[-1].elapsed if points else 0.0, wall,
                imported, failure,
            )  # fmt: skip
            runs.append(result)
            if failure:
                log(
                    f"presign {setup.name} {mode:5} run {run + 1}: FAILED after {result.signed:,} signatures: {failure}"
                )
                continue
            if result.signed < args.rows * 2:
                log(f"WARNING: presign ({mode}) signed {result.signed} for {args.rows} rows and 2 hashes")
            log(
                f"presign {setup.name} {mode:5} run {run + 1}: {result.signed:,} signed in {result.elapsed:.1f} s"
                f" = {result.rate:,.0f}/s (wall {wall:.1f} s, import {imported:.1f} s)"
            )
    return runs


# -- the table ---------------------------------------------------------------------------


def mean(values: Sequence[float]) -> float:
    """The mean of the figures there are (NaN ones left out); NaN for none."""
    finite = [v for v in values if v == v]
    return statistics.mean(finite) if finite else float("nan")


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def _of(runs: Sequence[Any], mode: str, **match: str) -> list[Any]:
    return [r for r in runs if r.mode == mode and all(getattr(r, k) == v for k, v in match.items())]


def per_run_ratios(token: Sequence[float], file: Sequence[float]) -> str:
    ratios = [f"{t / f:.2f}" if f and t == t and f == f else "-" for t, f in zip(token, file, strict=False)]
    return "token/file per run " + ", ".join(ratios)


def key_rows(
    setup: KeySetup,
    signs: list[SignRun],
    serves: list[ServeRun],
    presigns: list[PresignRun],
    problems: list[str],
    args: argparse.Namespace,
) -> Iterator[Row]:
    name = setup.name
    token, file = _of(signs, "token"), _of(signs, "file")
    sign_failures = sum(r.failures for r in token)
    tasks = f"{args.tasks} task" + ("s" if args.tasks > 1 else "")
    yield Row.make(
        f"{name} sign: Signer.sign_async, token, {tasks} vs Signer.sign, file, /s",
        mean([r.rate for r in token]), mean([r.rate for r in file]), unit="/s", baseline_name="file",
        note=per_run_ratios([r.rate for r in token], [r.rate for r in file])
        + (f"; {sign_failures} signatures failed" if sign_failures else ""),
    )  # fmt: skip
    yield Row.make(
        f"{name} sign: CPU per signature (the process, all threads), token vs file",
        mean([r.cpu_us for r in token]), mean([r.cpu_us for r in file]), unit="us", baseline_name="file",
    )  # fmt: skip
    for kind, what in (("miss", "cold miss (index.txt, a new serial each)"), ("hit", "hit (memory)")):
        token_runs, file_runs = _of(serves, "token", kind=kind), _of(serves, "file", kind=kind)
        t_rps, f_rps = [r.result.rps for r in token_runs], [r.result.rps for r in file_runs]
        failed = {mode: sum(r.failed for r in _of(serves, mode, kind=kind)) for mode in MODES}
        note = per_run_ratios(t_rps, f_rps) + "".join(
            f"; {n} {mode} answers were errors (tryLater) or failed" for mode, n in failed.items() if n
        )
        yield Row.make(
            f"{name} {what}: token vs file, req/s", mean(t_rps), mean(f_rps), unit="/s", baseline_name="file",
            target=">= 0.9" if kind == "hit" else "", note=note,
        )  # fmt: skip
        yield Row.make(
            f"{name} {kind}: ocspd CPU per request, token vs file",
            mean([r.ocspd_cpu_us for r in token_runs]), mean([r.ocspd_cpu_us for r in file_runs]),
            unit="us", baseline_name="file", target="<= 1.1" if kind == "hit" else "",
        )  # fmt: skip
        if kind == "miss":
            yield Row.make(
                f"{name} miss p50, token vs file", median([r.result.p50_ms for r in token_runs]),
                median([r.result.p50_ms for r in file_runs]), unit="ms", baseline_name="file",
                note=f"p99 token {max((r.result.p99_ms for r in token_runs), default=float('nan')):.1f} ms,"
                f" file {max((r.result.p99_ms for r in file_runs), default=float('nan')):.1f} ms",
            )  # fmt: skip
    token_p, file_p = _of(presigns, "token"), _of(presigns, "file")
    presign_failed = sum(1 for r in token_p if r.failure)
    yield Row.make(
        f"{name} presign ({args.rows:,} rows, 2 hashes): token vs file, signatures/s",
        mean([r.rate for r in token_p]), mean([r.rate for r in file_p]), unit="/s", baseline_name="file",
        note=per_run_ratios([r.rate for r in token_p], [r.rate for r in file_p])
        + (f"; {presign_failed} of {len(token_p)} token runs failed" if presign_failed else ""),
    )  # fmt: skip
    yield Row.make(
        f"{name} presign: wall time of the command (start-up, key loading included), token vs file",
        mean([r.wall for r in token_p if not r.failure]), mean([r.wall for r in file_p]), unit="s",
        baseline_name="file",
    )  # fmt: skip
    down = sum(r.token_down for r in serves)
    served_failures = sum(r.failed for r in _of(serves, "token"))
    hung = any(r.hung for r in signs)
    parts = [
        f"sign: {sign_failures} KeyUnavailable, {sum(r.reopens for r in token)} reopenings"
        + (", HUNG" if hung else ""),
        f"serve: {down} token_down, {served_failures} answers failed",
        f"presign: {presign_failed} of {len(token_p)} runs failed",
        *problems,
    ]
    yield Row.make(
        f"{name} token failures (signatures failed, token_down events, presign runs failed)",
        sign_failures + down + presign_failed + int(hung), None, target="<= 0", ratio=False, note="; ".join(parts),
    )  # fmt: skip


def key_types(text: str) -> list[pki.KeyType]:
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in chosen if t not in KEY_TYPES]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"use some of {', '.join(KEY_TYPES)} (comma-separated)")
    return [t for t in KEY_TYPES if t in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, duration=3.0)
    parser.add_argument("--runs", type=int, default=2, help="alternations of key file and token key (default 2)")
    parser.add_argument("--rows", type=int, default=2000, help="certificates presign signs for (default 2,000)")
    parser.add_argument(
        "--key-types", type=key_types, default="rsa2048,p256", help="comma-separated (default rsa2048,p256)"
    )
    parser.add_argument("--sessions", type=int, default=2, help="[pkcs11] sessions of the token (default 2)")
    parser.add_argument("--tasks", type=int, default=0, help="concurrent sign_async tasks (default: --sessions)")
    parser.add_argument("--sign-seconds", type=float, default=1.0, help="length of each signing run (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per CLI command (default 60)")
    parser.add_argument("--dsn", help="PostgreSQL server to create the presign databases on (default: see above)")
    parser.add_argument("--sign-worker", help=argparse.SUPPRESS)  # the signing runs' child process
    args = parser.parse_args(argv)
    if args.sign_worker:
        return sign_worker(Path(args.sign_worker))
    if args.runs < 1 or args.rows < 2 or args.sessions < 1 or args.tasks < 0 or args.duration <= 0:
        parser.error("--runs and --sessions must be at least 1, --rows at least 2, --duration above 0")
    args.tasks = args.tasks or args.sessions
    why = missing_softhsm()
    if why is not None:
        raise SystemExit(why)
    from tests.softhsm import SoftHsm

    started = time.perf_counter()
    client = load.choose_client(args.client)
    details: dict[str, Any] = {
        "client": client, "duration": args.duration, "runs": args.runs, "rows": args.rows,
        "key_types": args.key_types, "sessions": args.sessions, "tasks": args.tasks,
        "sign_seconds": args.sign_seconds, "connections": args.connections, "hang_seconds": HANG_SECONDS,
        "per_key": {},
    }  # fmt: skip
    rows: list[Row] = []
    with common.work_dir("hsm", args.keep) as work:
        # The token and every key in it before any process loads the PKCS#11 module (this one never does).
        hsm = SoftHsm(work / "softhsm")
        hsm.init_token("ocsp")
        setups: list[KeySetup] = []
        for n, key_type in enumerate(args.key_types, start=1):
            setup = KeySetup(key_type, common.make_pki(work / key_type, key_type=key_type), f"responder-{key_type}")
            hsm.import_key(setup.bench_pki.responder.key, setup.label, f"{n:02x}")
            setups.append(setup)
        os.environ.update(hsm.env)  # every process started from here on inherits it
        log(f"SoftHSM2 token with {len(setups)} keys ({', '.join(s.name for s in setups)}); {client} load")
        problems: dict[str, list[str]] = {s.key_type: [] for s in setups}
        signs: dict[str, list[SignRun]] = {}
        serves: dict[str, list[ServeRun]] = {}
        for setup in setups:
            signs[setup.key_type], problem = sign_runs(setup, hsm.pin_file, work, args)
            problems[setup.key_type] += [f"sign: {problem}"] if problem else []
        for setup in setups:
            serves[setup.key_type], problem = serve_runs(setup, hsm.pin_file, work, client, args)
            problems[setup.key_type] += [f"serve: {problem}"] if problem else []
        with common.postgres(args.dsn) as server:
            details["postgres"] = server.origin
            presigns = {s.key_type: presign_runs(s, server, hsm.pin_file, args) for s in setups}

    for setup in setups:
        kt = setup.key_type
        rows += key_rows(setup, signs[kt], serves[kt], presigns[kt], problems[kt], args)
        details["per_key"][kt] = {
            "sign": [{**asdict(r), "rate": r.rate, "cpu_us": r.cpu_us} for r in signs[kt]],
            "serve": [r.to_json() for r in serves[kt]],
            "presign": [{**asdict(r), "rate": r.rate} for r in presigns[kt]],
            "problems": problems[kt],
        }
    common.report(args.out or "hsm", rows, details, started)
    notes = [f"- {r.measure}: {r.note}" for r in rows if r.note]
    if notes:
        print("\nnotes (also in the JSON):\n" + "\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
