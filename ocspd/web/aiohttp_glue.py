"""Every use of aiohttp's private API in ocspd, in one place.

The fronts (``runner.py``, ``fast.py``, ``connections.py``) build on aiohttp's
low-level server, which documents ``web.Server`` as a protocol factory and
``BaseRunner`` as the base of runners, but not the hooks and attributes used
here. Each is written against aiohttp 3.9 to 3.14 (setup.cfg pins ``<4``; read
against 3.14.5): an aiohttp upgrade checks this module, and nothing else.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = [
    "LowLevelRunner",
    "RequestHandler",
    "handler_closing",
    "handler_has_request",
    "handler_idle_until",
    "head_timed_handler",
    "request_factory",
    "write_continue",
]


class LowLevelRunner(web.BaseRunner):
    """A runner, used as ``web.AppRunner`` is, whose ``web.Server`` a subclass builds.

    aiohttp 3.9-3.14: ``BaseRunner.setup`` awaits the abstract ``_make_server``
    and ``cleanup`` awaits ``_cleanup_server`` after the server's shutdown; the
    runner's keyword arguments are in ``_kwargs``. Subclasses implement
    ``start_server`` and ``stop_server`` instead.
    """

    __slots__ = ()

    @abc.abstractmethod
    async def start_server(self, kwargs: dict[str, Any]) -> web.Server:
        """Build the server; ``kwargs`` are the runner's keyword arguments (handler settings)."""

    @abc.abstractmethod
    async def stop_server(self) -> None:
        """Called once the server has shut down."""

    async def _make_server(self) -> web.Server:
        return await self.start_server(dict(self._kwargs))

    async def _cleanup_server(self) -> None:
        await self.stop_server()


def request_factory(
    loop: asyncio.AbstractEventLoop, client_max_size: int
) -> Any:  # aiohttp's _RequestFactory is private too
    """A ``web.Server(request_factory=...)`` making requests with ``client_max_size``.

    aiohttp 3.9-3.14: ``web.BaseRequest(message, payload, protocol, writer, task,
    loop, client_max_size=...)``, as ``web.Application._make_request`` calls it.
    """

    def make_request(
        message: Any, payload: Any, protocol: Any, writer: Any, task: asyncio.Task[None]
    ) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=client_max_size)

    return make_request


async def write_continue(request: web.BaseRequest) -> None:
    """Send ``HTTP/1.1 100 Continue`` as aiohttp's router does (aiohttp 3.9-3.14,
    ``web_urldispatcher._default_expect_handler``): the interim response is not
    part of the body, so ``writer.output_size`` goes back to 0."""
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0


def head_timed_handler(server: web.Server, header_timeout: float) -> RequestHandler:
    """aiohttp's handler for a new connection of ``server``, with a head timeout (``_HeadTimedHandler``).

    aiohttp 3.9-3.14: ``web.Server.__call__`` builds
    ``RequestHandler(server, loop=server._loop, **server._kwargs)``.
    """
    return _HeadTimedHandler(server, loop=server._loop, header_timeout=header_timeout, **server._kwargs)


def handler_has_request(handler: RequestHandler) -> bool:
    """A request queued or being answered, its body read included (aiohttp 3.9-3.14:
    ``_messages``, ``_request_in_progress``, read with defaults)."""
    return bool(getattr(handler, "_request_in_progress", False) or getattr(handler, "_messages", None))


def handler_closing(handler: RequestHandler) -> bool:
    """``force_close()`` was called (aiohttp 3.9-3.14: ``_force_close``)."""
    return bool(handler._force_close)


def handler_idle_until(handler: RequestHandler) -> float:
    """When aiohttp's keep-alive timer would close the idle ``handler`` (aiohttp 3.10-3.14:
    ``_next_keepalive_close_time``; 0.0 before that, or when no timer runs)."""
    until: float = getattr(handler, "_next_keepalive_close_time", 0.0)
    return until


class _HeadTimedHandler(RequestHandler):
    """aiohttp's handler, closing a connection whose request head is not whole within
    ``header_timeout`` of its first byte: aiohttp's own timer (the keep-alive one) would
    let a head trickle in for as long as ``keepalive_timeout``.

    aiohttp 3.9-3.14: ``_loop``, ``_messages``, ``_request_in_progress``, ``_force_close``.
    """

    __slots__ = ("_head_timer", "_header_timeout")

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages or self._request_in_progress:  # the head is whole: a request to answer
            self._stop_head_timer()
        elif self._head_timer is None and not self._force_close:
            self._head_timer = self._loop.call_later(self._header_timeout, self._head_late)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _head_late(self) -> None:
        self._head_timer = None
        if not (self._messages or self._request_in_progress):
            self.force_close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
