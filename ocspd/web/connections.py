"""How many connections one process holds on the OCSP port: ``[server] max_connections``.

Every connection holds a file descriptor and a little memory, and a process
that runs out of descriptors stops accepting anyone (issue 11: 1,100 idle
sockets under systemd's default limit of 1,024 left a normal client 15
answers out of 613). So the front counts its connections, on the fast path
(``ocspd/web/fast.py``) and on aiohttp's side alike, and past the limit:

1. closes the connections that have been idle longest: no answer written nor
   being produced for the longest time, which is an idle keep-alive
   connection or a head still trickling in (each would be closed by
   ``keepalive_timeout`` anyway, the oldest first);
2. when none is idle (every connection has an answer being produced or
   owed), refuses the new connection: closed at once, unanswered (and for
   ``NONE_IDLE_SECONDS`` the next ones too, without looking again).

Either is counted in ``ocspd_connections_limited_total{action}`` and logged
at most once per ``LOG_SECONDS`` (with the number of lines held back).

A head that is not whole within ``[server] header_timeout`` of its first
byte is closed too (``aiohttp_glue.head_timed_handler`` on aiohttp's side;
the fast path sweeps its own connections).

A connection handed from the fast path to aiohttp stays one connection.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from ocspd.logs import Throttle, event
from ocspd.metrics import Metrics
from ocspd.web.aiohttp_glue import (
    RequestHandler,
    handler_closing,
    handler_has_request,
    handler_idle_until,
    head_timed_handler,
)

log = logging.getLogger("ocspd.http")

# aiohttp's RequestHandler default, used when the runner sets none.
KEEPALIVE_TIMEOUT = 3630.0
# ServerConfig's defaults, for a server built without a configuration (tests).
MAX_CONNECTIONS = 4096
HEADER_TIMEOUT = 5.0
LOG_SECONDS = 10.0
# Past the limit, at least this share of it is closed at once (1/64: 64 of
# 4,096), so that a flood of new connections costs one look over the open ones
# per batch rather than per new connection.
CLOSE_BATCH_SHARE = 64
# After a look found none idle, new connections past the limit are refused
# without another look for this long (seconds): the same bound on that cost.
NONE_IDLE_SECONDS = 0.05


class BoundedServer(web.Server):
    """aiohttp's low-level server, holding at most ``max_connections`` connections (module docstring).

    ``dispatch`` and ``kwargs`` are what a ``web.Server`` takes.
    """

    def __init__(
        self,
        dispatch: Any,
        *,
        max_connections: int = MAX_CONNECTIONS,
        header_timeout: float = HEADER_TIMEOUT,
        metrics: Metrics | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dispatch, **kwargs)
        self.keepalive_timeout = float(kwargs.get("keepalive_timeout", KEEPALIVE_TIMEOUT))
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.open = 0  # connections whose transport is not closed yet
        self.handing_over = False  # a fast-path connection becoming aiohttp's: counted already
        self._closing: set[object] = set()  # closed here, their connection_lost still to come
        self._limited = (
            {action: metrics.connections_limited.labels(action) for action in ("idle_closed", "refused")}
            if metrics is not None else None
        )  # fmt: skip
        self._log = Throttle(LOG_SECONDS)
        self._none_idle_until = float("-inf")

    def __call__(self) -> RequestHandler:
        """A handler for a connection of aiohttp's (new, or handed over by the fast path)."""
        return head_timed_handler(self, self.header_timeout)

    # -- aiohttp's RequestHandler calls these for its connections ------------------------------

    def connection_made(self, handler: RequestHandler, transport: Any) -> None:
        super().connection_made(handler, transport)
        if self.handing_over:
            return
        self.open += 1
        if not self.admit(handler):
            handler.force_close()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.open -= 1
        self._closing.discard(handler)

    # -- the limit -----------------------------------------------------------------------------

    def admit(self, newcomer: object) -> bool:
        """Make room for ``newcomer`` (already counted in ``open``) if the limit is passed;
        False: it is refused, and the caller closes it."""
        over = self.open - len(self._closing) - self.max_connections
        if over <= 0:
            return True
        now = asyncio.get_running_loop().time()
        idle: list[tuple[float, object, Callable[[], None]]] = []
        if now >= self._none_idle_until:
            closing = self._closing
            idle = [item for item in self.idle_connections() if item[1] is not newcomer and item[1] not in closing]
            if not idle:
                self._none_idle_until = now + NONE_IDLE_SECONDS
        if not idle:
            self._closing.add(newcomer)
            self._count("refused", 1)
            return False
        batch = max(over, self.max_connections // CLOSE_BATCH_SHARE)
        oldest = heapq.nsmallest(batch, idle, key=lambda item: item[0])
        for _, conn, close in oldest:
            self._closing.add(conn)
            close()
        self._count("idle_closed", len(oldest))
        return True

    def lost(self, conn: object) -> None:
        """A connection of a subclass's own (not aiohttp's) is gone."""
        self.open -= 1
        self._closing.discard(conn)

    def idle_connections(self) -> Iterator[tuple[float, object, Callable[[], None]]]:
        """(when keepalive_timeout would close it, the connection, how to close it) of each idle one."""
        for handler in self.connections:
            # No request queued nor being answered (its body read included): between
            # requests, before the first, or with a head still arriving.
            if not (handler_has_request(handler) or handler_closing(handler)):
                yield handler_idle_until(handler), handler, handler.force_close

    def _count(self, action: str, n: int) -> None:
        if self._limited is not None:
            self._limited[action].inc(n)
        held = self._log.allow()
        if held is not None:
            event(
                log,
                "connection_limit",
                action=action,
                connections=n,
                open=self.open,
                limit=self.max_connections,
                suppressed=held,
            )
