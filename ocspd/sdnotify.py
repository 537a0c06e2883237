"""The systemd notification protocol (``sd_notify(3)``), without a dependency.

systemd passes a datagram socket in ``$NOTIFY_SOCKET`` to services with
``Type=notify``; the service writes newline-separated ``KEY=VALUE``
assignments to it: ``READY=1`` once it serves, ``STOPPING=1`` when it begins
to shut down, ``RELOADING=1`` while it reloads, ``STATUS=...`` free text for
``systemctl status``, and ``WATCHDOG=1`` at least once per ``WatchdogSec=``.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, and a failure
to send is logged once and never raised: the daemon must not die because
the service manager went away.

Only the main process should notify (the unit says ``NotifyAccess=main``);
worker processes must not build a :class:`Notifier`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType

__all__ = ["Notifier", "watchdog_interval", "watchdog_loop"]

log = logging.getLogger("ocspd.sdnotify")

# A send to systemd's socket never blocks in practice (its receive buffer is
# large), but a wedged receiver must not stall the event loop for long.
SEND_TIMEOUT = 2.0

_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def _socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, or None if unusable.

    A path must be absolute; ``@name`` is a Linux abstract socket, whose
    address is the name after a NUL byte.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def _one_line(text: str) -> str:
    """``text`` with line breaks turned into spaces (a value may not span lines)."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends state changes to the service manager over ``$NOTIFY_SOCKET``.

    Every method returns True when the datagram was sent, False when the
    notifier is disabled (no socket) or sending failed. Nothing raises
    except a programming error in :meth:`notify` (a bad field name).
    """

    def __init__(self, address: str | None) -> None:
        """A notifier for the socket ``address`` (``$NOTIFY_SOCKET`` syntax); None disables it."""
        self.address = address
        self._target: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._warned = False
        if address:
            self._target = _socket_address(address)
            if self._target is None:
                log.warning("event=sd_notify_disabled reason=unsupported_address address=%r", address)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier that ``$NOTIFY_SOCKET`` names (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere (a usable ``$NOTIFY_SOCKET`` was given)."""
        return self._target is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram, in the order given.

        Field names are upper case as in ``sd_notify(3)`` (``notify(READY=1,
        STATUS="serving")``); line breaks in values become spaces.
        """
        for name in fields:
            if not _FIELD_NAME.match(name):
                raise ValueError(f"invalid sd_notify field name {name!r}")
        if self._target is None or not fields:
            return False
        message = "".join(f"{name}={_one_line(str(value))}\n" for name, value in fields.items())
        return self._send(message.rstrip("\n").encode())

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (start-up or a reload finished), with an optional ``STATUS=`` line."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun (sent before draining)."""
        return self.notify(STOPPING=1)

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``: a reload has begun; send :meth:`ready` when done.

        ``MONOTONIC_USEC`` (``CLOCK_MONOTONIC`` in microseconds) is what
        systemd 253+ expects for ``Type=notify-reload``; older versions
        ignore it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def status(self, text: str) -> bool:
        """``STATUS=text``: the line ``systemctl status`` shows."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping for ``WatchdogSec=``."""
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for this much more time to start, reload or stop."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, round(seconds * 1_000_000)))

    def close(self) -> None:
        """Close the socket (a later notification opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, data: bytes) -> bool:
        assert self._target is not None
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(SEND_TIMEOUT)
                self._sock = sock
            # Unconnected sendto: a socket that reappears (systemd re-executed) still works.
            self._sock.sendto(data, self._target)
        except OSError as exc:
            self.close()
            if not self._warned:
                self._warned = True
                log.warning("event=sd_notify_failed socket=%r error=%r", self.address, str(exc))
            else:
                log.debug("event=sd_notify_failed socket=%r error=%r", self.address, str(exc))
            return False
        return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings: half of ``$WATCHDOG_USEC``, or None when there is no watchdog.

    ``$WATCHDOG_PID``, when set, must be this process's PID (the variables
    were meant for another process otherwise, e.g. inherited by a child).
    Malformed or non-positive values count as unset.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text:
        try:
            if int(pid_text) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


async def watchdog_loop(notifier: Notifier, interval: float, healthy: Callable[[], bool]) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds while ``healthy()`` says so, until cancelled.

    A process whose event loop is stuck, or that reports itself unhealthy,
    stops pinging, so systemd kills and (``Restart=on-failure``) restarts
    it. A ``healthy`` that raises counts as unhealthy. Pinging resumes if
    ``healthy()`` turns true again before systemd acts.
    """
    if interval <= 0:
        raise ValueError("watchdog interval must be positive")
    was_healthy = True
    while True:
        try:
            ok = bool(healthy())
        except Exception:
            log.exception("event=watchdog_check_failed")
            ok = False
        if ok:
            notifier.watchdog()
            if not was_healthy:
                log.info("event=watchdog_resumed")
        elif was_healthy:
            log.warning("event=watchdog_withheld reason=unhealthy")
        was_healthy = ok
        await asyncio.sleep(interval)
