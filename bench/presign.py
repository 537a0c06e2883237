"""``ocspd presign`` straight after ``ocspd cert import`` (issue 14).

A fresh database (ocspd's migrations, nothing else: the table has never
been analysed) gets an OpenSSL index.txt of ``--rows`` certificates (every
``--revoked-every``-th revoked) through ``ocspd cert import``; ``ocspd
presign`` runs the moment the import returns. Presign prints one progress
line per batch of 500 (``presign issuer=.. hash=.. signed=N stored=..
certificates=.. elapsed=X.Ys``), and makes one pass over the certificates
per hash (SHA-1, then SHA-256; ``signed`` starts again with each pass, the
elapsed time does not). Per pass: the rate of its first ``--first``
signatures (default 5,000) against its steady rate (over the last half of
the pass), their ratio (target >= 0.8: no slow start while the planner's
statistics describe the empty tables of a new database), the slowest
window of ``--first`` signatures and the seconds spent below half the
steady rate; and presign's total time. The steady rate is not the last
half of the whole run: that is the second pass, whose start may be slow in
its own way (the first pass's stored responses are new to the planner).
Every ANALYZE and VACUUM of the two tables during presign, manual or
autovacuum's, is read from ``pg_stat_user_tables`` twice a second and
reported in seconds after presign's start.

``--tree DIR`` also runs the CLI of another checkout (``DIR/.venv/bin/python
-m ocspd`` with ``PYTHONPATH=DIR``, or ``--python``'s interpreter), each
round running both, in alternating order, each on a database of its own:
before and after in one run. PostgreSQL: --dsn, else $OCSPD_BENCH_DSN, else
tests/pg.py's (a throwaway cluster, or the local server).

    python bench/presign.py                               # 100,000 rows, this checkout, 1 round
    python bench/presign.py --tree /tmp/wt-before --rounds 2
    python bench/presign.py --tree /tmp/wt --python /tmp/venv/bin/python --rows 20000
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
from common import Row, log

PROGRESS = re.compile(
    r"^presign issuer=(?P<issuer>\S+) hash=(?P<hash>\S+) signed=(?P<signed>\d+) stored=(?P<stored>\d+)"
    r" certificates=(?P<total>\d+) elapsed=(?P<elapsed>[\d.]+)s\s*$"
)
RATIO_TARGET = ">= 0.8"


@dataclass(frozen=True)
class Tree:
    """A checkout whose ``ocspd`` CLI is run: its directory, interpreter and label."""

    label: str
    directory: Path
    python: str
    commit: str

    def env(self) -> dict[str, str]:
        """This process's environment without OCSPD_* settings, the checkout first on the path."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCSPD_") and k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(self.directory)
        return env

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "ocspd", *args]


@dataclass
class Progress:
    """One progress line of presign."""

    hash_alg: str
    signed: int  # of this hash
    stored: int
    certificates: int
    elapsed: float  # seconds since presign's start (all hashes)
    cumulative: int = 0  # signed over all hashes so far


@dataclass
class Pass:
    """One hash's pass over the certificates: its rates (signatures per second)."""

    hash_alg: str
    signed: int
    seconds: float
    first_n: int
    first_rate: float  # the first ``first_n`` signatures of the pass
    steady_rate: float  # the last half of the pass
    ratio: float  # first / steady
    slowest_rate: float  # the slowest window of ``--first`` signatures
    slow_seconds: float  # time in windows below half the steady rate
    windows: list[list[float]] = field(default_factory=list)  # [signed in the pass at the end, rate] each window


@dataclass
class Run:
    """One import + presign of one tree."""

    tree: str
    round: int
    rows: int
    import_seconds: float
    import_analysed: bool  # the import said "analysed the table"
    presign_wall_seconds: float  # the process, start to exit
    presign_elapsed: float  # presign's own last elapsed=
    signed: int
    passes: list[Pass]
    stats_before: dict[str, Any] = field(default_factory=dict)  # the tables as presign found them
    # (seconds after presign's start, table, "analyze" / "autoanalyze" / "vacuum" / "autovacuum")
    maintenance: list[tuple[float, str, str]] = field(default_factory=list)


def git(directory: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10, check=False)
    return done.stdout.strip()


def git_commit(directory: Path) -> str:
    return git(directory, "rev-parse", "--short", "HEAD") or "?"


def make_tree(label: str, directory: Path, python: str | None) -> Tree:
    """The tree, checked: its interpreter imports ocspd from ``directory``."""
    directory = directory.resolve()
    if python is None:
        own = directory / ".venv" / "bin" / "python"
        python = str(own) if own.exists() else common.PYTHON
    tree = Tree(label, directory, python, git_commit(directory))
    done = subprocess.run(
        [python, "-c", "import ocspd; print(ocspd.__file__)"],
        env=tree.env(),
        cwd="/",  # not this directory: it would come first on sys.path (the CLI runs in the work directory)
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    where = Path(done.stdout.strip() or "/nonexistent").resolve()
    if done.returncode != 0 or not where.is_relative_to(directory):
        raise SystemExit(f"{python} does not import ocspd from {directory} ({done.stdout.strip()}{done.stderr[-500:]})")
    return tree


def migrations(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "ocspd" / "sql" / "migrations").glob("*.sql"))


def write_index(path: Path, rows: int, revoked_every: int) -> None:
    """An OpenSSL index.txt of ``rows`` certificates, serials from SERIAL_BASE, expiring in a year."""
    expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(days=365)).strftime("%y%m%d%H%M%SZ")
    revoked_at = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%y%m%d%H%M%SZ")
    with path.open("w") as out:
        for i in range(rows):
            revoked = revoked_every > 0 and i % revoked_every == revoked_every - 1
            flag, revocation = ("R", f"{revoked_at},keyCompromise") if revoked else ("V", "")
            serial = f"{common.SERIAL_BASE + i:X}"
            out.write(f"{flag}\t{expiry}\t{revocation}\t{serial}\tunknown\t/CN=presign-{i}.bench.ocspd.test\n")


def run_cli(tree: Tree, args: list[str], work: Path, name: str, timeout: float) -> tuple[float, str]:
    """Run ``ocspd <args>`` of ``tree`` (cwd ``work``), stdout and stderr to ``work/<name>.log``;
    (seconds, output). Stopped by PID if it outlasts ``timeout``; a failure ends the bench."""
    log_path = work / f"{name}.log"
    with log_path.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            tree.command(*args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=tree.env(),
            cwd=work,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        seconds = time.perf_counter() - start
    output = log_path.read_text(errors="replace")
    if code != 0:
        tail = "\n".join(output.splitlines()[-20:])
        why = f"timed out after {timeout:g} s" if code is None else f"exited with {code}"
        raise SystemExit(f"{tree.label}: ocspd {' '.join(args[:2])} {why}:\n{tail}")
    return seconds, output


def parse_progress(output: str) -> list[Progress]:
    """Presign's progress lines, with the running count of signatures over all hashes."""
    points: list[Progress] = []
    done_before, last_hash, last_signed = 0, "", 0
    for line in output.splitlines():
        match = PROGRESS.match(line.strip())
        if match is None:
            continue
        hash_alg, signed = match["hash"], int(match["signed"])
        if points and hash_alg != last_hash:
            done_before += last_signed
        last_hash, last_signed = hash_alg, signed
        points.append(Progress(hash_alg, signed, int(match["stored"]), int(match["total"]), float(match["elapsed"])))
        points[-1].cumulative = done_before + signed
    return points


def rate(signed: int, seconds: float) -> float:
    return signed / seconds if seconds > 0 else float("nan")


def passes(points: list[Progress], first: int) -> list[Pass]:
    """Each hash's pass: the rate of its first ``first`` signatures against the rate over its last half.

    Not the last half of the whole run: that is the second hash's pass, whose
    start may be slow in its own way (the stored responses of the first pass
    are new to the planner).
    """
    if not points:
        raise SystemExit("presign printed no progress lines")
    result: list[Pass] = []
    origin = 0.0  # the pass starts where the previous one ended (the first at presign's start)
    for hash_alg in dict.fromkeys(p.hash_alg for p in points):
        mine = [p for p in points if p.hash_alg == hash_alg]
        total = mine[-1].signed
        n = min(first, max(total // 2, 1))
        head = next(p for p in mine if p.signed >= n)
        half = next(p for p in mine if p.signed >= total // 2)
        steady = rate(total - half.signed, mine[-1].elapsed - half.elapsed)
        # Window ends every n signatures; a short remainder at the end joins the last window.
        ends = [(0, origin)]
        for p in mine:
            if p.signed - ends[-1][0] >= n:
                ends.append((p.signed, p.elapsed))
        if ends[-1][0] < total:
            if len(ends) > 1 and total - ends[-1][0] < n // 2:
                ends.pop()
            ends.append((total, mine[-1].elapsed))
        windows: list[list[float]] = []
        slow = 0.0
        for (a, t0), (b, t1) in itertools.pairwise(ends):
            speed = rate(b - a, t1 - t0)
            if speed < steady / 2:
                slow += t1 - t0
            windows.append([b, round(speed, 1)])
        first_rate = rate(head.signed, head.elapsed - origin)
        result.append(
            Pass(
                hash_alg=hash_alg,
                signed=total,
                seconds=mine[-1].elapsed - origin,
                first_n=head.signed,
                first_rate=first_rate,
                steady_rate=steady,
                ratio=first_rate / steady if steady else float("nan"),
                slowest_rate=min((w[1] for w in windows if w[1] == w[1]), default=float("nan")),
                slow_seconds=round(slow, 1),
                windows=windows,
            )
        )
        origin = mine[-1].elapsed
    return result


TABLES = ("ocspd_certificates", "ocspd_responses")


def table_stats(dsn: str) -> dict[str, Any]:
    """Planner and autovacuum state of ocspd's two big tables."""
    stats: dict[str, Any] = {}
    for table in TABLES:
        stats[table] = {
            "reltuples": common.sql_value(dsn, "SELECT reltuples FROM pg_class WHERE relname = %s", (table,)),
            "last_analyze": common.sql_value(
                dsn, "SELECT greatest(last_analyze, last_autoanalyze) FROM pg_stat_user_tables WHERE relname = %s",
                (table,),
            ),
        }  # fmt: skip
    return stats


KINDS = ("analyze", "autoanalyze", "vacuum", "autovacuum")


class MaintenanceWatch:
    """Polls pg_stat_user_tables in a thread while presign runs: each ANALYZE and VACUUM of the tables,
    manual or autovacuum's, as seconds after ``since`` (the database's clock; presign starts a few
    tenths of a second after it)."""

    def __init__(self, dsn: str, interval: float = 0.5) -> None:
        self.dsn = dsn
        self.interval = interval
        self.seen: set[tuple[str, str, dt.datetime]] = set()
        self.before: set[tuple[str, str, dt.datetime]] = set()
        self.since: dt.datetime | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="maintenance-watch", daemon=True)

    def __enter__(self) -> MaintenanceWatch:
        self.since = common.sql_value(self.dsn, "SELECT clock_timestamp()")
        self._poll()  # what happened before presign is not an event of its run
        self.before = set(self.seen)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self._poll()

    def _poll(self) -> None:
        import psycopg2

        columns = ", ".join(f"last_{kind}" for kind in KINDS)
        try:
            conn = psycopg2.connect(self.dsn)
        except psycopg2.Error:
            return
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT relname, {columns} FROM pg_stat_user_tables WHERE relname = ANY(%s)", (list(TABLES),)
                )
                for relname, *stamps in cur.fetchall():
                    for kind, stamp in zip(KINDS, stamps, strict=True):
                        if stamp is not None:
                            self.seen.add((relname, kind, stamp))
        finally:
            conn.close()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self._poll()

    def events(self) -> list[tuple[float, str, str]]:
        assert self.since is not None
        new = self.seen - self.before
        return sorted((round((stamp - self.since).total_seconds(), 1), table, kind) for table, kind, stamp in new)


def one_run(tree: Tree, rnd: int, server: common.Postgres, bench_pki: common.BenchPki, args: argparse.Namespace) -> Run:
    work = bench_pki.directory
    issuer = bench_pki.issuer_id
    with common.fresh_database(server, "presign") as dsn:
        config = bench_pki.write_config(work / "ocspd.toml", common.free_port(), database=dsn, use_index=False)
        name = f"{tree.label}-{rnd}"
        base = ["--config", str(config), "--issuer", issuer]
        import_seconds, imported = run_cli(
            tree, ["cert", "import", *base, str(bench_pki.index_path)], work, f"import-{name}", args.timeout
        )
        stats_before = table_stats(dsn)
        with MaintenanceWatch(dsn) as watch:
            wall, output = run_cli(tree, ["presign", *base], work, f"presign-{name}", args.timeout)
    points = parse_progress(output)
    run = Run(
        tree=tree.label,
        round=rnd,
        rows=args.rows,
        import_seconds=import_seconds,
        import_analysed="analysed the table" in imported,
        presign_wall_seconds=wall,
        presign_elapsed=points[-1].elapsed,
        signed=points[-1].cumulative,
        passes=passes(points, args.first),
        stats_before=stats_before,
        maintenance=watch.events(),
    )
    if run.signed < args.rows * len(run.passes):
        log(f"WARNING: presign signed {run.signed} for {args.rows} rows and {len(run.passes)} hashes")
    said = "; ".join(
        f"{p.hash_alg}: first {p.first_n:,} at {p.first_rate:,.0f}/s, steady {p.steady_rate:,.0f}/s,"
        f" ratio {p.ratio:.2f}, slowest {p.slowest_rate:,.0f}/s, {p.slow_seconds:.0f} s below half speed"
        for p in run.passes
    )
    events = ", ".join(f"{kind} {table} +{at:g}s" for at, table, kind in run.maintenance) or "none"
    log(
        f"{tree.label} ({tree.commit}) round {rnd}: import {import_seconds:.1f} s"
        f"{' (analysed)' if run.import_analysed else ''}; presign {run.signed:,} signed in {wall:.1f} s; {said};"
        f" maintenance during presign: {events}"
    )
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="certificates in index.txt (default 100,000)")
    parser.add_argument("--first", type=int, default=5000, help="signatures of the start rate (default 5,000)")
    parser.add_argument("--revoked-every", type=int, default=50, help="every n-th line revoked (default 50; 0: none)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each running every tree once (default 1)")
    parser.add_argument("--tree", help="also run the ocspd CLI of this checkout (before/after in one run)")
    parser.add_argument("--python", help="--tree's interpreter (default DIR/.venv/bin/python, else this one)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds allowed per CLI command")
    parser.add_argument("--dsn", help="PostgreSQL server to create the databases on (default: see above)")
    parser.add_argument("--out", help="results name: bench/results/<out>.json (default presign)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, PKI, index.txt)")
    args = parser.parse_args(argv)
    if args.rows < 2 or args.first < 1 or args.rounds < 1:
        parser.error("--rows must be at least 2, --first and --rounds at least 1")
    if args.python and not args.tree:
        parser.error("--python names the interpreter of --tree")
    started = time.perf_counter()
    trees = [make_tree("this", common.REPO, common.PYTHON)]
    if args.tree:
        trees.append(make_tree("tree", Path(args.tree), args.python))
    details: dict[str, Any] = {
        "rows": args.rows,
        "first": args.first,
        "revoked_every": args.revoked_every,
        "rounds": args.rounds,
        "trees": {
            t.label: {
                "directory": str(t.directory),
                "python": t.python,
                "commit": t.commit,
                # Uncommitted changes to ocspd/ in the checkout at the start of the run (not in the commit).
                "uncommitted": git(t.directory, "status", "--porcelain", "--", "ocspd").splitlines(),
            }
            for t in trees
        },
    }
    for tree in trees[1:]:
        if migrations(tree.directory) != migrations(common.REPO):
            log(f"WARNING: {tree.label} ships other migrations than this checkout, which migrates the databases")
            details["migrations_differ"] = True
    runs: list[Run] = []
    with common.work_dir("presign", args.keep) as work, common.postgres(args.dsn) as server:
        details["postgres"] = server.origin
        bench_pki = common.make_pki(work, key_type="p256")
        write_index(bench_pki.index_path, args.rows, args.revoked_every)
        details["server"] = {
            name: common.sql_value(server.dsn, f"SHOW {name}")
            for name in ("server_version", "autovacuum", "autovacuum_naptime", "autovacuum_analyze_threshold",
                         "autovacuum_analyze_scale_factor", "fsync")
        }  # fmt: skip
        log(f"{args.rows:,} certificates in index.txt; trees: " + ", ".join(f"{t.label} {t.commit}" for t in trees))
        for rnd in range(1, args.rounds + 1):
            # Alternate the order: ABBA over two rounds.
            for tree in trees if rnd % 2 else reversed(trees):
                runs.append(one_run(tree, rnd, server, bench_pki, args))

    rows: list[Row] = []
    totals: dict[str, float] = {}
    for tree in trees:
        mine = [r for r in runs if r.tree == tree.label]
        name = f"{tree.label} ({tree.commit})"
        several = len(mine) > 1
        for i, first_pass in enumerate(mine[0].passes):
            of_pass = [r.passes[i] for r in mine]
            which = "first pass, straight after the import" if i == 0 else "next pass"
            rows.append(
                Row.make(
                    f"{name}: {first_pass.hash_alg} ({which}), first {first_pass.first_n:,} signed vs steady, /s",
                    statistics.median(p.first_rate for p in of_pass),
                    statistics.median(p.steady_rate for p in of_pass),
                    unit="/s",
                    baseline_name="last half of the pass",
                    target=RATIO_TARGET,
                    note="ratio per round " + ", ".join(f"{p.ratio:.2f}" for p in of_pass) if several else "",
                )
            )
            rows.append(
                Row.make(
                    f"{name}: {first_pass.hash_alg}, slowest window of {first_pass.first_n:,} vs steady, /s",
                    statistics.median(p.slowest_rate for p in of_pass),
                    statistics.median(p.steady_rate for p in of_pass),
                    unit="/s",
                    baseline_name="steady",
                    note="seconds below half speed " + ", ".join(f"{p.slow_seconds:g}" for p in of_pass),
                )
            )
        totals[tree.label] = statistics.median(r.presign_wall_seconds for r in mine)
        rows.append(
            Row.make(
                f"{name}: presign total, {mine[0].signed:,} signatures ({len(mine[0].passes)} hashes), wall",
                totals[tree.label],
                None,
                unit="s",
                note="per round " + ", ".join(f"{r.presign_wall_seconds:.1f}" for r in mine) if several else "",
            )
        )
        rows.append(
            Row.make(f"{name}: cert import of {args.rows:,} lines", statistics.median(r.import_seconds for r in mine),
                     None, unit="s")
        )  # fmt: skip
    if len(trees) > 1:
        rows.append(
            Row.make(
                f"presign total, this ({trees[0].commit}) vs tree ({trees[1].commit})",
                totals["this"],
                totals["tree"],
                unit="s",
                baseline_name="tree",
            )
        )
    details["runs"] = [asdict(r) for r in runs]
    common.report(args.out or "presign", rows, details, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
