"""Hostile clients and the normal client that watches them, for tests/hostile/ and
bench/pipelining.py. Everything targets 127.0.0.1, is bounded in time and stops by itself.

- ``start_ocspd``: the real ``ocspd serve`` process, on uvloop or on asyncio's loop
  (``sys.modules["uvloop"] = None`` makes ocspd's ``import uvloop`` fail, as without the
  ``speed`` extra), so the front that production runs is what is attacked.
- ``start_flood``: the pipelining flood (tests/hostile/flood.py), run as a process of
  its own so that its CPU is not the prober's.
- ``probe``: fresh connections, one request each, latency measured to the full answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import TestPki
from tests.serving import Served, free_port

REPO = Path(__file__).resolve().parent.parent.parent
FLOOD = Path(__file__).resolve().parent / "flood.py"  # standard library only: it starts in milliseconds
_WITHOUT_UVLOOP = "import sys; sys.modules['uvloop'] = None; from ocspd.cli import main; sys.exit(main())"


def loop_name() -> str:
    """ "uvloop" or "asyncio": the loop this code runs on (the hostile suite runs each test on both)."""
    return "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"


async def start_ocspd(
    test_pki: TestPki, env: dict[str, str], *, loop: str, tree: Path = REPO, file_limit: int | None = None
) -> Served:
    """``ocspd serve`` for ``test_pki`` on 127.0.0.1 (free ports), on ``loop``, from the source in
    ``tree``; ``file_limit``: its RLIMIT_NOFILE, soft and hard (as systemd's ``LimitNOFILE=`` sets)."""
    port, admin = free_port(), free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OCSPD_", "NOTIFY_SOCKET"))}
    full_env.update({"OCSPD_SERVER_LISTEN": f"127.0.0.1:{port}", "OCSPD_ADMIN_LISTEN": f"127.0.0.1:{admin}"})
    full_env["PYTHONPATH"] = str(tree)
    full_env.update(env)
    how = ["-m", "ocspd"] if loop == "uvloop" else ["-c", _WITHOUT_UVLOOP]
    with open(test_pki.directory / "serve.log", "ab") as log:  # the child keeps its own descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *how, "serve", "--config", str(test_pki.config_path), env=full_env, cwd=tree,
            stdout=asyncio.subprocess.DEVNULL, stderr=log,
            preexec_fn=None if file_limit is None else lambda: _limit_files(file_limit),
        )  # fmt: skip
    return Served(proc, port, admin)


def _limit_files(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def uses_uvloop(pid: int) -> bool:
    """Whether a process has uvloop's extension mapped (it runs on uvloop)."""
    return "uvloop" in Path(f"/proc/{pid}/maps").read_text()


# -- the pipelining flood ----------------------------------------------------------------------


async def start_flood(port: int, path: str, connections: int, batch: int, seconds: float) -> asyncio.subprocess.Process:
    """The flood in a process of its own (stopped by itself after ``seconds``; kill it by PID if not)."""
    args = ["--port", str(port), "--path", path, "--connections", str(connections), "--batch", str(batch),
            "--seconds", str(seconds)]  # fmt: skip
    return await asyncio.create_subprocess_exec(
        sys.executable, str(FLOOD), *args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def stop_process(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """Wait up to ``timeout`` for ``proc`` to end, then kill it (by its PID)."""
    if proc.returncode is not None:
        return
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            proc.kill()
        await proc.wait()


# -- the prober ----------------------------------------------------------------------------------


@dataclass
class Probes:
    """Latencies (seconds) of the probes that got the expected answer, and the failures, per target."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)

    def quantile(self, target: str, q: float) -> float:
        ordered = sorted(self.latencies[target])
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("inf")

    def summary(self, target: str) -> str:
        n, failed = len(self.latencies[target]), len(self.failures[target])
        return (
            f"{target}: {n} answered, {failed} failed, p50 {self.quantile(target, 0.5) * 1000:.1f} ms, "
            f"p99 {self.quantile(target, 0.99) * 1000:.1f} ms, max {self.quantile(target, 1.0) * 1000:.1f} ms"
        )


async def probe_once(port: int, request: bytes, body: bytes | None, timeout: float) -> float | str:
    """One request on a fresh connection: its latency to the full answer, or what went wrong."""
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line]
            length = next((int(value) for name, value in fields if name.lower() == b"content-length"), 0)
            got = await reader.readexactly(length)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
    if not head.startswith(b"HTTP/1.1 200 ") or (body is not None and got != body):
        return f"unexpected answer {head[:40]!r}"
    return time.perf_counter() - started


async def probe(
    targets: Mapping[str, tuple[int, bytes, bytes | None]], seconds: float, interval: float, timeout: float = 5.0
) -> Probes:
    """Probe every target (port, request, expected body or None) once per ``interval``, for ``seconds``."""
    probes = Probes({name: [] for name in targets}, {name: [] for name in targets})
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        tick = loop.time()
        results = await asyncio.gather(*(probe_once(*target, timeout) for target in targets.values()))
        for name, result in zip(targets, results, strict=True):
            if isinstance(result, float):
                probes.latencies[name].append(result)
            else:
                probes.failures[name].append(result)
        await asyncio.sleep(max(0.0, tick + interval - loop.time()))
    return probes
