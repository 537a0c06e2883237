"""Processes and load for bench/: start and stop what a script runs (by PID),
and put it under a bounded wrk load (or bench/loadgen.py where wrk is absent).

Split from common.py (PKI, HTTP one-shots, PostgreSQL, results), which this
module uses; the scripts import both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import BENCH, HOST, PYTHON, REPO, SerialTemplate, have_wrk, ocsp_post

STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL (ocspd drains for up to 10 s)
READY_TIMEOUT = 60.0


# -- processes -------------------------------------------------------------------------


@dataclass
class Process:
    """A subprocess we started, with its log file; stopped by PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def uses_uvloop(self) -> bool:
        """Whether the process has uvloop's extension module mapped (it runs on uvloop)."""
        try:
            return "uvloop" in Path(f"/proc/{self.pid}/maps").read_text()
        except OSError:
            return False


def start_process(
    name: str, args: Sequence[str], log_dir: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Process:
    """Start ``args`` in its own session, output to ``log_dir/<name>.log``."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as out:
        popen = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it
        )
    return Process(name, popen, log_path)


def stop_process(proc: Process, timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM) -> int | None:
    """SIGTERM (or ``sig``) to the PID, SIGKILL after ``timeout``; returns the exit status."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.popen.wait(10)
    return proc.popen.returncode


def wait_ready(proc: Process, probe: Callable[[], bool], timeout: float = READY_TIMEOUT) -> float:
    """Wait until ``probe()`` is true; returns the seconds waited. Fails when the process exits."""
    start = time.perf_counter()
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            if probe():
                return time.perf_counter() - start
        except OSError:
            pass
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{proc.name} not ready after {timeout:.0f} s:\n{proc.log_tail()}")
        time.sleep(0.05)


def port_open(port: int) -> Callable[[], bool]:
    """A readiness probe: the port accepts connections (never use it on `openssl ocsp`)."""

    def probe() -> bool:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True

    return probe


def answers_ocsp(port: int, der: bytes) -> Callable[[], bool]:
    """A readiness probe that sends a real request (safe for `openssl ocsp`, which spins on empty connections)."""

    def probe() -> bool:
        return ocsp_post(port, der, timeout=2.0).status == 200

    return probe


@contextlib.contextmanager
def running(
    name: str,
    args: Sequence[str],
    log_dir: Path,
    probe: Callable[[], bool],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> Iterator[Process]:
    """Start a server, wait for ``probe``, yield it, and stop it by PID whatever happens."""
    proc = start_process(name, args, log_dir, env=env, cwd=cwd)
    try:
        wait_ready(proc, probe, ready_timeout)
        yield proc
    finally:
        stop_process(proc)


def ocspd_args(config: Path) -> list[str]:
    return [PYTHON, "-m", "ocspd", "serve", "--config", str(config)]


OCSPD_ENV = {"OCSPD_LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}


@contextlib.contextmanager
def ocspd_server(name: str, config: Path, port: int, log_dir: Path) -> Iterator[Process]:
    """``ocspd serve --config`` on 127.0.0.1:port."""
    with running(name, ocspd_args(config), log_dir, port_open(port), env=OCSPD_ENV) as proc:
        yield proc


# -- load ------------------------------------------------------------------------------


@dataclass
class LoadSpec:
    """What to send, how hard and for how long."""

    port: int
    method: str = "POST"  # POST: body or template; GET: path
    path: str = "/"
    body: bytes = b""
    template: SerialTemplate | None = None  # a different serial with every request (POST)
    connections: int = 64
    threads: int = 1
    duration: float = 10.0
    max_requests: int = 0  # 0: bounded by duration only (wrk has no count bound)
    delay_ms: float = 0.0  # pause per connection between requests (a modest, steady rate)
    timeout: float = 5.0
    check_body: bool = False  # count OCSP error answers (tiny bodies); costs the client a little

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["body"] = self.body.hex()
        if self.template is not None:
            t = self.template
            data["template"] = {"prefix": t.prefix.hex(), "suffix": t.suffix.hex(), "base": t.base}
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> LoadSpec:
        data = dict(data)
        data["body"] = bytes.fromhex(data["body"])
        if data.get("template"):
            t = data["template"]
            data["template"] = SerialTemplate(bytes.fromhex(t["prefix"]), bytes.fromhex(t["suffix"]), t["base"])
        return LoadSpec(**data)


@dataclass
class LoadResult:
    client: str  # "wrk" or "python"
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    connections: int
    ocsp_errors: int | None = None  # answers that were not a signed response (when check_body)

    def brief(self) -> str:
        errors = sum(self.errors.values())
        text = f"{self.rps:9.0f} req/s  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms"
        if errors:
            text += f"  errors {self.errors}"
        if self.ocsp_errors:
            text += f"  ocsp_errors {self.ocsp_errors}"
        return text


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b}" for b in data) + '"'


def wrk_script(spec: LoadSpec) -> str:
    """The Lua script for one wrk run: the request, optional checks, and a JSON summary."""
    lines = [
        # wrk's default resolve() connects once to each address and closes the
        # socket without a request; `openssl ocsp` 3.0 spins forever on that.
        "wrk.resolve = function(host, service) wrk.addrs = wrk.lookup(host, service) end",
        f'wrk.method = "{spec.method}"',
        f"wrk.path = {_lua_string(spec.path.encode())}",
        'wrk.headers["Content-Type"] = "application/ocsp-request"' if spec.method == "POST" else "",
        f"wrk.body = {_lua_string(spec.body)}" if spec.body else "",
        "local threads = {}",
        "local thread_count = 0",
        "function setup(thread)",
        "  thread:set('thread_index', thread_count)",
        "  thread_count = thread_count + 1",
        "  table.insert(threads, thread)",
        "end",
        "thread_index = 0",
        "ocsp_errors = 0",
    ]
    if spec.template is not None:
        t = spec.template
        lines += [
            f"local prefix = {_lua_string(t.prefix)}",
            f"local suffix = {_lua_string(t.suffix)}",
            f"local base = {t.base}",
            f"local stride = {spec.threads}",
            "local counter = 0",
            "local headers = {['Content-Type'] = 'application/ocsp-request'}",
            "function request()",
            "  local s = base + thread_index + counter * stride",
            "  counter = counter + 1",
            "  local b = string.char(math.floor(s / 16777216) % 256, math.floor(s / 65536) % 256,",
            "                        math.floor(s / 256) % 256, s % 256)",
            f"  return wrk.format('POST', {_lua_string(spec.path.encode())}, headers, prefix .. b .. suffix)",
            "end",
        ]
    # Without a request() function wrk builds the request once (static): the
    # cheapest client, as it should be for the hit path.
    if spec.delay_ms > 0:
        lines += ["function delay()", f"  return {max(1, round(spec.delay_ms))}", "end"]
    if spec.check_body:
        lines += [
            "function response(status, headers, body)",
            "  if status ~= 200 or body == nil or #body < 16 then ocsp_errors = ocsp_errors + 1 end",
            "end",
        ]
    lines += [
        "function done(summary, latency, requests)",
        "  local errors = 0",
        "  for _, thread in ipairs(threads) do errors = errors + (thread:get('ocsp_errors') or 0) end",
        "  local e = summary.errors",
        '  io.write(string.format(\'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,\'',
        '    .. \'"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,\'',
        '    .. \'"mean_us":%.1f,"max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"ocsp_errors":%d}\\n\',',
        "    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,",
        "    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),",
        "    errors))",
        "end",
    ]
    return "\n".join(line for line in lines if line) + "\n"


def _wrk_command(spec: LoadSpec, script: Path, duration: float) -> list[str]:
    return [
        "wrk",
        f"-t{spec.threads}",
        f"-c{spec.connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(spec.timeout))}s",
        "-s",
        str(script),
        f"http://{HOST}:{spec.port}/",  # the path comes from the script
    ]


def _parse_wrk(output: str, spec: LoadSpec) -> LoadResult:
    for line in output.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON ") :])
            break
    else:
        raise RuntimeError(f"wrk printed no summary:\n{output[-2000:]}")
    duration = data["duration_us"] / 1e6
    errors = {k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout") if data[k]}
    return LoadResult(
        client="wrk",
        requests=int(data["requests"]),
        duration_s=duration,
        rps=data["requests"] / duration if duration else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=errors,
        connections=spec.connections,
        ocsp_errors=int(data["ocsp_errors"]) if spec.check_body else None,
    )


def choose_client(client: str) -> str:
    """'wrk' or 'python' for --client auto|wrk|python."""
    if client == "auto":
        return "wrk" if have_wrk() else "python"
    if client == "wrk" and not have_wrk():
        raise SystemExit("wrk is not installed (apt-get install wrk), use --client python")
    return client


class BackgroundLoad:
    """A load generator running in its own process until stopped (or its duration ends)."""

    def __init__(self, spec: LoadSpec, client: str, work_dir: Path, name: str = "load") -> None:
        self.spec = spec
        self.client = choose_client(client)
        self._out = work_dir / f"{name}-{uuid.uuid4().hex[:8]}.out"
        if self.client == "wrk":
            script = work_dir / f"{name}-{uuid.uuid4().hex[:8]}.lua"
            script.write_text(wrk_script(spec))
            args = _wrk_command(spec, script, spec.duration)
        else:
            spec_path = work_dir / f"{name}-{uuid.uuid4().hex[:8]}.json"
            spec_path.write_text(json.dumps(spec.to_json()))
            args = [PYTHON, str(BENCH / "loadgen.py"), "--spec", str(spec_path)]
        with open(self._out, "wb") as out:
            self._popen = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def wait(self, timeout: float | None = None) -> LoadResult:
        """Wait for the run to end by itself, then parse its summary."""
        timeout = timeout if timeout is not None else self.spec.duration + 60
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
        return self._result()

    def stop(self) -> LoadResult:
        """SIGINT (both clients then print their summary), SIGKILL if it lingers."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, signal.SIGINT)
            try:
                self._popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._popen.pid, signal.SIGKILL)
                self._popen.wait(10)
        return self._result()

    def kill(self) -> None:
        """For finally blocks: make sure the process is gone."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, signal.SIGKILL)
            self._popen.wait(10)

    def _result(self) -> LoadResult:
        output = self._out.read_text(errors="replace")
        if self.client == "wrk":
            return _parse_wrk(output, self.spec)
        for line in output.splitlines():
            if line.startswith("LOADGEN_JSON "):
                return LoadResult(**json.loads(line[len("LOADGEN_JSON ") :]))
        raise RuntimeError(f"loadgen printed no summary:\n{output[-2000:]}")


def run_load(spec: LoadSpec, client: str, work_dir: Path, name: str = "load") -> LoadResult:
    """One bounded load run against 127.0.0.1:spec.port, in a process of its own."""
    load = BackgroundLoad(spec, client, work_dir, name)
    try:
        return load.wait()
    finally:
        load.kill()
