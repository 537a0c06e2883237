"""A minimal HTTP/1.1 path for the requests OCSP clients send, in front of aiohttp.
(Over 400 lines: one connection's state machine, which reads best in one place.)

Each new connection on the OCSP port starts here. A request of the common
shape (``POST {prefix}`` with a Content-Length, or ``GET {prefix}<base64>``
without a body, HTTP/1.1 or 1.0, plain header fields) is answered by this module
directly from the OCSP handlers' ``Reply``: a memory hit is written from
``data_received`` with no task, no request or response object. Anything
else (another method or path, chunked or over-size bodies,
``Expect``, ``Upgrade``, odd header syntax, an incomplete head past the size
limit) hands the connection, with the bytes not yet answered, to aiohttp's
own protocol for the rest of its life, so every answer off this path is
aiohttp's. What counts as the common shape, and why a request is handed
over, is ``ocspd/web/head.py``'s decision; hand-overs are counted by reason
in ``ocspd_http_handoffs_total``.

Why: aiohttp's request and response objects cost more per request than the
whole hit path; below them a memory hit takes a few µs (bench/README.md).
Connections here keep the order of pipelined requests (one at a time), the
keep-alive timeout the aiohttp side uses, the connection limit
(``ocspd/web/connections.py``), and the runner's drain on shutdown
(``FastServer.pre_shutdown``/``shutdown``).

Fairness: a connection answers at most ``MAX_ANSWERS_PER_TURN`` pipelined
requests, then stops reading and goes on in a later turn of the event loop
(``call_soon``), so a client writing thousands of requests per write gets
its share of the loop and no more (issue 11: without this, one such client
held uvloop for seconds, libuv reading up to 32 buffers of it in a row).
Write flow control: while the transport's buffer is above its high-water
mark (``pause_writing``) nothing is answered and the socket is not read, so
a client that does not read its answers meets TCP's backpressure, not a
growing buffer here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from email.utils import formatdate
from typing import Any, cast

from ocspd.metrics import Metrics, Tally
from ocspd.web.connections import BoundedServer
from ocspd.web.handlers import OcspHandlers, Reply
from ocspd.web.head import INCOMPLETE, Framing, HandOff, Head, read_request

log = logging.getLogger("ocspd.http")

# Bytes read ahead while a request is being answered (pipelining): past this
# the socket is not read until the answer is out.
MAX_BUFFERED = 65536
# Pipelined requests answered in one turn of the event loop (module docstring):
# 8 memory hits are 0.1-0.2 ms here. Under 4 and 16 such clients a probe's p99
# was ~1.2x and ~2x lower than with 16 a turn, for as many answers to them
# (bench/README.md, "Pipelining fairness").
MAX_ANSWERS_PER_TURN = 8
# Reads a request may take to arrive whole (head and body) before it goes to
# aiohttp, whose parser keeps its place: here each read looks at the request
# from its start again, so a head sent a byte a read cost O(n^2) (8 KiB: 0.77 s
# of CPU). Real clients send a request in one or a few reads.
MAX_PARTIAL_READS = 16

_REASONS = {200: "OK", 304: "Not Modified"}


class FastServer(BoundedServer):
    """aiohttp's low-level server whose connections start on this module's path.

    ``dispatch`` and ``kwargs`` are what a ``BoundedServer`` takes: they serve
    every connection handed to aiohttp. ``metrics`` counts the hand-overs.
    """

    def __init__(self, handlers: OcspHandlers, dispatch: Any, *, metrics: Metrics | None = None, **kwargs: Any) -> None:
        super().__init__(dispatch, metrics=metrics, **kwargs)
        self.handlers = handlers
        self.handoffs: dict[HandOff, Tally] = (
            {reason: metrics.handoff[reason.value] for reason in HandOff} if metrics is not None else {}
        )
        self.prefix = handlers.prefix.encode()
        self.fast: set[FastProtocol] = set()
        self.loop = asyncio.get_running_loop()
        self._date_second = -1
        self._date = ""
        self._head_sweep: asyncio.TimerHandle | None = None

    def __call__(self) -> FastProtocol:  # type: ignore[override]
        return FastProtocol(self)

    def watch_heads(self) -> None:
        """Look over the connections for heads past header_timeout, a few times per timeout,
        while any head is arriving (a sweep, not a timer per request: the hit path stays free)."""
        if self._head_sweep is None:
            self._head_sweep = self.loop.call_later(min(1.0, self.header_timeout / 4), self._sweep_heads)

    def _sweep_heads(self) -> None:
        self._head_sweep = None
        since = self.loop.time() - self.header_timeout
        arriving = False
        for conn in list(self.fast):
            if not conn.head_late(since) and conn.head_arriving():
                arriving = True
        if arriving:
            self.watch_heads()

    def aiohttp_protocol(self) -> asyncio.Protocol:
        """A protocol of aiohttp's own, for a connection handed over."""
        return super().__call__()

    def idle_connections(self) -> Iterator[tuple[float, object, Callable[[], None]]]:
        yield from super().idle_connections()
        timeout = self.keepalive_timeout
        for conn in self.fast:
            if conn.is_idle():
                yield conn.idle_since + timeout, conn, conn.close_idle

    def date(self) -> str:
        """The Date header value, formatted once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True)
        return self._date

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for conn in list(self.fast):
            conn.close_when_idle()

    async def shutdown(self, timeout: float | None = None) -> None:
        # Answers being produced finish (up to the timeout), as aiohttp's do.
        busy = [conn.busy for conn in self.fast if conn.busy is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for conn in list(self.fast):
            if conn.busy is not None:
                conn.abort()  # still producing its answer after the timeout
            else:
                conn.close_when_idle()  # a close, not an abort: what is written still goes out
        await super().shutdown(timeout)


class FastProtocol(asyncio.Protocol):
    """One connection on the fast path (see the module docstring)."""

    __slots__ = (
        "_buf",
        "_closing",
        "_eof",
        "_handlers",
        "_head_since",
        "_later",
        "_loop",
        "_partial_reads",
        "_read_paused",
        "_server",
        "_start",
        "_timer",
        "_transport",
        "_write_paused",
        "busy",
        "idle_since",
    )  # fmt: skip

    def __init__(self, server: FastServer) -> None:
        self._server = server
        self._handlers = server.handlers
        self._transport: asyncio.Transport | None = None
        self._loop = server.loop
        self._buf = b""
        self._start = 0  # where the unanswered bytes in _buf begin
        self._partial_reads = 0  # reads so far of the request at _start, still incomplete
        self._head_since = 0.0  # when the first byte of an incomplete request came (0: none buffered)
        self.busy: asyncio.Task[None] | None = None
        self._closing = False
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self.idle_since = 0.0  # when the last answer was written (or the connection made)
        self._timer: asyncio.TimerHandle | None = None
        self._later: asyncio.Handle | None = None  # the next turn's share of pipelined requests

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        server = self._server
        server.fast.add(self)
        server.open += 1
        self.idle_since = self._loop.time()
        if not server.admit(self):
            self.close_idle()  # over the limit with none idle: refused (counted, logged)
            return
        timeout = server.keepalive_timeout
        if timeout > 0:
            self._timer = self._loop.call_at(self.idle_since + timeout, self._check_idle)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._forget()
        self._server.lost(self)

    def data_received(self, data: bytes) -> None:
        if len(self._buf) == self._start:  # the first byte of a request: header_timeout runs
            self._head_since = self._loop.time()
            self._server.watch_heads()
        if self._start:
            self._buf = self._buf[self._start :] + data
            self._start = 0
        else:
            self._buf = self._buf + data if self._buf else data
        if self.busy is not None or self._write_paused or self._later is not None:
            if len(self._buf) > MAX_BUFFERED:
                self._pause_reading()
            return
        self._run()

    def eof_received(self) -> bool:
        self._eof = True
        # Keep the transport open while answers are still to be written: one
        # being produced, or complete requests held back by flow control or
        # left for a later turn. Otherwise what is buffered is an incomplete
        # request: close.
        return self.busy is not None or self._write_paused or self._later is not None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume()

    # -- requests ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._process()
        except Exception:  # a bug here must cost one connection, not the process
            log.exception("internal error on the fast HTTP path")
            self.abort()

    def _process(self) -> None:
        """Answer the complete requests in the buffer, in order, while they stay on this
        path: up to ``MAX_ANSWERS_PER_TURN`` of them, the rest in later turns."""
        buf = self._buf
        pos = self._start
        handlers = self._handlers
        transport = self._transport
        answered = 0
        while pos < len(buf) and transport is not None and not self._closing:
            if self._write_paused:
                self._pause_reading()
                break
            if answered == MAX_ANSWERS_PER_TURN:
                # Not another one in this turn: other connections' reads, the
                # accepts, the timers and the admin listener come first.
                self._pause_reading()
                self._later = self._loop.call_soon(self._go_on)
                break
            started = time.perf_counter()
            request = read_request(buf, pos, self._server.prefix, handlers.max_request_bytes)
            if not isinstance(request, Head):
                if request is INCOMPLETE:
                    if self._partial_reads < MAX_PARTIAL_READS:
                        self._partial_reads += 1
                        break  # the head or the body is not whole yet
                    request = HandOff.PARTIAL_READS
                # aiohttp answers at once what is already wrong (400), not after a
                # timeout, and reads on a request trickling in without rescanning it.
                self._hand_off(buf[pos:], request)
                return
            pos = request.end
            framing = request.framing
            self._partial_reads = 0
            answer: Awaitable[Reply] | None = None
            if request.is_post:
                body = buf[request.body_start : pos]
                reply = handlers.answer_known(body, None, "POST", started)
                if reply is None:
                    answer = handlers.answer_post(body, started)
            else:
                path = request.target.split(b"?", 1)[0].decode("ascii")
                conditional = request.conditional
                reply = handlers.answer_known(path, conditional, "GET", started)
                if reply is None:
                    answer = handlers.answer_get(path, conditional, started)
            if answer is not None:
                self._start = pos
                self._head_since = self._loop.time() if pos < len(buf) else 0.0
                self.busy = self._loop.create_task(self._answer_later(answer, framing))
                return
            assert reply is not None
            self._write(reply, framing)
            answered += 1
            if framing.close:
                self._finish()
                return
        # The turn's answers are cut off the buffer once, not one by one.
        if pos == len(buf):
            self._buf, self._start = b"", 0
            self._head_since = 0.0
        else:
            if pos != self._start:  # a request was answered: what is left is the next one's start
                self._head_since = self._loop.time()
            self._start = pos
        if self._eof and not self._write_paused and self._later is None:
            self._finish()  # what is left can no longer become a request

    async def _answer_later(self, answer: Awaitable[Reply], framing: Framing) -> None:
        try:
            reply = await answer
        except Exception:  # the handlers answer every error themselves: this is a bug
            log.exception("internal error on the fast HTTP path")
            self.busy = None
            self.abort()
            return
        self.busy = None
        if self._transport is None:
            return  # the client went away meanwhile
        self._write(reply, framing)
        if framing.close or self._closing or (self._eof and len(self._buf) == self._start):
            self._finish()
            return
        self._resume()

    def _write(self, reply: Reply, framing: Framing) -> None:
        status, headers, body = reply
        version, connection, _ = framing
        lines = [f"{version} {status} {_REASONS[status]}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        if status != 304:
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append(f"Date: {self._server.date()}\r\n")
        lines.append(connection)
        lines.append("\r\n")
        assert self._transport is not None
        self._transport.write("".join(lines).encode("latin-1") + body)
        self.idle_since = self._loop.time()

    def _go_on(self) -> None:
        self._later = None
        self._resume()

    def _resume(self) -> None:
        """Go on with what was read ahead, then read again once no complete request is left."""
        if self._transport is None or self.busy is not None or self._write_paused or self._later is not None:
            return
        if len(self._buf) > self._start or self._eof:
            self._run()
        transport = self._transport  # None if handed over meanwhile
        if (
            self._read_paused and transport is not None and not transport.is_closing()
            and self.busy is None and not self._write_paused and self._later is None
        ):  # fmt: skip
            self._read_paused = False
            transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    # -- the connection's end, or its hand-over --------------------------------------------

    def _hand_off(self, unanswered: bytes, reason: HandOff) -> None:
        """From here on aiohttp serves this connection, starting with ``unanswered``."""
        transport = self._transport
        assert transport is not None
        self._forget()  # still one connection of the server's, now aiohttp's
        server = self._server
        tally = server.handoffs.get(reason)
        if tally is not None:
            tally.n += 1
        protocol = server.aiohttp_protocol()
        transport.set_protocol(protocol)
        server.handing_over = True
        try:
            protocol.connection_made(transport)
        finally:
            server.handing_over = False
        if self._write_paused:
            protocol.pause_writing()
        if self._read_paused:
            transport.resume_reading()
        protocol.data_received(unanswered)
        if self._eof:
            protocol.eof_received()

    def _forget(self) -> None:
        """This protocol no longer serves the connection: timers off, out of the server's set."""
        self._transport = None
        self._server.fast.discard(self)
        for handle in (self._timer, self._later):
            if handle is not None:
                handle.cancel()
        self._timer = self._later = None

    def is_idle(self) -> bool:
        """No answer being produced nor owed: an idle keep-alive connection, or a head arriving."""
        return self.busy is None and self._later is None and not self._write_paused and self._transport is not None

    def head_arriving(self) -> bool:
        return bool(self._head_since) and self._transport is not None and len(self._buf) > self._start

    def head_late(self, since: float) -> bool:
        """Whether an incomplete request has been arriving since before ``since``: closed then."""
        if not self._head_since or self._head_since > since or self._transport is None:
            return False
        if self.busy is not None or self._later is not None or len(self._buf) == self._start:
            return False  # a request being answered, or none begun since
        self._closing = True
        self._finish()
        return True

    def close_idle(self) -> None:
        """Closed by the connection limit (``ocspd/web/connections.py``): no further request is read."""
        self._closing = True
        self._finish()

    def _check_idle(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        timeout = self._server.keepalive_timeout
        due = self.idle_since + timeout
        if self.busy is None and self._loop.time() >= due:
            self._finish()
            return
        self._timer = self._loop.call_at(max(due, self._loop.time() + 1.0), self._check_idle)

    def close_when_idle(self) -> None:
        """Shutdown: no further request; close now, or after the answer being produced."""
        self._closing = True
        if self.busy is None:
            self._finish()

    def _finish(self) -> None:
        if self._transport is not None:
            self._transport.close()  # after what is buffered has been written

    def abort(self) -> None:
        """Close at once (shutdown timeout, or a bug)."""
        if self.busy is not None:
            self.busy.cancel()
            self.busy = None
        if self._transport is not None:
            self._transport.abort()
