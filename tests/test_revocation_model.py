"""The revocation rules (SPEC §3 invariant 9, issue 10) as a property test.

Random sequences of every writer (cert add, PEM import, index.txt import,
revoke with or without --amend, unhold, plain SQL UPDATEs) on a few serials,
checked after every step against a small reference model of the rules:

- the table says exactly what the model says;
- the CLI's exit status is the model's (0 applied or no change, 1 refused,
  2 bad input) and a refused SQL statement fails with SQLSTATE 23R01;
- one ``ocspd serve`` process on the same database serves what the model
  says (unlisted: unknown), once the notification has arrived;
- a certificate once served revoked for any reason but certificateHold is
  never served good again.

Each hypothesis example takes fresh serials (one database for the whole run),
and the CLI runs in-process (``ocspd.cli.main``): a subprocess per step would
cost more than the whole budget.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import io
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import psycopg2
import psycopg2.extensions
import pytest
from cryptography import x509
from cryptography.x509 import ocsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ocspd import cli, pki
from ocspd.status import Status as SourceStatus
from ocspd.store import CertRecord, merge
from tests.helpers import TestPki, request_der, verify_response
from tests.serving import free_port

Status = ocsp.OCSPCertStatus
ISSUER = "test-ca"
HOLD = "certificateHold"
SERIALS_PER_EXAMPLE = 3
SERVED_WITHIN = 5.0  # seconds for a change to reach the replica
CLOCK_SLOP = dt.timedelta(seconds=2)

# Names `ocspd revoke --reason` takes (None: no --reason). index.txt knows only OpenSSL's.
CLI_REASONS: list[str | None] = [
    None,
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    HOLD,
    HOLD,
    "privilegeWithdrawn",
    "aACompromise",
]
INDEX_REASONS: list[str | None] = [
    None,
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    HOLD,
]
SQL_REASONS = [r for r in CLI_REASONS if r is not None] + ["unspecified", "removeFromCRL"]


# -- the reference model ---------------------------------------------------------------------------


def normal(reason: str | None) -> str | None:
    """unspecified is no reason (RFC 5280 §5.3.1: the reasonCode is then absent)."""
    return None if reason in (None, "unspecified") else reason


@dataclass(frozen=True)
class Revoked:
    reason: str | None  # normalised
    at: dt.datetime

    @property
    def hold(self) -> bool:
        return self.reason == HOLD


GOOD: Literal["good"] = "good"
State = Revoked | Literal["good"] | None  # None: the table does not list the serial


@dataclass(frozen=True)
class NewRevocation:
    """A revocation whose time the database picks: now, or else ``or_at`` when given."""

    reason: str | None
    or_at: dt.datetime | None = None


@dataclass(frozen=True)
class Outcome:
    code: int  # 0 applied or no change, 1 refused by the rules, 2 bad input
    state: State | NewRevocation


def model_revoke(state: State, reason: str | None, at: dt.datetime | None, amend: bool) -> Outcome:
    new = normal(reason)
    revocation: Revoked | NewRevocation = Revoked(new, at) if at else NewRevocation(new)
    if not isinstance(state, Revoked):
        return Outcome(0, revocation)  # unlisted or good: revoked
    if state.hold and new != HOLD:
        return Outcome(0, revocation)  # a hold re-revoked with another reason, at the new time
    if new == state.reason and (at is None or at == state.at):
        return Outcome(0, state)  # the same revocation: unchanged
    if not amend or (new == HOLD and not state.hold):
        return Outcome(1, state)  # a silent change; or a permanent revocation made a hold
    return Outcome(0, Revoked(new, at) if at else NewRevocation(new, or_at=state.at))


def model_unhold(state: State) -> Outcome:
    if isinstance(state, Revoked) and state.hold:
        return Outcome(0, GOOD)
    return Outcome(1, state)


def model_add(state: State) -> Outcome:
    """cert add, a PEM import, an index.txt V line: never a status change for a listed serial."""
    return Outcome(0, GOOD if state is None else state)


def model_index_revoked(state: State, reason: str | None, at: dt.datetime) -> Outcome:
    new = normal(reason)
    if not isinstance(state, Revoked) or (state.hold and new != HOLD):
        return Outcome(0, Revoked(new, at))
    return Outcome(0, state)  # kept (counted by the import, not an error)


def model_sql_to_good(state: State) -> Outcome:
    return Outcome(1, state) if isinstance(state, Revoked) else Outcome(0, state)


def model_sql_reason(state: State, reason: str) -> Outcome:
    """``UPDATE ... SET reason = r WHERE ... AND status = 'revoked'``."""
    if not isinstance(state, Revoked):
        return Outcome(0, state)  # matches no row
    if reason == "removeFromCRL":
        return Outcome(1, state)
    new = normal(reason)
    if new == state.reason:
        return Outcome(0, state)
    if state.hold:
        return Outcome(0, NewRevocation(new, or_at=state.at))
    return Outcome(1, state)


def served_as(state: State) -> tuple[Status, x509.ReasonFlags | None, dt.datetime | None]:
    if state is None:
        return Status.UNKNOWN, None, None
    if state == GOOD:
        return Status.GOOD, None, None
    assert isinstance(state, Revoked)
    reason = x509.ReasonFlags(state.reason) if state.reason else None
    return Status.REVOKED, reason, state.at.replace(microsecond=0)


# -- the system under test ---------------------------------------------------------------------------


@dataclass
class Cert:
    serial: int
    pem: Path
    der_request: bytes
    not_after: dt.datetime


@dataclass
class World:
    """What the examples share: the database, one `ocspd serve`, a serial counter."""

    test_pki: TestPki
    dsn: str
    url_port: int
    workdir: Path
    conn: psycopg2.extensions.connection
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(0x100000))
    http: http.client.HTTPConnection | None = None
    steps: int = 0
    step_started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def fresh_certs(self, n: int) -> list[Cert]:
        certs = []
        for _ in range(n):
            serial = next(self.counter)
            cert = pki.make_leaf(self.test_pki.ca, serial, f"m{serial:x}.example.test").cert
            path = self.workdir / f"{serial:X}.pem"
            pki.write_cert(path, cert)
            certs.append(Cert(serial, path, request_der(cert, self.test_pki.ca.cert), cert.not_valid_after_utc))
        return certs

    def cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.step_started = dt.datetime.now(dt.UTC)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([*args, "--config", str(self.test_pki.config_path)])
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 2
        self.steps += 1
        return code, out.getvalue(), err.getvalue()

    def sql(self, statement: str, *params: object) -> int:
        """0 when the statement ran, 1 when the rules refused it (23R01); anything else is a failure."""
        self.step_started = dt.datetime.now(dt.UTC)
        self.steps += 1
        try:
            with self.conn.cursor() as cur:
                cur.execute(statement, params)
        except psycopg2.IntegrityError as exc:
            assert exc.pgcode == "23R01", (exc.pgcode, str(exc))
            return 1
        return 0

    def rows(self, certs: list[Cert]) -> dict[int, tuple[str, dt.datetime | None, str | None]]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT serial, status, revoked_at, reason FROM ocspd_certificates"
                " WHERE issuer_id = %s AND serial = ANY(%s)",
                (ISSUER, [f"{c.serial:x}" for c in certs]),
            )
            return {int(serial, 16): (status, at, reason) for serial, status, at, reason in cur.fetchall()}

    def served(self, cert: Cert) -> tuple[Status, x509.ReasonFlags | None, dt.datetime | None]:
        for attempt in range(2):
            if self.http is None:
                self.http = http.client.HTTPConnection("127.0.0.1", self.url_port, timeout=10)
            try:
                self.http.request(
                    "POST", "/", body=cert.der_request, headers={"Content-Type": "application/ocsp-request"}
                )
                resp = self.http.getresponse()
                body = resp.read()
                break
            except (OSError, http.client.HTTPException):
                self.http.close()
                self.http = None
                if attempt:
                    raise
        assert resp.status == 200, (resp.status, body)
        response = verify_response(body, self.test_pki)
        if response.certificate_status is Status.REVOKED:
            return Status.REVOKED, response.revocation_reason, response.revocation_time_utc
        return response.certificate_status, None, None


def time_strategy(base: dt.datetime) -> st.SearchStrategy[dt.datetime | None]:
    """No --at (now), or one of a few past times, whole seconds (as index.txt writes them)."""
    return st.one_of(st.none(), st.sampled_from([base + dt.timedelta(days=d) for d in (0, 7, 14)]))


BASE_TIME = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=30)
TIMES = time_strategy(BASE_TIME)
PAST_TIMES = st.sampled_from([BASE_TIME + dt.timedelta(days=d) for d in (0, 7, 14)])
SERIAL = st.integers(0, SERIALS_PER_EXAMPLE - 1)


class RevocationRules(RuleBasedStateMachine):
    world: ClassVar[World]

    def __init__(self) -> None:
        super().__init__()
        self.certs = self.world.fresh_certs(SERIALS_PER_EXAMPLE)
        self.model: dict[int, State] = {c.serial: None for c in self.certs}
        self.permanent_seen: set[int] = set()

    # -- where each example starts: each serial unlisted, good, on hold or revoked for good (by the CLI,
    # checked like any other step), so that short sequences still reach the interesting transitions

    @initialize(
        starts=st.lists(
            st.sampled_from(["unlisted", "good", "hold", "permanent"]),
            min_size=SERIALS_PER_EXAMPLE,
            max_size=SERIALS_PER_EXAMPLE,
        )
    )
    def start(self, starts: list[str]) -> None:
        for i, start in enumerate(starts):
            if start == "good":
                self.cert_add(i)
            elif start in ("hold", "permanent"):
                self.revoke(i, HOLD if start == "hold" else "keyCompromise", BASE_TIME, amend=False)

    # -- the writers

    @rule(i=SERIAL)
    def cert_add(self, i: int) -> None:
        cert = self.certs[i]
        self.check(
            cert,
            model_add(self.model[cert.serial]),
            self.world.cli("cert", "add", "--issuer", ISSUER, "--serial", f"{cert.serial:X}"),
        )

    @rule(i=SERIAL)
    def pem_import(self, i: int) -> None:
        cert = self.certs[i]
        self.check(
            cert,
            model_add(self.model[cert.serial]),
            self.world.cli("cert", "import", "--issuer", ISSUER, str(cert.pem)),
        )

    @rule(i=SERIAL, revocation=st.one_of(st.none(), st.tuples(st.sampled_from(INDEX_REASONS), PAST_TIMES)))
    def index_import(self, i: int, revocation: tuple[str | None, dt.datetime] | None) -> None:
        cert = self.certs[i]
        state = self.model[cert.serial]
        if revocation is None:
            outcome = model_add(state)
            line = pki.index_line(cert.serial, not_after=cert.not_after, subject="/CN=model")
        else:
            reason, at = revocation
            outcome = model_index_revoked(state, reason, at)
            line = pki.index_line(
                cert.serial, not_after=cert.not_after, subject="/CN=model", revoked_at=at, reason=reason
            )
        path = self.world.workdir / "index.txt"
        path.write_text(line + "\n")
        self.check(cert, outcome, self.world.cli("cert", "import", "--issuer", ISSUER, str(path)))

    @rule(i=SERIAL, reason=st.sampled_from(CLI_REASONS), at=TIMES, amend=st.booleans())
    def revoke(self, i: int, reason: str | None, at: dt.datetime | None, amend: bool) -> None:
        cert = self.certs[i]
        args = ["revoke", "--issuer", ISSUER, "--serial", f"{cert.serial:x}"]
        args += ["--reason", reason] if reason else []
        args += ["--at", at.strftime("%Y-%m-%dT%H:%M:%SZ")] if at else []
        args += ["--amend"] if amend else []
        self.check(cert, model_revoke(self.model[cert.serial], reason, at, amend), self.world.cli(*args))

    @rule(i=SERIAL, bad=st.sampled_from(["removeFromCRL", "future"]))
    def revoke_bad_input(self, i: int, bad: str) -> None:
        cert = self.certs[i]
        args = ["revoke", "--issuer", ISSUER, "--serial", f"{cert.serial:x}"]
        if bad == "future":
            future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
            args += ["--reason", "keyCompromise", "--at", future.strftime("%Y-%m-%dT%H:%M:%SZ")]
        else:
            args += ["--reason", bad]
        self.check(cert, Outcome(2, self.model[cert.serial]), self.world.cli(*args))

    @rule(i=SERIAL)
    def unhold(self, i: int) -> None:
        cert = self.certs[i]
        self.check(
            cert,
            model_unhold(self.model[cert.serial]),
            self.world.cli("unhold", "--issuer", ISSUER, "--serial", f"{cert.serial:X}"),
        )

    @rule(i=SERIAL)
    def sql_update_to_good(self, i: int) -> None:
        cert = self.certs[i]
        code = self.world.sql(
            "UPDATE ocspd_certificates SET status = 'good', revoked_at = NULL, reason = NULL"
            " WHERE issuer_id = %s AND serial = %s",
            ISSUER,
            f"{cert.serial:x}",
        )
        self.check(cert, model_sql_to_good(self.model[cert.serial]), (code, "", ""))

    @rule(i=SERIAL, reason=st.sampled_from(SQL_REASONS))
    def sql_update_reason(self, i: int, reason: str) -> None:
        cert = self.certs[i]
        code = self.world.sql(
            "UPDATE ocspd_certificates SET reason = %s WHERE issuer_id = %s AND serial = %s AND status = 'revoked'",
            reason,
            ISSUER,
            f"{cert.serial:x}",
        )
        self.check(cert, model_sql_reason(self.model[cert.serial], reason), (code, "", ""))

    # -- the checks

    def check(self, cert: Cert, outcome: Outcome, result: tuple[int, str, str]) -> None:
        """The exit status is the model's; a time the database picked is pinned in the model."""
        started, finished = self.world.step_started, dt.datetime.now(dt.UTC)
        code, out, err = result
        assert code == outcome.code, f"exit {code}, model says {outcome.code}; stdout={out!r} stderr={err!r}"
        assert "Traceback" not in err, err
        if code != 0 and (out or err):  # the CLI's refusals and usage errors: one line
            assert len(err.strip().splitlines()) == 1, f"exit {code} with stderr {err!r}"
        state = outcome.state
        if isinstance(state, NewRevocation):
            stored = self.world.rows([cert]).get(cert.serial)
            assert stored is not None and stored[0] == "revoked", stored
            _, at, reason = stored
            assert at is not None and reason == state.reason, (stored, state)
            fresh = started - CLOCK_SLOP <= at <= finished + CLOCK_SLOP
            assert fresh or at == state.or_at, f"revoked_at {at} is neither now nor {state.or_at}"
            state = Revoked(reason, at)
        self.model[cert.serial] = state

    @invariant()
    def table_is_the_model(self) -> None:
        rows = self.world.rows(self.certs)
        for cert in self.certs:
            state = self.model[cert.serial]
            expected: tuple[str, dt.datetime | None, str | None] | None
            if state is None:
                expected = None
            elif state == GOOD:
                expected = ("good", None, None)
            else:
                assert isinstance(state, Revoked)
                expected = ("revoked", state.at, state.reason)
            assert rows.get(cert.serial) == expected, f"serial {cert.serial:X}: table {rows.get(cert.serial)}"

    @invariant()
    def served_is_the_model_and_never_good_after_a_permanent_revocation(self) -> None:
        deadline = time.monotonic() + SERVED_WITHIN
        pending = list(self.certs)
        last: dict[int, object] = {}
        while pending:
            for cert in list(pending):
                seen = self.world.served(cert)
                last[cert.serial] = seen
                if seen[0] is Status.GOOD:
                    assert cert.serial not in self.permanent_seen, f"serial {cert.serial:X} served good again"
                elif seen[0] is Status.REVOKED and seen[1] is not x509.ReasonFlags.certificate_hold:
                    self.permanent_seen.add(cert.serial)
                if seen == served_as(self.model[cert.serial]):
                    pending.remove(cert)
            if pending:
                assert time.monotonic() < deadline, {
                    f"{c.serial:X}": (last[c.serial], served_as(self.model[c.serial])) for c in pending
                }
                time.sleep(0.01)


# -- the run -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(test_pki: TestPki, log: Path) -> Iterator[int]:
    """One `ocspd serve` on 127.0.0.1, stopped by its PID; yields its OCSP port once it is ready."""
    port, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCSPD_", "NOTIFY_SOCKET"))}
    env.update({"OCSPD_SERVER_LISTEN": f"127.0.0.1:{port}", "OCSPD_ADMIN_LISTEN": f"127.0.0.1:{admin}"})
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ocspd", "serve", "--config", str(test_pki.config_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"ocspd serve exited: {log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"ocspd serve not ready: {log.read_text()}"
            time.sleep(0.05)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def quiet_root_logger() -> Iterator[None]:
    """cli.main points the root logger at the captured stderr of each call: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.timeout(420)  # hypothesis may shrink a failure for up to 300 s; a passing run takes ~20-30 s
def test_revocation_rules_hold_for_any_sequence_of_writers(
    db_pki: TestPki, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet_root_logger: None
) -> None:
    for name in list(os.environ):
        if name.startswith("OCSPD_"):
            monkeypatch.delenv(name)
    started = time.monotonic()
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    try:
        with serving(db_pki, tmp_path / "serve.log") as port:
            world = World(db_pki, pg_dsn, port, tmp_path, conn)
            machine = type("BoundRevocationRules", (RevocationRules,), {"world": world})
            run_state_machine_as_test(
                machine,
                settings=settings(
                    max_examples=80,
                    stateful_step_count=15,
                    deadline=None,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow],
                ),
            )
            print(f"revocation model: {world.steps} steps in {time.monotonic() - started:.1f}s")
    finally:
        conn.close()


# -- the Python twin of ocspd_merge (import duplicates are folded with it) ---------------------------------

_STATES = st.one_of(
    st.none(),
    st.just((SourceStatus.GOOD, None, None)),
    st.tuples(
        st.just(SourceStatus.REVOKED),
        st.sampled_from(
            [None, x509.ReasonFlags.key_compromise, x509.ReasonFlags.superseded, x509.ReasonFlags.certificate_hold]
        ),
        st.sampled_from([dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC)]),
    ),
)


def test_python_merge_is_the_sql_merge(pg_dsn: str) -> None:
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True

    def record(state: tuple[SourceStatus, x509.ReasonFlags | None, dt.datetime | None]) -> CertRecord:
        status, reason, at = state
        return CertRecord(1, status, at, reason)

    @settings(max_examples=200, deadline=None)
    @given(old=_STATES, new=_STATES.filter(lambda s: s is not None))
    def check(
        old: tuple[SourceStatus, x509.ReasonFlags | None, dt.datetime | None] | None,
        new: tuple[SourceStatus, x509.ReasonFlags | None, dt.datetime | None],
    ) -> None:
        o = record(old) if old is not None else None
        n = record(new)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT ocspd_merge(%s, %s, %s, %s, %s, %s)",
                (
                    o.status.value if o else None,
                    o.reason.value if o and o.reason else None,
                    o.revoked_at if o else None,
                    n.status.value,
                    n.reason.value if n.reason else None,
                    n.revoked_at,
                ),
            )
            row = cur.fetchone()
        assert row is not None and merge(o, n).value == row[0]

    try:
        check()
    finally:
        conn.close()
