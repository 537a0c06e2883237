"""`ocspd serve` as a subprocess for the tests and bench/: start it on free
127.0.0.1 ports, wait for it, ask it, stop it by PID; a stand-in for
systemd's notification socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
from cryptography.x509 import ocsp

from tests.helpers import TestPki


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NotifySocket:
    """A stand-in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def wait_for(self, field: str, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for message in self.messages:
                if field in message.splitlines():
                    return message
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{field} not received; got {self.messages}")
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), min(remaining, 0.2))
                self.messages.append(data.decode())
            except TimeoutError:
                pass

    def close(self) -> None:
        self.sock.close()


class Served:
    """An `ocspd serve` subprocess with its ports."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, admin: int) -> None:
        self.proc, self.port, self.admin = proc, port, admin
        self.url = f"http://127.0.0.1:{port}/"

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode or 0


async def start_serve(test_pki: TestPki, env: dict[str, str]) -> Served:
    """Start `ocspd serve` for ``test_pki`` on free ports, with no OCSPD_ variables but ``env``; stderr to serve.log."""
    port, admin = free_port(), free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OCSPD_", "NOTIFY_SOCKET"))}
    full_env.update({"OCSPD_SERVER_LISTEN": f"127.0.0.1:{port}", "OCSPD_ADMIN_LISTEN": f"127.0.0.1:{admin}"})
    full_env.update(env)
    with open(test_pki.directory / "serve.log", "ab") as log:  # the child keeps its own descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ocspd",
            "serve",
            "--config",
            str(test_pki.config_path),
            env=full_env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    return Served(proc, port, admin)


async def wait_http(url: str, timeout: float = 30) -> None:
    """Wait until ``url`` answers any HTTP status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer")


async def ask(session: aiohttp.ClientSession, url: str, der: bytes) -> ocsp.OCSPResponse:
    """POST an OCSP request; the answer must be a successful OCSP response."""
    async with session.post(url, data=der, headers={"Content-Type": "application/ocsp-request"}) as resp:
        assert resp.status == 200
        body = await resp.read()
    response = ocsp.load_der_ocsp_response(body)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL, body
    return response
