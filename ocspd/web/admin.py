"""The admin application: /metrics, /healthz, /readyz.

What it serves comes in as callables: the single-process server passes ones
over its OCSP app (``ocspd/app.py``), the worker supervisor ones over its
workers (``ocspd/workers.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from ocspd.health import Readiness


def init_admin_app(
    exposition: Callable[[], bytes], ready: Callable[[], asyncio.Future[Readiness] | Readiness] | None = None
) -> web.Application:
    """The admin application: /metrics, /healthz, /readyz.

    ``exposition`` renders the metrics; ``ready`` returns (or resolves to) the
    current Readiness.
    """
    admin = web.Application()

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(body=exposition(), content_type="text/plain", charset="utf-8")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        result = ready() if ready is not None else Readiness(True, False, ["no checks"])
        if not isinstance(result, Readiness):
            result = await result
        return web.Response(status=200 if result.ready else 503, text=result.text())

    admin.router.add_get("/metrics", metrics_handler)
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    return admin
