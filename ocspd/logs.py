"""Structured logs: one line per event on stderr, as key=value or JSON.

Code logs events with :func:`event` (a name and fields); third-party
records (aiohttp, asyncio) come through the same formatters with their
message as a field. Timestamps are left to journald unless asked for.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from ocspd.config import LogConfig

_FIELDS = "ocspd_fields"
_EVENT = "ocspd_event"
# Keys of the standard LogRecord, so that unknown `extra` does not leak in.
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (never secrets: callers pass ids, paths, counts)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_EVENT: name, _FIELDS: fields})


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


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"level": record.levelname.lower(), "logger": record.name}
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


class KeyValueFormatter(logging.Formatter):
    """``level=info logger=ocspd event=ready issuers=a,b``."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_kv_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str, ensure_ascii=False)


def setup(config: LogConfig | None = None, *, level: str | None = None) -> None:
    """Send ocspd's (and the libraries') logs to stderr in the configured format."""
    config = config or LogConfig()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get((level or config.level).lower(), logging.INFO))
    # aiohttp's access log would put a line per request on the hot path; the
    # optional transaction log ([log] requests) replaces it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
