"""The supervisor of worker processes (``server.workers`` > 1).

Each worker is ``ocspd serve`` with a pipe back to the supervisor; workers
bind the OCSP port with SO_REUSEPORT and the kernel spreads connections over
them. The supervisor serves the admin endpoints (metrics summed over the
workers through prometheus-client's multiprocess files; ready when every
worker is), talks to systemd, restarts a worker that dies, forwards SIGHUP
once the new configuration has been checked, and on SIGTERM drains the
workers and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ocspd.config import Config, load_config
from ocspd.exceptions import OcspdError
from ocspd.health import Readiness
from ocspd.keys import check_signers
from ocspd.logs import event
from ocspd.metrics import mark_process_dead, multiprocess_exposition
from ocspd.sdnotify import Notifier, watchdog_interval, watchdog_loop
from ocspd.server import ignore_stop_signals, summary
from ocspd.web.admin import init_admin_app

log = logging.getLogger("ocspd.workers")

RESTART_BACKOFF_MAX = 30.0
STOP_GRACE = 15.0  # seconds a worker gets to drain after SIGTERM before SIGKILL


@dataclass
class Worker:
    """One worker process and the last thing it said about itself."""

    slot: int
    process: asyncio.subprocess.Process | None = None
    report: dict[str, object] = field(default_factory=dict)
    ever_ready: bool = False
    restarts: int = 0


class Supervisor:
    """Starts, watches and stops the workers; serves the admin endpoints."""

    def __init__(self, config_path: Path | None, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.notifier = Notifier.from_env()
        self.workers = [Worker(slot) for slot in range(config.server.workers)]
        self.stopping = False
        self._metrics_dir = ""

    def run(self) -> int:
        self._metrics_dir = _metrics_dir()
        try:
            asyncio.run(self._main())
        finally:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return 0

    async def _main(self) -> None:
        # Keys are checked here once, so that a bad one fails before any worker starts.
        summary(self.config, check_signers(self.config))

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        admin = init_admin_app(lambda: multiprocess_exposition(self._metrics_dir), self.readiness)
        runner = web.AppRunner(admin, access_log=None)
        await runner.setup()
        host, port = self.config.admin.listen
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise OcspdError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        keepers = [asyncio.create_task(self._keep(worker)) for worker in self.workers]
        interval = watchdog_interval()
        if interval is not None and self.notifier.enabled:
            keepers.append(asyncio.create_task(watchdog_loop(self.notifier, interval, self._all_alive)))
        try:
            await stop.wait()
        finally:
            ignore_stop_signals(loop)
            self.stopping = True
            event(log, "stopping", workers=len(self.workers))
            self.notifier.stopping()
            await asyncio.gather(*(self._stop(worker) for worker in self.workers))
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            await runner.cleanup()
            event(log, "stopped")

    async def _keep(self, worker: Worker) -> None:
        """Run one worker slot: start it, read its reports, restart it if it dies."""
        backoff = 1.0
        while not self.stopping:
            read_fd, write_fd = os.pipe()
            env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
            env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
            args = [sys.executable, "-m", "ocspd", "serve", "--worker-fd", str(write_fd)]
            if self.config_path is not None:
                args += ["--config", str(self.config_path)]
            worker.process = await asyncio.create_subprocess_exec(*args, pass_fds=(write_fd,), env=env)
            os.close(write_fd)
            event(log, "worker_started", slot=worker.slot, pid=worker.process.pid)
            reader = asyncio.create_task(self._read_reports(worker, read_fd))
            code = await worker.process.wait()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            mark_process_dead(worker.process.pid)
            worker.report = {}
            if self.stopping:
                return
            worker.restarts += 1
            event(
                log,
                "worker_died",
                logging.ERROR,
                slot=worker.slot,
                pid=worker.process.pid,
                exit_code=code,
                restart_in=backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)

    async def _read_reports(self, worker: Worker, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError):
                    worker.report = json.loads(line)
                if worker.report.get("ready") and not worker.ever_ready:
                    worker.ever_ready = True
                    if all(w.ever_ready for w in self.workers):
                        event(log, "ready", workers=len(self.workers))
                        self.notifier.ready(f"serving with {len(self.workers)} workers")
        finally:
            transport.close()

    async def _stop(self, worker: Worker) -> None:
        process = worker.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            event(log, "worker_killed", logging.WARNING, slot=worker.slot, pid=process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def _reload(self) -> None:
        """Check the new configuration here first, so a bad one never reaches the workers."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
            check_signers(config)
            if config.server.workers != self.config.server.workers or config.admin != self.config.admin:
                raise OcspdError("changes to server.workers or [admin] need a restart")
        except OcspdError as exc:
            event(log, "reload_refused", logging.ERROR, error=str(exc), note="the running configuration is kept")
        else:
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    worker.process.send_signal(signal.SIGHUP)
            event(log, "reload_forwarded", workers=len(self.workers))
        self.notifier.ready("serving")

    def _all_alive(self) -> bool:
        return all(w.process is not None and w.process.returncode is None for w in self.workers)

    def readiness(self) -> Readiness:
        """Ready when every worker says it is; the lines say which is not and why."""
        ready, degraded, checks = True, False, []
        for worker in self.workers:
            report = worker.report
            pid = worker.process.pid if worker.process else None
            if not report or worker.process is None or worker.process.returncode is not None:
                ready = False
                checks.append(f"worker {worker.slot} (pid {pid}): starting or not running")
                continue
            ready = ready and bool(report.get("ready"))
            degraded = degraded or bool(report.get("degraded"))
            state = "degraded" if report.get("degraded") else "ready" if report.get("ready") else "not ready"
            checks.append(f"worker {worker.slot} (pid {pid}): {state}")
            if state != "ready":  # say why, in the worker's own words
                raw = report.get("checks")
                checks.extend(f"  {line}" for line in (raw if isinstance(raw, list) else []))
        return Readiness(ready, degraded, checks)


def _metrics_dir() -> str:
    """A fresh directory for the workers' metric files (systemd's RuntimeDirectory when set)."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        path = Path(runtime) / "metrics"
        shutil.rmtree(path, ignore_errors=True)  # files of a previous run would be summed in
        path.mkdir(mode=0o700, parents=True)
        return str(path)
    return tempfile.mkdtemp(prefix="ocspd-metrics-")
