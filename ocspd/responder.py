"""From a parsed request to a signed response: issuer matching, the memory
tier, singleflight, the status source, the unknown-serial policy and the
signer, wired together.

About 400 lines: the request path's core, with the invalidations that keep
its memory tier honest (SPEC §3.1, §3.3) next to the code that fills it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ocspd.cache import Entry, Flight, MemoryTier, Singleflight, Window
from ocspd.config import Config, IssuerConfig
from ocspd.crlsource import CrlState
from ocspd.exceptions import KeyUnavailable, MalformedRequest, Overloaded, TryLater, Unauthorized
from ocspd.logs import event
from ocspd.metrics import Metrics
from ocspd.protocol import HASH_NAMES, CertId, OcspRequest
from ocspd.signer import EXTENDED_REVOKE_TIME, Answer, Signer
from ocspd.sources import CrlSource, IndexSource, StatusSource
from ocspd.status import HOLD, SERVED, CertStatus, Served, Status

log = logging.getLogger("ocspd.engine")  # the name logs have always carried

# A production re-reads the status when an invalidation raced with it; past
# this many rounds the status is changing too fast to answer now.
MAX_PRODUCTION_ROUNDS = 3

# A memory-tier key packs (serial, issuer, CertID hash) into one int: a tuple
# key with its int would cost ~100 bytes per entry, this ~36 (SPEC §7).
Key = int
_HASH_INDEX = {name: i for i, name in enumerate(HASH_NAMES)}  # 2 bits
_ISSUER_BITS = 14


def make_key(issuer_index: int, hash_name: str, serial: int) -> Key:
    """The memory-tier key of one CertID of one issuer."""
    return (serial << (_ISSUER_BITS + 2)) | (issuer_index << 2) | _HASH_INDEX[hash_name]


def key_issuer_index(key: Key) -> int:
    return (key >> 2) & ((1 << _ISSUER_BITS) - 1)


# Where an answer came from (for the transaction log).
MEMORY, POSTGRES, SIGNED, LIVE = "memory", "postgres", "signed", "live"


@dataclass(frozen=True, slots=True)
class Issuer:
    """An issuer this responder serves: its policy, signer and status source."""

    config: IssuerConfig
    signer: Signer
    source: StatusSource
    index: int  # its place in the config, part of its memory-tier keys
    # Its status changes arrive over LISTEN/NOTIFY: while that channel is down,
    # memory answers for it cannot be trusted (SPEC §3.3).
    needs_channel: bool = False
    # Its source answers without suspending (index.txt, CRLs in memory): see _Slot.
    answers_inline: bool = False
    # Its CRLs, when its status comes from them: they bound every answer's nextUpdate.
    crl: CrlState | None = None


class Cacheable(NamedTuple):
    """Where a cacheable request's answer lives in the memory tier."""

    key: Key
    issuer: Issuer


class Outcome(NamedTuple):
    """What ``Responder.respond`` gives: the entry, the tier it came from, and its key if cacheable."""

    entry: Entry
    tier: str
    cacheable: Cacheable | None


class Responder:
    """Answers parsed OCSP requests; owns the memory tier and singleflight."""

    def __init__(
        self,
        config: Config,
        signers: Mapping[str, Signer],
        sources: Mapping[str, StatusSource],
        clock: Callable[[], float] = time.time,
        *,
        notified: frozenset[str] = frozenset(),
        metrics: Metrics | None = None,
        crls: Mapping[str, CrlState] | None = None,
    ) -> None:
        """``notified``: ids of issuers whose changes come over LISTEN/NOTIFY; ``crls``: the
        CRLs in force of the issuers whose status comes from them."""
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.memory = MemoryTier(config.cache.max_entries, config.cache.max_bytes, clock)
        self.flights: Singleflight[tuple[Entry, str]] = Singleflight()
        self._notified = notified
        self._sources = dict(sources)
        self._crls = dict(crls or {})
        # Until the listener has connected, nothing for notified issuers may be
        # served from memory.
        self.channel_up = not notified
        self.signing = 0  # productions in progress (cache misses and live signatures)
        self._apply(config, signers)

    def _apply(self, config: Config, signers: Mapping[str, Signer]) -> None:
        self.config = config
        if len(config.issuers) >= 1 << _ISSUER_BITS:
            raise ValueError(f"at most {(1 << _ISSUER_BITS) - 1} issuers")
        self.issuers = {
            ic.id: Issuer(
                ic,
                signers[ic.id],
                self._sources[ic.id],
                n,
                ic.id in self._notified,
                isinstance(self._sources[ic.id], IndexSource | CrlSource),
                self._crls.get(ic.id),
            )
            for n, ic in enumerate(config.issuers)
        }
        # (hash name, issuer name hash, issuer key hash) -> issuer, built once so
        # that matching a request is one dict lookup (SPEC §7: precompute).
        by_certid: dict[tuple[str, bytes, bytes], Issuer] = {}
        for issuer in self.issuers.values():
            for name, (name_hash, key_hash) in issuer.signer.certid_hashes.items():
                by_certid[(name, name_hash, key_hash)] = issuer
        self._by_certid = by_certid
        self._validity = config.responses.validity
        self._backdate = config.responses.backdate
        self._window_second = -1  # the times of a response are remembered for one second
        self._window_times: tuple[dt.datetime, dt.datetime, dt.datetime, Window] | None = None
        self._echo_nonce = config.responses.nonce == "echo"
        self._max_certids = config.responses.max_certids_per_request
        self._max_signing = config.responses.max_inflight_signatures
        self._crl_config = config.crl
        config_issuers = self.issuers.values()
        self._signed = {i.config.id: self.metrics.signing(i.config.id, i.signer.key_type) for i in config_issuers}

    def reload(self, config: Config, signers: Mapping[str, Signer]) -> list[str]:
        """Switch to a new config and signers without a restart; returns the issuers whose answers changed.

        The issuers and their status sources must be the same (the caller checks);
        the memory entries of an issuer are dropped only if its key, certificate
        or policy changed, or if response settings changed for everyone.
        """
        old = self.issuers
        responses_changed = config.responses != self.config.responses
        self._apply(config, signers)
        changed = [
            issuer_id
            for issuer_id, issuer in self.issuers.items()
            if responses_changed
            or issuer.signer.fingerprint != old[issuer_id].signer.fingerprint
            or dataclasses.replace(issuer.config, key_passphrase_file=None)
            != dataclasses.replace(old[issuer_id].config, key_passphrase_file=None)
        ]
        for issuer_id in changed:
            index = self.issuers[issuer_id].index
            self.flights.invalidate(_of_issuer(self.flights.keys(), index))
            self.memory.drop(_of_issuer(self.memory.keys(), index))
            self.metrics.invalidation["local"].inc()
        return changed

    def issuer_for(self, certid: CertId) -> Issuer:
        """The issuer a CertID names; Unauthorized if we do not serve it."""
        issuer = self._by_certid.get((certid.hash_name, certid.name_hash, certid.key_hash))
        if issuer is None:
            raise Unauthorized("issuer not served by this responder")
        return issuer

    async def respond(self, request: OcspRequest) -> Outcome:
        """The successful response for a request, where it came from (MEMORY, POSTGRES, SIGNED,
        LIVE), and for a cacheable request its memory-tier key (for the web layer's map of
        requests seen before: the next identical one is then a hit without parsing).

        Raises MalformedRequest, Unauthorized or TryLater (and subclasses).
        """
        certids = request.certids
        if len(certids) > self._max_certids:
            raise MalformedRequest(f"{len(certids)} CertIDs in one request (limit {self._max_certids})")
        cacheable = self.cacheable(request)
        if cacheable is not None:
            key, issuer = cacheable
            entry = self.from_memory(key, issuer)
            if entry is not None:
                return Outcome(entry, MEMORY, cacheable)
            certid = certids[0]
            entry, tier = await self.flights.do(key, lambda flight: self._produce(key, issuer, certid, flight))
            return Outcome(entry, tier, cacheable)
        issuers = [self.issuer_for(c) for c in certids]
        entry = await self._sign_live(issuers, certids, request.nonce if self._echo_nonce else None)
        return Outcome(entry, LIVE, None)

    def cacheable(self, request: OcspRequest) -> Cacheable | None:
        """The memory-tier key and issuer of a cacheable request (one CertID, no nonce to echo)."""
        if len(request.certids) != 1 or (request.nonce is not None and self._echo_nonce):
            return None
        certid = request.certids[0]
        issuer = self.issuer_for(certid)
        return Cacheable(make_key(issuer.index, certid.hash_name, certid.serial), issuer)

    def memory_trusted(self, issuer: Issuer) -> bool:
        """Whether memory answers for this issuer may be served and kept (SPEC §3.3)."""
        return self.channel_up or not issuer.needs_channel

    def from_memory(self, key: Key, issuer: Issuer) -> Entry | None:
        """The memory tier's answer for key, if it may be served; counted as a hit or a miss."""
        if self.memory_trusted(issuer):
            entry = self.memory.get(key)
            if entry is not None:
                self.metrics.memory_hit.n += 1
                return entry
            self.metrics.memory_miss.n += 1
        return None

    def in_memory(self, key: Key, issuer: Issuer) -> Entry | None:
        """``from_memory`` without counting (the hit path counts its hits; a miss is counted by ``respond``)."""
        return self.memory.get(key) if self.memory_trusted(issuer) else None

    def key(self, issuer_id: str, hash_name: str, serial: int) -> Key:
        """The memory-tier key of (issuer, CertID hash, serial), e.g. to inspect the tier."""
        return make_key(self.issuers[issuer_id].index, hash_name, serial)

    async def _produce(
        self, key: Key, issuer: Issuer, certid: CertId, flight: Flight[tuple[Entry, str]]
    ) -> tuple[Entry, str]:
        async with self._signing_slot(issuer.answers_inline):
            for _ in range(MAX_PRODUCTION_ROUNDS):
                flight.stale = False
                # A reload (new key) marks flights stale: each round signs with the current signer.
                issuer = self.issuers.get(issuer.config.id, issuer)
                issuer_id, signer = issuer.config.id, issuer.signer
                lookup = await issuer.source.fetch(issuer_id, certid.serial, certid.hash_name, signer.fingerprint)
                if flight.stale:
                    continue  # invalidated while the status was read: it may be older than the change
                stored = lookup.stored
                if stored is not None and self.clock() < stored.refresh_at:
                    entry, tier = stored, POSTGRES
                    self.metrics.postgres_hit.n += 1
                else:
                    if issuer.needs_channel:
                        self.metrics.postgres_miss.n += 1
                    try:
                        entry, tier = await self.sign_entry(issuer, certid, lookup.status), SIGNED
                    except KeyUnavailable:
                        if flight.stale:
                            continue  # the stored answer may be older than the change: read again
                        # The token is down: a stored answer due for refresh is still
                        # valid until its nextUpdate, and better than tryLater.
                        if stored is None or self.clock() >= stored.next_update:
                            raise
                        self.metrics.postgres_hit.n += 1
                        return stored, POSTGRES
                    if flight.stale:
                        continue  # invalidated while a token key signed: the status may have changed
                    # Off the request path; the database keeps it only while the
                    # status is still the version it was signed from (SPEC §3.2).
                    issuer.source.write_back(
                        issuer_id, certid.serial, certid.hash_name, entry, lookup.status.version, signer.fingerprint
                    )
                # Nothing since the last flight.stale check awaited: an invalidation
                # arriving from here on finds the entry in memory and drops it.
                if self.memory_trusted(issuer):
                    self.memory.put(key, entry)
                return entry, tier
        raise TryLater("status changed during every attempt to answer")

    async def _sign_live(self, issuers: list[Issuer], certids: tuple[CertId, ...], nonce: bytes | None) -> Entry:
        """Sign a response that is not cached: it carries a nonce or several CertIDs."""
        signer = issuers[0].signer
        if any(i.signer is not signer for i in issuers):
            # One response has one signature; CertIDs of issuers with different
            # responders cannot be answered together.
            raise Unauthorized("CertIDs of issuers with different responders in one request")
        async with self._signing_slot(any(i.answers_inline for i in issuers)):
            answers = []
            for issuer, certid in zip(issuers, certids, strict=True):
                lookup = await issuer.source.fetch(issuer.config.id, certid.serial, certid.hash_name, "")
                answers.append(self._answer(issuer, lookup.status))
            produced_at, this_update, next_update, window = self._window(issuers)
            der = await self._sign(issuers[0], certids, answers, produced_at, this_update, next_update, nonce)
            status = SERVED[answers[0].status] if len(answers) == 1 else Served.MIXED
            return Entry(der, status, window)

    async def sign_entry(self, issuer: Issuer, certid: CertId, status: CertStatus) -> Entry:
        """Sign a cacheable (nonce-free, one-CertID) response for this status.

        A key file signs without suspending; a token key's signature is awaited
        in its session threads (KeyUnavailable, a TryLater, while it is down).
        """
        answer = self._answer(issuer, status)
        produced_at, this_update, next_update, window = self._window((issuer,))
        der = await self._sign(issuer, (certid,), (answer,), produced_at, this_update, next_update, None)
        return Entry(der, SERVED[answer.status], window)

    async def _sign(
        self,
        issuer: Issuer,
        certids: tuple[CertId, ...],
        answers: Sequence[Answer],
        produced_at: dt.datetime,
        this_update: dt.datetime,
        next_update: dt.datetime,
        nonce: bytes | None,
    ) -> bytes:
        counter, seconds, errors = self._signed[issuer.config.id]
        started = time.perf_counter()
        try:
            der = await issuer.signer.sign_async(
                certids, answers, this_update, next_update, nonce, produced_at=produced_at
            )
        except Exception:
            errors.inc()
            raise
        seconds.observe(time.perf_counter() - started)
        counter.n += 1
        return der

    async def sign_stored(self, issuer_id: str, serial: int, hash_name: str, status: CertStatus) -> Entry:
        """Sign the response for a stored row (refresh, presign): the CertID is rebuilt."""
        issuer = self.issuers[issuer_id]
        name_hash, key_hash = issuer.signer.certid_hashes[hash_name]
        return await self.sign_entry(issuer, CertId(hash_name, name_hash, key_hash, serial), status)

    def _signing_slot(self, inline: bool) -> _Slot:
        """A slot under max_inflight_signatures, or Overloaded (tryLater); ``inline``: see _Slot."""
        if self.signing >= self._max_signing:
            raise Overloaded("too many signatures in flight")
        return _Slot(self, inline)

    def _window(self, issuers: Iterable[Issuer]) -> tuple[dt.datetime, dt.datetime, dt.datetime, Window]:
        """producedAt, thisUpdate, nextUpdate and their memory-tier Window, for the clock's second.

        An answer derived from CRLs claims no more freshness than they do: its
        nextUpdate is at most theirs (TryLater past it, CrlState.bound).
        """
        times = self._times()
        bounds = [i.crl.bound(self.clock(), self._crl_config) for i in issuers if i.crl is not None]
        bound = min((b for b in bounds if b is not None), default=None)
        if bound is None or bound >= times[2].timestamp():
            return times
        if any(i.crl is not None and i.crl.stale(self.clock()) for i in issuers):
            self.metrics.crl_stale_answers.inc()
        produced_at, this_update = times[0], times[1]
        next_update = dt.datetime.fromtimestamp(int(bound), dt.UTC)
        window = self.memory.windows[(this_update.timestamp(), next_update.timestamp())]
        return produced_at, this_update, next_update, window

    def _times(self) -> tuple[dt.datetime, dt.datetime, dt.datetime, Window]:
        """``_window`` without a bound: the same for every answer signed in one second."""
        # Whole seconds: the DER holds whole seconds, and the HTTP headers
        # (Last-Modified, Expires) must say the same as the DER.
        now = int(self.clock())
        times = self._window_times
        if times is None or now != self._window_second:
            produced_at = dt.datetime.fromtimestamp(now, dt.UTC)
            this_update = produced_at - self._backdate
            next_update = this_update + self._validity
            window = self.memory.windows[(this_update.timestamp(), next_update.timestamp())]
            times = self._window_times = (produced_at, this_update, next_update, window)
            self._window_second = now
        return times

    @staticmethod
    def _answer(issuer: Issuer, status: CertStatus) -> Answer:
        if status.status is Status.GOOD:
            return Answer(Status.GOOD)
        if status.status is Status.REVOKED:
            return Answer(Status.REVOKED, status.revoked_at, status.reason)
        if issuer.config.crl and issuer.config.crl_unlisted == "good":
            return Answer(Status.GOOD)  # the operator's choice: not on the CRL means good (issue 15)
        policy = issuer.config.unknown_serial
        if policy == "revoked":
            return Answer(Status.REVOKED, EXTENDED_REVOKE_TIME, HOLD.flag, extended_revoke=True)
        if policy == "unauthorized":
            raise Unauthorized("serial not issued by this CA")
        return Answer(Status.UNKNOWN)

    def invalidate(self, issuer_id: str, serials: Iterable[int], cause: str = "notify") -> int:
        """Forget everything known about these serials; returns entries dropped."""
        self.metrics.invalidation[cause].inc()
        issuer = self.issuers.get(issuer_id)
        if issuer is None:
            return 0
        keys = [make_key(issuer.index, name, serial) for serial in serials for name in HASH_NAMES]
        self.flights.invalidate(keys)
        return self.memory.drop(keys)

    def invalidate_all(self, cause: str = "notify") -> int:
        """Forget every cached answer (e.g. when invalidations may have been missed)."""
        self.metrics.invalidation[cause].inc()
        self.flights.invalidate_all()
        return self.memory.clear()

    def on_notify(self, payload: str) -> int:
        """Apply one status-change notification: ``issuer serial``, ``issuer *`` or ``*``."""
        issuer_id, _, serial = payload.partition(" ")
        if issuer_id == "*" or serial == "*":
            # A bulk change: flushing everything is simpler than per-issuer
            # bookkeeping and equally safe.
            return self.invalidate_all()
        try:
            number = int(serial, 16)
        except ValueError:
            event(log, "bad_notification", logging.WARNING, payload=payload[:200])
            return self.invalidate_all()
        return self.invalidate(issuer_id, (number,))

    def channel_lost(self) -> None:
        """The LISTEN connection is down: forget, and stop trusting, memory answers."""
        self.channel_up = False
        self.metrics.listener_connected.set(0)
        dropped = self.invalidate_all("channel_loss")
        event(log, "channel_lost", logging.WARNING, flushed=dropped)

    def channel_restored(self) -> None:
        """LISTEN is back: changes made meanwhile were missed, so flush once more."""
        dropped = self.invalidate_all("channel_loss")
        self.channel_up = True
        self.metrics.listener_connected.set(1)
        event(log, "channel_restored", flushed=dropped)


def _of_issuer(keys: Iterable[Hashable], index: int) -> list[Hashable]:
    return [k for k in keys if isinstance(k, int) and key_issuer_index(k) == index]


class _Slot:
    """Counts one production against max_inflight_signatures.

    A production whose source answers without suspending (``inline``:
    index.txt) yields to the loop once on entering, with its slot counted.
    Without that, every miss would take, use and give back its slot in one
    step, signing inline, and no flood of them would ever find the bound
    reached; now the productions that start in one loop turn see each
    other, and those past the bound get tryLater (issue 11). A database
    fetch suspends anyway: those productions are counted while they wait.
    """

    __slots__ = ("_inline", "_responder")

    def __init__(self, responder: Responder, inline: bool) -> None:
        self._responder = responder
        self._inline = inline

    async def __aenter__(self) -> None:
        self._responder.signing += 1
        if self._inline:
            try:
                await asyncio.sleep(0)
            except BaseException:
                self._responder.signing -= 1  # cancelled before the body ran: __aexit__ will not
                raise

    async def __aexit__(self, *exc: object) -> None:
        self._responder.signing -= 1
