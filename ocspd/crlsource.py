"""The CRLs in force for one issuer, and the polling that keeps them current (issue 15).

:class:`CrlState` holds, per issuer, the base CRL and the delta CRL in force
(each a :class:`~ocspd.crl.TrustedCrl`: checked before use), where they came
from, and what the last attempt to renew them gave. :meth:`CrlState.bound`
is the latest nextUpdate an answer derived from them may carry: the CRL's
own nextUpdate; past it, the answer is tryLater (``[crl] stale =
"trylater"``, the default) or valid for ``[crl] retry`` only (``"serve"``),
never a silent stale "good".

:func:`sync` is one round: the base CRL from its locations (mirrors, in
order, until one gives a CRL that is applied or unchanged), then the delta
CRL (configured, or named by the base CRL's Freshest CRL extension), each
fetched conditionally (ETag/If-Modified-Since, a file's stat), parsed and
checked in a worker thread (a CRL of a million entries takes seconds), and
installed in one assignment. It returns the serials whose status changed,
for the caller to invalidate. A CRL refused by a check leaves the one in
force; the refusal is logged at ERROR once per CRL (its validators are kept,
so that the same bad CRL is not fetched and refused again) and counted.
:func:`poll` runs rounds for ever: every ``[crl] poll``, shortly before the
CRL's nextUpdate, and every ``[crl] retry`` while failing or stale.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509

from ocspd import crl
from ocspd.config import CrlConfig, IssuerConfig
from ocspd.crlfetch import CrlFetcher, CrlFetchFailed, Fetched, Validators, is_url
from ocspd.exceptions import ConfigError, SourceUnavailable
from ocspd.logs import event
from ocspd.status import CertStatus

log = logging.getLogger("ocspd.crl")

# Fetch again this long before a CRL's nextUpdate (CAs publish the next one ahead of it).
NEXT_UPDATE_LEAD = 60.0
FILE_POLL = 1.0  # a CRL file is stat'ed this often (read only when it changed)
MIN_DELAY = 0.1  # [crl] poll and retry have no minimum: this keeps a typo from spinning


class Kind(enum.Enum):
    """Which CRL of an issuer: the complete one, or the delta over it."""

    BASE = "base"
    DELTA = "delta"


class Outcome(enum.Enum):
    """What one fetch of one CRL gave (the ``result`` label of ``ocspd_crl_fetches_total``)."""

    APPLIED = "applied"  # a newer CRL, checked and now in force
    UNCHANGED = "unchanged"  # fetched, the CRL in force again
    NOT_MODIFIED = "not_modified"  # HTTP 304, or the file has not changed
    REFUSED = "refused"  # fetched, failed a check: not applied
    FAILED = "failed"  # not fetched (every location failed)


OUTCOMES = tuple(o.value for o in Outcome)
KINDS = tuple(k.value for k in Kind)


@dataclass(slots=True)
class CrlState:
    """The CRLs in force for one issuer; replaced whole by :func:`sync`, read by answers."""

    issuer: IssuerConfig
    ca: x509.Certificate
    signer: x509.Certificate | None = None  # a CRL signer certificate ([[issuers]] crl_signer)
    base: crl.TrustedCrl | None = None
    delta: crl.TrustedCrl | None = None
    source: dict[Kind, str] = field(default_factory=dict)  # where each CRL in force came from
    validators: dict[str, Validators] = field(default_factory=dict)  # by location
    refused: dict[str, bytes] = field(default_factory=dict)  # by location: digest of the last refused CRL
    last_error: dict[Kind, str] = field(default_factory=dict)  # the last round's failure or refusal, by kind
    fetched_at: float | None = None  # the end of the last round that reached every CRL
    # With a database: the CRLs in force were applied by another replica; their
    # numbers and times are here, their entries are not (crlshared.py).
    hollow: bool = False

    @property
    def issuer_id(self) -> str:
        return self.issuer.id

    def pair(self) -> tuple[crl.TrustedCrl, crl.TrustedCrl | None] | None:
        return None if self.base is None else (self.base, self.delta)

    def status(self, serial: int) -> CertStatus | None:
        """What the CRLs in force say of ``serial`` (None: not listed); SourceUnavailable before the first."""
        if self.base is None:
            raise SourceUnavailable(f"no CRL in force yet for issuer {self.issuer.id}")
        return crl.status(self.base, self.delta, serial)

    @property
    def next_update(self) -> float | None:
        """The earliest nextUpdate of the CRLs in force (None: none given, or no CRL yet)."""
        times = [c.next_update.timestamp() for c in (self.base, self.delta) if c is not None and c.next_update]
        return min(times) if times else None

    def stale(self, now: float) -> bool:
        next_update = self.next_update
        return next_update is not None and now >= next_update

    def bound(self, now: float, config: CrlConfig) -> float | None:
        """The latest nextUpdate an answer signed now may carry (None: no bound).

        Raises SourceUnavailable (tryLater) before the first CRL, and past the
        nextUpdate of the CRL in force unless ``config.stale`` is "serve" (then:
        now + retry).
        """
        if self.base is None:
            raise SourceUnavailable(f"no CRL in force yet for issuer {self.issuer.id}")
        next_update = self.next_update
        if next_update is None or now < next_update:
            return next_update
        if config.stale == "serve":
            return now + config.retry.total_seconds()
        raise SourceUnavailable(f"the CRL in force for issuer {self.issuer.id} is past its nextUpdate")

    def delay(self, now: float, config: CrlConfig) -> float:
        """Seconds until the next round: ``poll``, shortly before nextUpdate, ``retry`` while failing or
        stale; at most FILE_POLL when every location is a file (a stat tells a change: watched like
        index.txt)."""
        delay = self._delay(now, config)
        locations = self.issuer.crl + self.delta_locations()
        return min(delay, FILE_POLL) if not any(is_url(location) for location in locations) else delay

    def _delay(self, now: float, config: CrlConfig) -> float:
        poll, retry = config.poll.total_seconds(), config.retry.total_seconds()
        if self.base is None or self.last_error or self.stale(now):
            return max(MIN_DELAY, min(poll, retry))
        next_update = self.next_update
        if next_update is None:
            return poll
        return max(MIN_DELAY, min(poll, next_update - NEXT_UPDATE_LEAD - now), min(poll, retry))

    def delta_locations(self) -> tuple[str, ...]:
        if self.issuer.delta_crl is not None:
            return self.issuer.delta_crl
        return self.base.freshest if self.base is not None else ()


def state_for(issuer: IssuerConfig, ca: x509.Certificate) -> CrlState:
    """An issuer's CrlState, nothing in force yet; ConfigError if its crl_signer is not a certificate."""
    signer = None
    if issuer.crl_signer is not None:
        try:
            data = issuer.crl_signer.read_bytes()
            signer = (
                x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
            )
        except (OSError, ValueError) as exc:
            message = f"cannot load the CRL signer certificate {issuer.crl_signer}: {' '.join(str(exc).split())}"
            raise ConfigError(message, key="crl_signer") from None
    return CrlState(issuer, ca, signer)


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one round did: the outcome per CRL kind, and the serials whose status changed."""

    outcomes: dict[Kind, Outcome]
    changed: set[int]


Counter = Callable[[str, Kind, Outcome], None]  # (issuer id, kind, outcome): counts a fetch


async def sync(state: CrlState, fetcher: CrlFetcher, count: Counter | None = None) -> SyncResult:
    """One round for one issuer: renew its base CRL, then its delta; never raises (but on cancellation)."""
    before = state.pair()
    outcomes: dict[Kind, Outcome] = {}
    outcomes[Kind.BASE] = await _renew(state, Kind.BASE, state.issuer.crl, fetcher)
    if state.base is not None and state.delta is not None and not _fits(state.delta, state.base):
        state.delta = None  # a new base supersedes the delta made over an older one
        state.source.pop(Kind.DELTA, None)
    delta_locations = state.delta_locations()
    if delta_locations and state.base is not None:
        outcomes[Kind.DELTA] = await _renew(state, Kind.DELTA, delta_locations, fetcher)
    elif state.delta is not None:
        state.delta = None  # no delta location any more (the new base names none)
        state.source.pop(Kind.DELTA, None)
    if count is not None:
        for kind, outcome in outcomes.items():
            count(state.issuer.id, kind, outcome)
    if all(o is not Outcome.FAILED for o in outcomes.values()):
        state.fetched_at = time.time()
    after = state.pair()
    changed: set[int] = set()
    if after is not None and after != before:  # 0.1-0.2 s at 1M entries: off the loop too
        changed = await asyncio.get_running_loop().run_in_executor(None, crl.changed_serials, before, after)
    return SyncResult(outcomes, changed)


def _fits(delta: crl.TrustedCrl, base: crl.TrustedCrl) -> bool:
    """Whether a delta in force still applies over ``base`` (RFC 5280 §5.2.4)."""
    return delta.base_number is not None and delta.base_number <= base.number < delta.number


async def _renew(state: CrlState, kind: Kind, locations: tuple[str, ...], fetcher: CrlFetcher) -> Outcome:
    """Try the locations in order until one gives a CRL applied, unchanged or not modified; else
    REFUSED if one gave a CRL that failed a check this round, NOT_MODIFIED if one still has the CRL
    refused before, FAILED if none answered."""
    errors: list[str] = []
    outcome = Outcome.FAILED
    for location in locations:
        try:
            fetched = await fetcher.fetch(location, state.validators.get(location))
        except CrlFetchFailed as exc:
            errors.append(str(exc))
            continue
        if fetched.data is None:
            state.validators[location] = fetched.validators
            if location not in state.refused:
                state.last_error.pop(kind, None)
                return Outcome.NOT_MODIFIED
            if outcome is Outcome.FAILED:
                outcome = Outcome.NOT_MODIFIED
            errors.append(f"{location}: still the CRL refused before")
            continue
        try:
            applied = await _apply(state, kind, fetched)
        except crl.CrlRefused as exc:
            _refused(state, kind, fetched, exc)
            outcome = Outcome.REFUSED
            errors.append(f"{location}: {exc}")
            continue
        state.last_error.pop(kind, None)
        return Outcome.APPLIED if applied else Outcome.UNCHANGED
    state.last_error[kind] = "; ".join(errors) or "no location"
    if outcome is Outcome.FAILED:
        level = logging.WARNING if kind is Kind.BASE or state.delta is None else logging.INFO
        event(log, "crl_fetch_failed", level, issuer=state.issuer.id, crl=kind.value, error=state.last_error[kind])
    return outcome


async def _apply(state: CrlState, kind: Kind, fetched: Fetched) -> bool:
    """Check the fetched CRL in a worker thread and put it in force; False if it is the one in force."""
    assert fetched.data is not None
    data = fetched.data
    in_use = state.base if kind is Kind.BASE else state.delta
    base = state.base

    def check() -> crl.TrustedCrl:
        parsed = crl.load(data)
        trusted = crl.verify(parsed, state.ca, signer=state.signer, in_use=in_use, base=base)
        if trusted.is_delta != (kind is Kind.DELTA):
            raise crl.CrlRefused(
                "a delta CRL where the base CRL was expected" if trusted.is_delta else "not a delta CRL"
            )
        return trusted

    started = time.perf_counter()
    trusted = await asyncio.get_running_loop().run_in_executor(None, check)
    state.validators[fetched.location] = fetched.validators
    state.refused.pop(fetched.location, None)
    if in_use is not None and trusted.number == in_use.number and not state.hollow:
        return False
    if kind is Kind.BASE:
        state.base = trusted
    else:
        state.delta = trusted
    state.source[kind] = fetched.location
    event(
        log,
        "crl_applied",
        issuer=state.issuer.id,
        crl=kind.value,
        number=trusted.number,
        entries=len(trusted.entries),
        this_update=trusted.this_update.isoformat(),
        next_update=trusted.next_update.isoformat() if trusted.next_update else "none",
        source=fetched.location,
        seconds=round(time.perf_counter() - started, 3),
    )
    return True


def _refused(state: CrlState, kind: Kind, fetched: Fetched, exc: crl.CrlRefused) -> None:
    """Log a refused CRL at ERROR once (the same bytes again: DEBUG), keep its validators."""
    assert fetched.data is not None
    digest = hashlib.sha256(fetched.data).digest()
    again = state.refused.get(fetched.location) == digest
    state.refused[fetched.location] = digest
    state.validators[fetched.location] = fetched.validators
    level = logging.DEBUG if again else logging.ERROR
    event(log, "crl_refused", level, issuer=state.issuer.id, crl=kind.value, source=fetched.location, reason=exc)


async def poll(
    state: CrlState,
    fetcher: CrlFetcher,
    config: CrlConfig,
    on_change: Callable[[set[int]], None],
    *,
    count: Counter | None = None,
    on_bug: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Rounds of :func:`sync` for ever (until cancelled); ``on_change(serials)`` after a round that changed any."""
    while True:
        try:
            result = await sync(state, fetcher, count)
            if result.changed:
                on_change(result.changed)
        except Exception:  # a bug: the CRLs in force stay, the next round tries again
            log.exception("crl poll error issuer=%s", state.issuer.id)
            if on_bug is not None:
                on_bug()
        await asyncio.sleep(state.delay(clock(), config))


def describe(state: CrlState, now: float) -> str:
    """One line for /readyz and ``ocspd crl show``: what is in force, and whether it is current."""
    if state.base is None:
        problem = state.last_error.get(Kind.BASE, "not fetched yet")
        return f"crl {state.issuer.id}: none in force ({problem})"
    parts = [f"base {state.base.number}"]
    if state.delta is not None:
        parts.append(f"delta {state.delta.number}")
    next_update = state.next_update
    if next_update is not None:
        when = dt.datetime.fromtimestamp(next_update, dt.UTC).isoformat(timespec="seconds")
        parts.append(("past its nextUpdate " if now >= next_update else "nextUpdate ") + when)
    text = f"crl {state.issuer.id}: " + ", ".join(parts)
    if state.last_error:
        text += " (last fetch: " + "; ".join(f"{k.value}: {e}" for k, e in state.last_error.items()) + ")"
    return text
