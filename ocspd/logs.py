"""Structured logs: one line per event on stderr, as key=value or JSON.

Code logs events with :func:`event` (a name and fields); third-party
records (aiohttp, asyncio) come through the same formatters with their
message as a field. Timestamps are left to journald unless asked for.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ocspd.config import LogConfig

_FIELDS = "ocspd_fields"
_EVENT = "ocspd_event"
# Keys of the standard LogRecord, so that unknown `extra` does not leak in.
# What a client's bytes can make aiohttp raise while reading a request.
CLIENT_ERRORS = (HttpProcessingError, RequestPayloadError, ConnectionResetError)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (never secrets: callers pass ids, paths, counts)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_EVENT: name, _FIELDS: fields})


def bug(logger: logging.Logger, name: str, **fields: Any) -> None:
    """Log event ``name`` at ERROR with the traceback of the exception being handled:
    for our own bugs only (a background loop that must go on, say), never a client's."""
    logger.error(name, exc_info=True, extra={_EVENT: name, _FIELDS: fields})


class Throttle:
    """At most one log line per ``interval`` seconds for one kind of event a client can
    repeat at will; the lines held back are counted, and the next line says how many.

    ``clock`` is injected so that tests do not sleep.
    """

    __slots__ = ("_clock", "_held", "_next", "interval")

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._held = 0

    def allow(self) -> int | None:
        """None: hold this line back. Otherwise log it, with the count returned: the lines
        held back since the last one allowed."""
        now = self._clock()
        if now < self._next:
            self._held += 1
            return None
        self._next = now + self.interval
        held, self._held = self._held, 0
        return held


def _fields(record: logging.LogRecord, timestamps: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"time": _timestamp(record.created)} if timestamps else {}
    out.update(level=record.levelname.lower(), logger=record.name)
    name = getattr(record, _EVENT, None)
    if name is not None:
        out["event"] = name
        out.update(getattr(record, _FIELDS, {}))
    else:
        out["msg"] = record.getMessage()
    if record.exc_info:
        out["error"] = logging.Formatter().formatException(record.exc_info).replace("\n", " | ")
    return out


def _kv_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text)
    return text


def _timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: ``2026-12-02T04:05:06.789Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class KeyValueFormatter(logging.Formatter):
    """``time=2026-12-02T04:05:06.789Z level=info logger=ocspd event=ready issuers=a,b`` (``time=`` with
    ``timestamps``)."""

    def __init__(self, *, timestamps: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in _fields(record, self.timestamps).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line (with a ``time`` member with ``timestamps``)."""

    def __init__(self, *, timestamps: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self.timestamps), default=str, ensure_ascii=False)


def stderr_is_the_journal(environ: Mapping[str, str] | None = None) -> bool:
    """Whether stderr is systemd's journal stream (``JOURNAL_STREAM`` names its device and
    inode): the journal stamps every line itself."""
    stream = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


class ClientErrorFilter(logging.Filter):
    """aiohttp logs a request it cannot read (a broken head, a body cut short) as
    ``Error handling request`` at ERROR with a traceback: one client could write
    megabytes of them. Such a record becomes one ``bad_request`` line at debug
    without the traceback, at most one per ``interval`` seconds; aiohttp's
    answer (a 400) is not changed. ERROR stays for our own bugs."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self._throttle = Throttle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, CLIENT_ERRORS):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        held = self._throttle.allow()
        if held is None:
            return False
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        record.__dict__[_EVENT] = "bad_request"
        record.__dict__[_FIELDS] = {"error": f"{type(exc).__name__}: {first}", "suppressed": held}
        return True


def setup(config: LogConfig | None = None, *, level: str | None = None) -> None:
    """Send ocspd's (and the libraries') logs to stderr in the configured format."""
    config = config or LogConfig()
    handler = logging.StreamHandler(sys.stderr)
    stamped = config.timestamps == "on" or (config.timestamps == "auto" and not stderr_is_the_journal())
    formatter = JsonFormatter if config.format == "json" else KeyValueFormatter
    handler.setFormatter(formatter(timestamps=stamped))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get((level or config.level).lower(), logging.INFO))
    # aiohttp's access log would put a line per request on the hot path; the
    # optional transaction log ([log] requests) replaces it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    for old_filter in [f for f in server_log.filters if isinstance(f, ClientErrorFilter)]:
        server_log.removeFilter(old_filter)
    server_log.addFilter(ClientErrorFilter())
