"""The README's two commands on a fresh machine (issue 14): scripts/demo.sh and scripts/test.sh
share one venv stamp, fetch nothing when nothing changed, and the demo works from the caller's
directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A stand-in for the venv's python: it records each call, and "installs" nothing.
FAKE_PYTHON = '#!/bin/sh\necho "$@" >> "$(dirname "$0")/../calls"\n'


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what scripts/_venv.sh reads, with a venv whose python only records its calls."""
    root = tmp_path / "ocspd"
    (root / "scripts").mkdir(parents=True)
    for name in ("setup.cfg", "pyproject.toml", "scripts/_venv.sh", "scripts/constraints.txt"):
        shutil.copy(ROOT / name, root / name)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return root


def source_venv(root: Path, extras: str) -> list[str]:
    """Source _venv.sh as the scripts do, with OCSPD_EXTRAS=extras; the pip calls made so far."""
    script = f'OCSPD_EXTRAS="{extras}"; source "{root}/scripts/_venv.sh"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    calls = root / ".venv" / "calls"
    return calls.read_text().splitlines() if calls.exists() else []


def test_switching_between_demo_and_tests_installs_once(checkout: Path) -> None:
    assert len(source_venv(checkout, "test,dev")) == 1  # the test command's first run
    assert len(source_venv(checkout, "")) == 1  # the demo's extras are installed already
    assert len(source_venv(checkout, "test,dev")) == 1  # and back: nothing again
    [call] = source_venv(checkout, "dev")
    assert call.endswith(f"-e {checkout}[test,dev]"), call
    assert "--upgrade" not in call  # no network call for pip itself
    assert f"-c {checkout}/scripts/constraints.txt" in call  # the tools' pinned versions


def test_a_changed_package_metadata_reinstalls_with_the_extras_asked_for(checkout: Path) -> None:
    source_venv(checkout, "test,dev")
    with (checkout / "setup.cfg").open("a") as f:
        f.write("\n# changed\n")
    calls = source_venv(checkout, "")
    assert len(calls) == 2 and calls[1].endswith(f"-e {checkout}"), calls


def test_the_dev_tools_are_pinned() -> None:
    pins = dict(
        line.split("==", 1) for line in (ROOT / "scripts/constraints.txt").read_text().splitlines() if "==" in line
    )
    assert {"ruff", "mypy", "pytest", "pytest-asyncio", "hypothesis"} <= set(pins)


def test_demo_sh_makes_a_relative_dir_in_the_callers_directory(tmp_path: Path) -> None:
    port = _free_port_pair()
    demo = subprocess.Popen(
        [str(ROOT / "scripts" / "demo.sh"), "--dir", "mine", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("OCSPD_")},
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "mine" / "ocspd.toml").exists() or not _listening(port):
            assert demo.poll() is None and time.monotonic() < deadline, demo.communicate(timeout=5)
            time.sleep(0.1)
    finally:
        demo.send_signal(signal.SIGTERM)
        out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err
    assert str(tmp_path / "mine") in out and not (ROOT / "mine").exists()
    assert "installing" not in err  # the venv the test command made serves the demo as it is


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two free ports in a row")
