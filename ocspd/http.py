"""The aiohttp application: OCSP over HTTP POST and GET.

This is the one place that maps ocspd's exceptions to what a client sees
(SPEC §2): malformedRequest, unauthorized, tryLater, and internalError for
real bugs only. Nothing a client sends produces an HTTP 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping

from aiohttp import web

from ocspd.cache import Entry
from ocspd.config import Config
from ocspd.engine import Engine
from ocspd.exceptions import ConfigError, MalformedRequest, TryLater, Unauthorized
from ocspd.index import IndexFile
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
from ocspd.replication import RefreshSettings, database_context
from ocspd.signer import Signer, load_signers
from ocspd.sources import IndexSource, StatusSource
from ocspd.store import Store

log = logging.getLogger("ocspd.http")

CONFIG = web.AppKey("config", Config)
ENGINE = web.AppKey("engine", Engine)
INDEX_FILES = web.AppKey("index_files", dict[str, IndexFile])

# How often index.txt files are checked for changes (SPEC: "about a second").
INDEX_POLL_SECONDS = 0.5


def init_app(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    signers: Mapping[str, Signer] | None = None,
    index_poll: float = INDEX_POLL_SECONDS,
    refresh: RefreshSettings | None = None,
    heartbeat: float = 5.0,
) -> web.Application:
    """Build the OCSP application for ``config``.

    Keys are loaded here (a bad key is a ConfigError before anything
    listens); index files are loaded and watched in the app's cleanup_ctx.
    ``signers`` lets tests wrap the real signers (e.g. to count signatures).
    """
    if signers is None:
        signers = load_signers(config)
    index_files = {
        issuer.id: IndexFile(issuer.index) for issuer in config.issuers if issuer.index is not None
    }
    sources: dict[str, StatusSource] = {}
    if index_files:
        index_source = IndexSource(index_files)
        sources.update((issuer_id, index_source) for issuer_id in index_files)
    store: Store | None = None
    notified = frozenset(issuer.id for issuer in config.issuers if issuer.id not in index_files)
    if notified:
        if config.database is None:  # config validation makes this unreachable
            raise ConfigError("issuers without `index` need a [database]", key="issuers", file=config.source)
        store = Store(config.database.dsn)
        sources.update((issuer_id, store) for issuer_id in notified)
    engine = Engine(config, signers, sources, clock, notified=notified)

    app = web.Application(client_max_size=config.server.max_request_bytes)
    app[CONFIG] = config
    app[ENGINE] = engine
    app[INDEX_FILES] = index_files
    app.cleanup_ctx.append(_index_watchers(index_poll))
    if store is not None:
        assert config.database is not None
        app.cleanup_ctx.append(
            database_context(
                store,
                engine,
                config.database.listen_dsn,
                refresh or RefreshSettings.for_validity(config.responses.validity),
                heartbeat=heartbeat,
            )
        )
    handlers = _Handlers(engine, config.server.path_prefix, clock)
    prefix = config.server.path_prefix
    app.router.add_post(prefix, handlers.post)
    app.router.add_get(prefix + "{tail:.*}", handlers.get)
    return app


def _index_watchers(
    interval: float,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def watchers(app: web.Application) -> AsyncIterator[None]:
        engine = app[ENGINE]
        loop = asyncio.get_running_loop()
        tasks = []
        for issuer_id, index in app[INDEX_FILES].items():
            # A large file takes seconds to parse: keep the loop free meanwhile.
            await loop.run_in_executor(None, index.load)
            log.info("event=index_loaded issuer=%s path=%s certificates=%d", issuer_id, index.path, len(index))

            def on_change(serials: set[int], issuer_id: str = issuer_id) -> None:
                dropped = engine.invalidate(issuer_id, serials)
                log.info(
                    "event=index_reloaded issuer=%s changed=%d invalidated=%d", issuer_id, len(serials), dropped
                )

            tasks.append(asyncio.create_task(index.watch(on_change, interval=interval)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return watchers


class _Handlers:
    def __init__(self, engine: Engine, prefix: str, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._prefix_len = len(prefix)
        self._clock = clock

    async def post(self, request: web.Request) -> web.StreamResponse:
        # A wrong Content-Type is tolerated when the body parses (SPEC §2).
        body = await request.read()
        return await self._answer(request, body, None)

    async def get(self, request: web.Request) -> web.StreamResponse:
        # raw_path keeps %2F and friends undecoded; the router's match_info would not.
        raw = request.raw_path.split("?", 1)[0]
        try:
            der = decode_get_path(raw[self._prefix_len :])
        except MalformedRequest as exc:
            return self._error(MALFORMED_REQUEST, exc)
        return await self._answer(request, der, request)

    async def _answer(self, request: web.Request, der: bytes, conditional: web.Request | None) -> web.StreamResponse:
        try:
            entry = await self._engine.respond(parse_request(der))
        except MalformedRequest as exc:
            return self._error(MALFORMED_REQUEST, exc)
        except Unauthorized as exc:
            return self._error(UNAUTHORIZED, exc)
        except TryLater as exc:
            return self._error(TRY_LATER, exc)
        except Exception:
            log.exception("event=internal_error method=%s", request.method)
            return self._error(INTERNAL_ERROR, None)
        return self._ok(entry, conditional)

    def _ok(self, entry: Entry, conditional: web.Request | None) -> web.Response:
        now = self._clock()
        headers = {
            "Content-Type": OCSP_RESPONSE_TYPE,
            "Cache-Control": cache_control(entry.next_update, now),
            "Last-Modified": entry.last_modified,
            "Expires": entry.expires,
            "ETag": entry.etag,
        }
        if conditional is not None:
            h = conditional.headers
            inm = h.get("If-None-Match")
            ims = h.get("If-Modified-Since")
            if (inm is not None or ims is not None) and not_modified(inm, ims, entry.etag, entry.this_update):
                return web.Response(status=304, headers=headers)
        return web.Response(body=entry.der, headers=headers)

    @staticmethod
    def _error(body: bytes, exc: Exception | None) -> web.Response:
        if exc is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("event=request_refused kind=%s reason=%r", type(exc).__name__, str(exc))
        return web.Response(body=body, headers=ERROR_HEADERS)
