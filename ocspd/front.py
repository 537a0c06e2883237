"""How ``ocspd serve`` serves the OCSP app: ocspd's fast HTTP path
(``ocspd/fasthttp.py``) and aiohttp's low-level server in front of the app's
handlers.

``OcspRunner(app)`` behaves like ``web.AppRunner(app)`` (the app's startup,
cleanup_ctx and shutdown run the same way, the handlers and limits are the
same) but dispatches to the OCSP handlers itself instead of through the
router and the middleware chain (the app has no middlewares): ~10 % of a
memory hit (bench/README.md). With ``[server] fast_http`` (the default)
the common requests do not reach aiohttp's request objects at all. Either
front holds at most ``[server] max_connections`` (``ocspd/connections.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from ocspd.connections import BoundedServer
from ocspd.fasthttp import FastServer
from ocspd.http import ENGINE, HANDLERS, METRICS, OcspHandlers, refuse_content_encoding


class OcspRunner(web.BaseRunner):
    """A runner for the app from ``init_app``, used as ``web.AppRunner`` is (see the module docstring)."""

    __slots__ = ("_app",)

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._app = app

    @property
    def app(self) -> web.Application:
        return self._app

    async def shutdown(self) -> None:
        await self._app.shutdown()

    async def _make_server(self) -> web.Server:
        self._app.on_startup.freeze()
        await self._app.startup()
        self._app.freeze()
        # Read at start, as the listeners are (a reload does not change it); a runner's own wins (tests).
        server = self._app[ENGINE].config.server
        kwargs = {"max_connections": server.max_connections,
                  "header_timeout": server.header_timeout.total_seconds(), **self._kwargs}
        return _front(self._app[HANDLERS], metrics=self._app[METRICS], **kwargs)

    async def _cleanup_server(self) -> None:
        await self._app.cleanup()


def _front(handlers: OcspHandlers, **kwargs: Any) -> web.Server:
    """aiohttp's low-level server dispatching to ``handlers`` as the app's routes would."""
    prefix = handlers.prefix
    # The prefix without its final "/" is the prefix too.
    at_prefix_paths = (prefix, handlers.bare_prefix)
    loop = asyncio.get_running_loop()  # once: asking per request costs a getpid() each
    max_size = handlers.max_request_bytes
    post_allowed, get_allowed = ("GET", "HEAD", "POST"), ("GET", "HEAD")

    def make_request(
        message: Any, payload: Any, protocol: Any, writer: Any, task: asyncio.Task[None]
    ) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=max_size)

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        method, path = request.method, request.path
        at_prefix = path in at_prefix_paths
        if method == "POST" and at_prefix:
            if hdrs.EXPECT in request.headers:
                await _expect(request)
            return await handlers.post(request)
        if not at_prefix and not path.startswith(prefix):
            handlers.outside_prefix(request)
            raise web.HTTPNotFound()
        if method == "GET" or method == "HEAD":
            return await handlers.get(request)
        raise web.HTTPMethodNotAllowed(method, post_allowed if at_prefix else get_allowed)

    # Request bodies are never decoded: one with a Content-Encoding gets 415
    # (http.refuse_content_encoding), not a decoder's error.
    kwargs["auto_decompress"] = False
    if handlers.fast_http:
        return FastServer(handlers, dispatch, request_factory=make_request, **kwargs)
    return BoundedServer(dispatch, request_factory=make_request, **kwargs)


async def _expect(request: web.BaseRequest) -> None:
    """``Expect: 100-continue`` (curl sends it for large bodies), answered as aiohttp's router does.

    A body that would be refused anyway is refused before the client sends it.
    """
    if hdrs.CONTENT_ENCODING in request.headers:
        refuse_content_encoding(request)
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return
    if expect.lower() != "100-continue":
        # ascii(): the value may hold any byte (surrogate escapes), which UTF-8 cannot encode.
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect!a}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the interim response is not part of the body
