"""The systemd notify protocol (ocspd.sdnotify) against real AF_UNIX datagram sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocspd.sdnotify import Notifier, watchdog_interval, watchdog_loop

# sun_path holds 108 bytes; pytest's tmp_path can be longer than that.
MAX_SUN_PATH = 100


class Receiver:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket  # the $NOTIFY_SOCKET value naming it
        sock.setblocking(False)

    def pending(self) -> list[str]:
        """Every datagram received so far, without waiting."""
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    def recv(self, timeout: float = 2.0) -> str:
        """The next datagram (waits up to ``timeout`` seconds)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        finally:
            self.sock.setblocking(False)


@pytest.fixture
def socket_dir(tmp_path: Path) -> Iterator[Path]:
    if len(str(tmp_path / "notify.sock")) <= MAX_SUN_PATH:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="ocspd-") as short:
        yield Path(short)


def _bind_path(path: Path) -> Receiver:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return Receiver(sock, str(path))


@pytest.fixture
def receiver(socket_dir: Path) -> Iterator[Receiver]:
    rx = _bind_path(socket_dir / "notify.sock")
    yield rx
    rx.sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"ocspd-test-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    rx = Receiver(sock, "@" + name)
    yield rx
    sock.close()


@pytest.fixture
def notifier(receiver: Receiver) -> Iterator[Notifier]:
    with Notifier.from_env({"NOTIFY_SOCKET": receiver.notify_socket}) as n:
        yield n


def test_ready_with_status(notifier: Notifier, receiver: Receiver) -> None:
    assert notifier.enabled
    assert notifier.ready("serving 2 issuers")
    assert receiver.recv() == "READY=1\nSTATUS=serving 2 issuers"


def test_each_message(notifier: Notifier, receiver: Receiver) -> None:
    assert notifier.ready()
    assert notifier.stopping()
    assert notifier.status("draining 3 requests")
    assert notifier.watchdog()
    assert notifier.extend_timeout(1.5)
    assert [receiver.recv() for _ in range(5)] == [
        "READY=1",
        "STOPPING=1",
        "STATUS=draining 3 requests",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=1500000",
    ]


def test_reloading_carries_monotonic_usec(notifier: Notifier, receiver: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", receiver.recv())
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_generic_notify_keeps_order_and_one_line_values(notifier: Notifier, receiver: Receiver) -> None:
    assert notifier.notify(STATUS="line one\nline two", MAINPID=1234, ERRNO=0)
    assert receiver.recv() == "STATUS=line one line two\nMAINPID=1234\nERRNO=0"
    with pytest.raises(ValueError, match="field name"):
        notifier.notify(ready=1)
    assert not notifier.notify()  # nothing to say: nothing sent
    assert receiver.pending() == []


def test_abstract_socket(abstract_receiver: Receiver) -> None:
    assert abstract_receiver.notify_socket.startswith("@ocspd-test-")
    with Notifier.from_env({"NOTIFY_SOCKET": abstract_receiver.notify_socket}) as notifier:
        assert notifier.ready("up")
        assert notifier.stopping()
    assert abstract_receiver.recv() == "READY=1\nSTATUS=up"
    assert abstract_receiver.recv() == "STOPPING=1"


def test_from_env_defaults_to_os_environ(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.notify_socket)
    with Notifier.from_env() as notifier:
        assert notifier.watchdog()
    assert receiver.recv() == "WATCHDOG=1"


@pytest.mark.parametrize(
    "environ", [None, {}, {"NOTIFY_SOCKET": ""}], ids=["process-environment", "empty-environment", "empty-variable"]
)
def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str] | None) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env() if environ is None else Notifier.from_env(environ)
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.stopping()
    assert not notifier.reloading()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.notify(READY=1)
    notifier.close()


def test_unsupported_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ocspd.sdnotify")
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "relative/notify.sock"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert "unsupported_address" in caplog.text


def test_vanished_socket_is_logged_once_and_never_raises(socket_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ocspd.sdnotify")
    path = socket_dir / "gone.sock"
    rx = _bind_path(path)
    with Notifier.from_env({"NOTIFY_SOCKET": str(path)}) as notifier:
        assert notifier.ready()
        assert rx.recv() == "READY=1"
        rx.sock.close()
        path.unlink()
        assert not notifier.watchdog()
        assert not notifier.stopping()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "sd_notify_failed" in warnings[0].getMessage()

        # The manager comes back (systemd re-executed): notifications flow again.
        rx = _bind_path(path)
        try:
            assert notifier.status("back")
            assert rx.recv() == "STATUS=back"
        finally:
            rx.sock.close()


def test_socket_that_is_not_a_datagram_socket(socket_dir: Path) -> None:
    path = socket_dir / "stream.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        with Notifier(str(path)) as notifier:
            assert not notifier.ready()  # EPROTOTYPE: logged, not raised


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "250000"}, 0.125),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_watchdog_interval_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


async def _until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class Health:
    """A switchable health check that counts how often it answered each way."""

    def __init__(self) -> None:
        self.ok = True
        self.calls = {True: 0, False: 0}

    def __call__(self) -> bool:
        self.calls[self.ok] += 1
        return self.ok


async def test_watchdog_loop_pings_while_healthy_and_stops_when_not(
    notifier: Notifier, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ocspd.sdnotify")
    health = Health()
    received: list[str] = []

    def collect() -> list[str]:
        received.extend(receiver.pending())
        return received

    task = asyncio.create_task(watchdog_loop(notifier, 0.01, health))
    try:
        await _until(lambda: len(collect()) >= 3, "three watchdog pings")
        assert set(received) == {"WATCHDOG=1"}

        health.ok = False
        # Once healthy() has answered False, every ping sent before is already queued.
        await _until(lambda: health.calls[False] >= 1, "an unhealthy check")
        receiver.pending()
        await _until(lambda: health.calls[False] >= 5, "more unhealthy checks")
        assert receiver.pending() == []  # no ping while unhealthy
        assert "watchdog_withheld" in caplog.text

        received.clear()
        health.ok = True
        await _until(lambda: len(collect()) >= 2, "pings after recovery")
        assert "watchdog_resumed" in caplog.text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_watchdog_loop_treats_a_failing_check_as_unhealthy(
    notifier: Notifier, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def broken() -> bool:
        nonlocal calls
        calls += 1
        raise RuntimeError("store unreachable")

    with caplog.at_level(logging.ERROR, logger="ocspd.sdnotify"):
        task = asyncio.create_task(watchdog_loop(notifier, 0.01, broken))
        try:
            await _until(lambda: calls >= 3, "three health checks")
            assert receiver.pending() == []
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert "watchdog_check_failed" in caplog.text


async def test_watchdog_loop_without_socket_is_harmless() -> None:
    health = Health()
    task = asyncio.create_task(watchdog_loop(Notifier(None), 0.01, health))
    try:
        await _until(lambda: health.calls[True] >= 2, "two health checks")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watchdog_loop_rejects_a_bad_interval(notifier: Notifier) -> None:
    with pytest.raises(ValueError, match="positive"):
        await watchdog_loop(notifier, 0, lambda: True)
