"""``ocspd serve``: the one place that chooses between serving in this process
(``ocspd/server.py``) and supervising worker processes (``ocspd/workers.py``,
with ``server.workers`` > 1) that share the OCSP port with SO_REUSEPORT.

One process (workers = 1) serves OCSP and the admin endpoints itself. With
several workers, each worker is a full replica (its own memory tier, pool
and listener) and the supervisor serves the admin endpoints, summing the
workers' metrics (prometheus-client multiprocess mode) and their readiness.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from pathlib import Path

from ocspd import logs
from ocspd.config import Config
from ocspd.logs import event
from ocspd.server import GC_THRESHOLDS, Process, ensure_file_limit, loop_factory
from ocspd.workers import Supervisor

log = logging.getLogger("ocspd.server")


def serve(config_path: Path | None, config: Config, *, worker_fd: int | None = None) -> int:
    """``ocspd serve``: run until SIGTERM/SIGINT; returns the exit status.

    ``worker_fd``: this process is a worker of a supervisor, reporting on that pipe.
    """
    logs.setup(config.log, level=os.environ.get("OCSPD_LOG_LEVEL"))
    for warning in config.warnings:
        event(log, "config_warning", logging.WARNING, message=warning)
    ensure_file_limit(config)  # before the workers start: they inherit it
    if worker_fd is None and config.server.workers > 1:
        return Supervisor(config_path, config).run()
    gc.set_threshold(*GC_THRESHOLDS)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(Process(config_path, config, worker_fd=worker_fd).run())
    return 0
