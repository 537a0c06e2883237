"""How ``ocspd serve`` serves the OCSP app: ocspd's fast HTTP path
(``ocspd/web/fast.py``) and aiohttp's low-level server in front of the app's
handlers.

``OcspRunner(app, handlers, metrics)`` behaves like ``web.AppRunner(app)``
(the app's startup, cleanup_ctx and shutdown run the same way, the handlers
and limits are the same) but dispatches to the OCSP handlers itself instead
of through the router and the middleware chain (the app has no middlewares):
~10 % of a memory hit (bench/README.md). With ``[server] fast_http`` (the
default) the common requests do not reach aiohttp's request objects at all.
Either front holds at most ``[server] max_connections``
(``ocspd/web/connections.py``). The composition root builds it for an app
(``ocspd.app.runner_for``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from ocspd.metrics import Metrics
from ocspd.web.aiohttp_glue import LowLevelRunner, request_factory, write_continue
from ocspd.web.connections import BoundedServer
from ocspd.web.fast import FastServer
from ocspd.web.handlers import OcspHandlers, refuse_content_encoding


class OcspRunner(LowLevelRunner):
    """A runner for an OCSP app and its handlers, used as ``web.AppRunner`` is (module docstring).

    ``kwargs`` are what a ``web.AppRunner`` takes, plus the connection limits
    of ``BoundedServer`` (``max_connections``, ``header_timeout``).
    """

    __slots__ = ("_app", "_handlers", "_metrics")

    def __init__(self, app: web.Application, handlers: OcspHandlers, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._app = app
        self._handlers = handlers
        self._metrics = metrics

    @property
    def app(self) -> web.Application:
        return self._app

    async def shutdown(self) -> None:
        await self._app.shutdown()

    async def start_server(self, kwargs: dict[str, Any]) -> web.Server:
        self._app.on_startup.freeze()
        await self._app.startup()
        self._app.freeze()
        return _front(self._handlers, metrics=self._metrics, **kwargs)

    async def stop_server(self) -> None:
        await self._app.cleanup()


def _front(handlers: OcspHandlers, **kwargs: Any) -> web.Server:
    """aiohttp's low-level server dispatching to ``handlers`` as the app's routes would."""
    prefix = handlers.prefix
    # The prefix without its final "/" is the prefix too.
    at_prefix_paths = (prefix, handlers.bare_prefix)
    loop = asyncio.get_running_loop()  # once: asking per request costs a getpid() each
    post_allowed, get_allowed = ("GET", "HEAD", "POST"), ("GET", "HEAD")

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
    # (handlers.refuse_content_encoding), not a decoder's error.
    kwargs["auto_decompress"] = False
    make_request = request_factory(loop, handlers.max_request_bytes)
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
    await write_continue(request)
