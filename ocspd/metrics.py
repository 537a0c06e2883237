"""Prometheus metrics (SPEC §5), served on the admin listener.

One ``Metrics`` per app, on a registry of its own, so that two apps in one
process (tests, replicas side by side) count separately. With several worker
processes, prometheus-client's multiprocess mode writes every value to files
in ``PROMETHEUS_MULTIPROC_DIR`` and the supervisor serves their sum. Labels
are bounded: no serials, no client addresses.
"""

from __future__ import annotations

import os
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from ocspd import __version__

# OCSP response statuses as labels, plus HTTP outcomes the handler produces.
STATUSES = (
    "successful",
    "not_modified",
    "malformedRequest",
    "internalError",
    "tryLater",
    "unauthorized",
    "request_too_large",
    "body_cut_short",
)
METHODS = ("GET", "POST")
INVALIDATION_CAUSES = ("notify", "local", "channel_loss", "index_reload", "crl")
WRITE_BACK_RESULTS = ("written", "refused", "failed", "dropped")
# ocspd_status_reads_total's (target, reason) pairs, the ones ocspd/store/source.py counts by.
STATUS_READS = (
    ("read_dsn", "fresh"),
    ("primary", "pending"),
    ("primary", "behind"),
    ("primary", "read_dsn_failed"),
    ("primary", "lagging"),
    ("primary", "down"),
)
# The background loops whose unexpected exceptions are counted (ocspd_background_errors_total).
BACKGROUND_LOOPS = ("gauges", "refresh", "index_watch", "crl_poll")
# Why the fast HTTP path handed a request to aiohttp: the values of ocspd.web.head.HandOff.
HANDOFF_REASONS = (
    "request_line",
    "method",
    "target",
    "version",
    "field_syntax",
    "repeated_field",
    "too_many_fields",
    "no_host",
    "hand_off_field",
    "content_length",
    "body_too_large",
    "connection",
    "head_too_large",
    "partial_reads",
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SIGNING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class Tally:
    """A counter for the hot path: a plain int, added to its Prometheus child by ``flush``.

    prometheus-client's inc() takes a lock (and in multiprocess mode writes a
    file mapping); per request that cost shows in the hit-path benchmark.
    """

    __slots__ = ("child", "n")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self.n = 0

    def flush(self) -> None:
        if self.n:
            n, self.n = self.n, 0
            self.child.inc(n)


class Timing:
    """A histogram for the hot path: bucket counts in a list, flushed into the Prometheus child."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        # The child's upper bounds, +Inf last: the same bucket choice as observe().
        self.bounds: list[float] = list(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def flush(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        # prometheus-client has no bulk observe, and observe() per observation
        # costs ~5 times Timing.observe: its private per-bucket values add many at
        # once. setup.cfg bounds the release; tests/test_metrics.py checks them.
        buckets = self.child._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        self.child._sum.inc(self.total)
        self.total = 0.0


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, when this process runs in it."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric of one ocspd process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "ocspd_requests",
            "OCSP requests answered, by HTTP method and OCSP response status",
            ["method", "status"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "ocspd_cache_lookups",
            "Cache lookups by tier (memory, postgres) and result (hit, miss)",
            ["tier", "result"],
            registry=r,
        )
        self.invalidations = Counter(
            "ocspd_invalidations",
            "Invalidations by cause: notify (a status change from Postgres), local (reload, key rollover), "
            "channel_loss (LISTEN connection lost or restored: memory flushed), index_reload (index.txt changed)",
            ["cause"],
            registry=r,
        )
        self.signatures = Counter(
            "ocspd_signatures", "OCSP responses signed, by issuer and key type", ["issuer", "key_type"], registry=r
        )
        self.signature_errors = Counter(
            "ocspd_signature_errors", "Signing attempts that raised, by issuer", ["issuer"], registry=r
        )
        self.inflight_signatures = Gauge(
            "ocspd_inflight_signatures",
            "Productions (misses and live signatures) in progress",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.request_seconds = Histogram(
            "ocspd_request_duration_seconds",
            "Time to answer an OCSP request",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.signing_seconds = Histogram(
            "ocspd_signing_duration_seconds",
            "Time to build and sign one OCSP response",
            ["issuer"],
            buckets=_SIGNING_BUCKETS,
            registry=r,
        )
        self.memory_entries = Gauge(
            "ocspd_memory_entries", "Responses held in the memory tier", registry=r, multiprocess_mode="livesum"
        )
        self.memory_bytes = Gauge(
            "ocspd_memory_bytes",
            "Bytes accounted to the memory tier (DER plus per-entry overhead)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.listener_connected = Gauge(
            "ocspd_listener_connected",
            "1 while the LISTEN connection is up (with several workers: 1 only if every worker's is)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.write_backs = Counter(
            "ocspd_write_backs",
            "Signed responses sent to the Postgres tier, by result: written, refused (the status changed since "
            "it was read, or a newer response was there), failed (database error), dropped (queue full)",
            ["result"],
            registry=r,
        )
        self.status_reads = Counter(
            "ocspd_status_reads",
            "Request-path status reads (batches) with a [database] read_dsn, by target and reason: read_dsn/fresh "
            "(served from the read pool), primary/pending, primary/behind (the read pool had not replayed a "
            "notified change), primary/read_dsn_failed, primary/lagging and primary/down (read_dsn out of the "
            "read set)",
            ["target", "reason"],
            registry=r,
        )
        for target, reason in STATUS_READS:
            self.status_reads.labels(target, reason)  # present (at 0) before the first
        self.read_target_lag = Gauge(
            "ocspd_read_target_lag_seconds",
            "How far behind the primary a read target is (the age of the oldest WAL it has not replayed; NaN "
            "while it does not answer), checked every second (with several workers: the largest)",
            ["target"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.read_target_in_use = Gauge(
            "ocspd_read_target_in_use",
            "1 while the read target is in the read set (answering, and within read_max_lag of the primary; "
            "with several workers: 1 only if it is in every worker's)",
            ["target"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.listener_reconnects = Counter(
            "ocspd_listener_reconnects", "LISTEN connections re-established after a loss", registry=r
        )
        self.requests_outside_prefix = Counter(
            "ocspd_requests_outside_prefix",
            "Requests for a path outside [server] path_prefix, answered HTTP 404 (an AIA URL that does not "
            "match the prefix shows here)",
            registry=r,
        )
        self.connections_limited = Counter(
            "ocspd_connections_limited",
            "Connections closed because [server] max_connections was reached, by action: idle_closed (the "
            "longest-idle ones, to make room for a new one), refused (a new one, when none was idle)",
            ["action"],
            registry=r,
        )
        for action in ("idle_closed", "refused"):
            self.connections_limited.labels(action)  # present (at 0) before the first
        self.http_handoffs = Counter(
            "ocspd_http_handoffs",
            "Requests the fast HTTP path handed to aiohttp (with their connection), by reason: the first rule "
            "of the fast path's head reader the request did not meet (ocspd/web/head.py)",
            ["reason"],
            registry=r,
        )
        self.background_errors = Counter(
            "ocspd_background_errors",
            "Unexpected exceptions (bugs) in a background loop, by loop; each is logged at ERROR and the loop goes on",
            ["loop"],
            registry=r,
        )
        for loop in BACKGROUND_LOOPS:
            self.background_errors.labels(loop)  # present (at 0) before the first
        self.crl_fetches = Counter(
            "ocspd_crl_fetches",
            "Fetches of an issuer's base or delta CRL, by result: applied (a newer CRL, checked, now in force), "
            "unchanged (the one in force again), not_modified (HTTP 304, or the file unchanged), refused (failed "
            "a check: the one in force stays), failed (no location answered)",
            ["issuer", "crl", "result"],
            registry=r,
        )
        self.crl_number = Gauge(
            "ocspd_crl_number",
            "CRL number of the base or delta CRL in force (with several workers: the lowest)",
            ["issuer", "crl"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.crl_next_update = Gauge(
            "ocspd_crl_next_update_timestamp_seconds",
            "nextUpdate of the base or delta CRL in force, as a POSIX time (with several workers: the earliest)",
            ["issuer", "crl"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.crl_entries = Gauge(
            "ocspd_crl_entries",
            "Entries of the base or delta CRL in force",
            ["issuer", "crl"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.crl_stale_answers = Counter(
            "ocspd_crl_stale_answers",
            'Answers signed from a CRL past its nextUpdate ([crl] stale = "serve"; otherwise they are tryLater)',
            registry=r,
        )
        self.hsm_token_up = Gauge(
            "ocspd_hsm_token_up",
            "1 while a PKCS#11 token holding responder keys signs, 0 while it is unavailable (misses are then "
            "answered from the stored responses or tryLater, and the token is reopened with backoff)",
            ["token"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.hsm_reopens = Counter(
            "ocspd_hsm_reopens",
            "Attempts to reopen a PKCS#11 token that failed, by result (ok, failed)",
            ["token", "result"],
            registry=r,
        )
        self.build_info = Gauge(
            "ocspd_build_info",
            "Always 1; the version label says which ocspd runs",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(__version__).set(1)
        # Hot-path counters: plain ints flushed at scrape time and once a second.
        self.request_counter = {(m, s): Tally(self.requests.labels(m, s)) for m in METHODS for s in STATUSES}
        self.request_latency = {m: Timing(self.request_seconds.labels(m)) for m in METHODS}
        self.memory_hit = Tally(self.cache_lookups.labels("memory", "hit"))
        self.memory_miss = Tally(self.cache_lookups.labels("memory", "miss"))
        self.postgres_hit = Tally(self.cache_lookups.labels("postgres", "hit"))
        self.postgres_miss = Tally(self.cache_lookups.labels("postgres", "miss"))
        self.outside_prefix = Tally(self.requests_outside_prefix)
        self._tallies: list[Tally | Timing] = [
            *self.request_counter.values(),
            *self.request_latency.values(),
            self.memory_hit,
            self.memory_miss,
            self.postgres_hit,
            self.postgres_miss,
            self.outside_prefix,
        ]
        self.handoff = {reason: Tally(self.http_handoffs.labels(reason)) for reason in HANDOFF_REASONS}  # all at 0
        self._tallies += self.handoff.values()
        self._signing: dict[tuple[str, str], tuple[Tally, Timing, Counter]] = {}
        self.invalidation = {cause: self.invalidations.labels(cause) for cause in INVALIDATION_CAUSES}
        for result in WRITE_BACK_RESULTS:
            self.write_backs.labels(result)  # present (at 0) before the first write-back

    def signing(self, issuer_id: str, key_type: str) -> tuple[Tally, Timing, Counter]:
        """The signature count, signing time and error counter of an issuer's key.

        Created on first use (so the series show as 0 before the first signature).
        """
        found = self._signing.get((issuer_id, key_type))
        if found is None:
            count = Tally(self.signatures.labels(issuer_id, key_type))
            timing = Timing(self.signing_seconds.labels(issuer_id))
            found = self._signing[(issuer_id, key_type)] = (count, timing, self.signature_errors.labels(issuer_id))
            self._tallies += [count, timing]
        return found

    def flush(self) -> None:
        """Add the hot-path tallies to the Prometheus metrics."""
        for tally in self._tallies:
            tally.flush()

    def exposition(self) -> bytes:
        """The text exposition format of this process's metrics."""
        self.flush()
        return bytes(generate_latest(self.registry))


def multiprocess_exposition(path: str) -> bytes:
    """The sum over every worker process that wrote metrics into ``path``."""
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))


def mark_process_dead(pid: int) -> None:
    """Forget a worker's live gauges (multiprocess mode) once it has exited."""
    if multiprocess_dir() is not None:
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
