"""The OCSP handlers: OCSP over HTTP POST and GET, for either front.

This is the one place that maps ocspd's exceptions to what a client sees
(SPEC §2): malformedRequest, unauthorized, tryLater, and internalError for
real bugs only. Nothing a client sends produces an HTTP 500.

The handlers own the hit path's map of raw requests seen before (a POST
body, a GET path) to their memory-tier key; the composition root
(``ocspd/app.py``) clears it on a reload, which may change what a request means.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from aiohttp import hdrs, web

from ocspd.cache import Entry
from ocspd.config import Config
from ocspd.exceptions import MalformedRequest, TryLater, Unauthorized
from ocspd.logs import CLIENT_ERRORS, Throttle, event
from ocspd.metrics import Metrics
from ocspd.protocol import (
    ERROR_HEADERS,
    INTERNAL_ERROR,
    MALFORMED_REQUEST,
    OCSP_RESPONSE_TYPE,
    TRY_LATER,
    UNAUTHORIZED,
    cache_control,
    decode_get_path,
    not_modified,
    parse_request,
)
from ocspd.responder import Cacheable, Responder

log = logging.getLogger("ocspd.http")
txlog = logging.getLogger("ocspd.requests")

# Raw requests remembered for the hit path. Real ones are ~70-150 bytes; a
# larger valid request (extensions, a request signature) is simply not
# remembered, so the map stays within ~20 MB whatever clients send.
KNOWN_REQUESTS_MAX = 32768
KNOWN_REQUEST_MAX_BYTES = 512
# At most one log line per this many seconds about requests outside the prefix
# (a misconfigured AIA URL sends every client there); the metric counts them all.
OUTSIDE_PREFIX_LOG_SECONDS = 10.0
# Characters of a client's path or Host kept in a log line.
LOGGED_CHARS = 200


class Reply(NamedTuple):
    """What the OCSP handlers answer, before any HTTP framing: 200 or 304, headers, body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


# If-None-Match and If-Modified-Since of a GET (None: absent), or None for a POST.
Conditional = tuple[str | None, str | None] | None


class OcspHandlers:
    """The OCSP handlers. The hit path is kept short on purpose (SPEC §7).

    A request seen before (the same POST body, the same GET path) is mapped
    straight to its memory-tier key: identical bytes parse identically, so the
    parse is skipped. Anything not answerable from memory takes the full path.

    ``hit``, ``answer_post`` and ``answer_get`` produce a ``Reply`` for either
    front: ``post`` and ``get`` (aiohttp handlers) and ``ocspd/web/fast.py``.

    ``prefix`` always ends in "/" (the config adds it); ``bare_prefix`` is the
    same without it ("" for "/"), where POST is answered too: an AIA URL of
    ``http://host/ocsp`` makes POST clients post to "/ocsp".
    """

    def __init__(self, responder: Responder, metrics: Metrics, config: Config, clock: Callable[[], float]) -> None:
        self._responder = responder
        self.prefix = config.server.path_prefix
        self.bare_prefix = self.prefix[:-1]
        self.max_request_bytes = config.server.max_request_bytes
        self.fast_http = config.server.fast_http
        self._prefix_len = len(self.prefix)
        self._clock = clock
        self._count = metrics.request_counter
        self._memory_hit = metrics.memory_hit
        self._latency = metrics.request_latency
        self._txlog = config.log.requests
        self._outside = metrics.outside_prefix
        self._outside_log = Throttle(OUTSIDE_PREFIX_LOG_SECONDS, clock)
        # Raw request (POST body or GET path) -> (key, issuer) of a cacheable request.
        self._known: dict[bytes | str, Cacheable] = {}

    async def post(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        if hdrs.CONTENT_ENCODING in request.headers:
            refuse_content_encoding(request)
        # A wrong Content-Type is tolerated when the body parses (SPEC §2).
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._count[("POST", "request_too_large")].n += 1
            raise
        except CLIENT_ERRORS:
            # The client went away mid-body, or sent a broken chunked body: its
            # mistake, counted, never an ERROR line with a traceback (aiohttp's
            # default for what a handler raises).
            self._count[("POST", "body_cut_short")].n += 1
            raise web.HTTPBadRequest(text="request body cut short or malformed\n") from None
        reply = self.answer_known(body, None, "POST", started) or await self.answer_post(body, started)
        return _response(reply)

    async def get(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        if hdrs.CONTENT_ENCODING in request.headers:
            refuse_content_encoding(request)
        # raw_path keeps %2F and friends undecoded; the router's match_info would not.
        raw = _origin_form(request.raw_path).split("?", 1)[0][self._prefix_len :]
        h = request.headers
        conditional = (h.get("If-None-Match"), h.get("If-Modified-Since"))
        reply = self.answer_known(raw, conditional, "GET", started) or await self.answer_get(raw, conditional, started)
        return _response(reply)

    def outside_prefix(self, request: web.BaseRequest) -> None:
        """Count a request for a path outside the prefix (answered 404), and log it:
        in the transaction log when that is on, and in at most one info line per
        ``OUTSIDE_PREFIX_LOG_SECONDS`` (with the number of those not logged since)."""
        self._outside.n += 1
        # The Host field, not request.host: that falls back to socket.getfqdn(), a blocking lookup.
        path, host = request.raw_path[:LOGGED_CHARS], request.headers.get(hdrs.HOST, "")[:LOGGED_CHARS]
        if self._txlog:
            event(txlog, "request", method=request.method, status="not_found", host=host, path=path)
        held = self._outside_log.allow()
        if held is not None:
            event(log, "request_outside_prefix", method=request.method, host=host, path=path,
                  prefix=self.prefix, suppressed=held)  # fmt: skip

    @property
    def known_requests(self) -> Mapping[bytes | str, Cacheable]:
        """The raw requests seen before (POST body, GET path below the prefix) and their key and issuer."""
        return self._known

    def forget_requests(self) -> None:
        """Forget the requests seen so far: after a reload a request may mean another key."""
        self._known.clear()

    def answer_known(self, raw: bytes | str, conditional: Conditional, method: str, started: float) -> Reply | None:
        """The hit path: the answer for a request seen before, if memory has it (no parse).

        ``raw`` is the POST body or the GET path below the prefix. None means
        the full path must answer (a miss there is counted there).
        """
        known = self._known.get(raw)
        if known is None or self._txlog:
            return None
        entry = self._responder.in_memory(*known)
        if entry is None:
            return None
        self._memory_hit.n += 1
        reply, status = self._ok(entry, conditional)
        self._count[(method, status)].n += 1
        self._latency[method].observe(time.perf_counter() - started)
        return reply

    async def answer_post(self, body: bytes, started: float) -> Reply:
        """The full path for a POST body."""
        return await self._answer(body, None, "POST", started, body)

    async def answer_get(self, raw: str, conditional: Conditional, started: float) -> Reply:
        """The full path for a GET path below the prefix."""
        try:
            der = decode_get_path(raw)
        except MalformedRequest as exc:
            return self._error(MALFORMED_REQUEST, "malformedRequest", exc, "GET", started)
        return await self._answer(der, conditional, "GET", started, raw)

    async def _answer(
        self, der: bytes, conditional: Conditional, method: str, started: float, raw: bytes | str
    ) -> Reply:
        try:
            parsed = parse_request(der)
            entry, tier, cacheable = await self._responder.respond(parsed)
        except MalformedRequest as exc:
            return self._error(MALFORMED_REQUEST, "malformedRequest", exc, method, started)
        except Unauthorized as exc:
            return self._error(UNAUTHORIZED, "unauthorized", exc, method, started)
        except TryLater as exc:
            return self._error(TRY_LATER, "tryLater", exc, method, started)
        except Exception:
            log.exception("internal error answering a %s request", method)
            return self._error(INTERNAL_ERROR, "internalError", None, method, started)
        if cacheable is not None:
            self._remember(raw, cacheable)
        reply, status = self._ok(entry, conditional)
        self._count[(method, status)].n += 1
        elapsed = time.perf_counter() - started
        self._latency[method].observe(elapsed)
        if self._txlog:
            certid = parsed.certids[0]
            event(
                txlog,
                "request",
                method=method,
                hash=certid.hash_name,
                serial=f"{certid.serial:X}",
                certids=len(parsed.certids),
                status=entry.status.value,
                tier=tier,
                ms=round(elapsed * 1000, 3),
            )
        return reply

    def _remember(self, raw: bytes | str, cacheable: Cacheable) -> None:
        if len(raw) > KNOWN_REQUEST_MAX_BYTES:
            return
        known = self._known
        if len(known) >= KNOWN_REQUESTS_MAX:
            # Bounded; dropping all at once is simpler than an LRU and the
            # popular requests come back at their next occurrence.
            known.clear()
        known[raw] = cacheable

    def _ok(self, entry: Entry, conditional: Conditional) -> tuple[Reply, str]:
        window = entry.window
        etag = entry.etag
        headers = {
            "Content-Type": OCSP_RESPONSE_TYPE,
            "Cache-Control": cache_control(window.next.ts, self._clock()),
            "Last-Modified": window.this.http,
            "Expires": window.next.http,
            "ETag": etag,
        }
        if conditional is not None:
            inm, ims = conditional
            if (inm is not None or ims is not None) and not_modified(inm, ims, etag, window.this.ts):
                return Reply(304, headers, b""), "not_modified"
        return Reply(200, headers, entry.der), "successful"

    def _error(self, body: bytes, status: str, exc: Exception | None, method: str, started: float) -> Reply:
        self._count[(method, status)].n += 1
        elapsed = time.perf_counter() - started
        self._latency[method].observe(elapsed)
        if self._txlog:
            reason = str(exc) if exc else ""
            event(txlog, "request", method=method, status=status, reason=reason, ms=round(elapsed * 1000, 3))
        elif exc is not None and log.isEnabledFor(logging.DEBUG):
            event(log, "request_refused", logging.DEBUG, kind=type(exc).__name__, reason=str(exc))
        return Reply(200, ERROR_HEADERS, body)


def refuse_content_encoding(request: web.BaseRequest) -> None:
    """Raise HTTP 415 when the request declares a Content-Encoding other than identity (SPEC §2).

    ocspd decodes no request body (aiohttp's decompression is off in
    ``ocspd/web/runner.py``): an encoded one would not parse as DER, and a bad one
    made aiohttp's reader raise (HTTP 500).
    """
    codings = ",".join(request.headers.getall(hdrs.CONTENT_ENCODING))
    if any(c.strip().lower() not in ("identity", "") for c in codings.split(",")):
        # RFC 9110 §15.5.16: name the codings that would have been accepted.
        raise web.HTTPUnsupportedMediaType(headers={hdrs.ACCEPT_ENCODING: "identity"})


def _origin_form(target: str) -> str:
    """The path of a request target: an absolute-form one (``http://host/MEow...``, which
    RFC 9112 §3.2.2 says a server MUST accept) without its scheme and authority."""
    if target.startswith("/"):
        return target
    authority = target.find("//")
    path = target.find("/", authority + 2 if authority >= 0 else 0)
    return target[path:] if path >= 0 else "/"


def _response(reply: Reply) -> web.Response:
    if reply.status == 304:
        return web.Response(status=304, headers=reply.headers)
    return web.Response(body=reply.body, headers=reply.headers)
