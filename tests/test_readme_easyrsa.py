"""The README's easy-rsa recipe ("Serving an easy-rsa or OpenSSL CA"), run as written with
Debian's easy-rsa: CA, responder and server certificate, ocspd serving them, `openssl ocsp`
says good, `easyrsa revoke`, then revoked (issue 14)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.helpers import README, assert_verified, run
from tests.serving import free_port, wait_http

EASYRSA = Path("/usr/share/easy-rsa/easyrsa")
SECTION = "## Serving an easy-rsa or OpenSSL CA"
CA_DIR = "/srv/easyrsa"  # where the README keeps the CA; the test's own directory instead
README_URL = "http://127.0.0.1:8080/"

pytestmark = pytest.mark.skipif(not EASYRSA.exists(), reason="easy-rsa is not installed (apt-get install easy-rsa)")


def section_blocks(language: str) -> list[str]:
    """The ```language blocks of the section, in order, without the list item's indentation."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start)
    section = text[start : end if end >= 0 else len(text)]
    blocks = []
    for match in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```$", section, re.MULTILINE | re.DOTALL):
        indent, lang, body = match.groups()
        if lang == language:
            blocks.append("".join(line.removeprefix(indent) for line in body.splitlines(keepends=True)))
    return blocks


def shell(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A README block in bash, stopping at the first failing command; no EASYRSA_/OCSPD_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EASYRSA", "OCSPD_"))}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,  # a prompt the README forgot fails, never waits
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ran(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


async def test_easyrsa_recipe_serves_good_then_revoked(tmp_path: Path) -> None:
    recipe, check, revoke = section_blocks("sh")
    (toml,) = section_blocks("toml")
    ca_dir = tmp_path / "easyrsa"
    assert CA_DIR in recipe and CA_DIR in toml and README_URL in check

    def here(text: str) -> str:
        return text.replace(CA_DIR, str(ca_dir))

    await asyncio.to_thread(lambda: ran(shell(here(recipe), tmp_path)))
    responder = x509.load_pem_x509_certificate((ca_dir / "pki/issued/ocsp.crt").read_bytes())
    assert ExtendedKeyUsageOID.OCSP_SIGNING in responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    server = x509.load_pem_x509_certificate((ca_dir / "server.crt").read_bytes())
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    config = tmp_path / "ocspd.toml"
    config.write_text(here(toml))
    checked = await asyncio.to_thread(run, "check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr

    port, admin = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/"
    check_here = here(check).replace(README_URL, url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCSPD_", "NOTIFY_SOCKET"))}
    env.update({"OCSPD_SERVER_LISTEN": f"127.0.0.1:{port}", "OCSPD_ADMIN_LISTEN": f"127.0.0.1:{admin}"})
    with open(tmp_path / "serve.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ocspd", "serve", "--config", str(config),
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        await wait_http(f"http://127.0.0.1:{admin}/healthz", timeout=30)
        first = await asyncio.to_thread(shell, check_here, ca_dir)
        assert_verified(first.returncode, ran(first), Path("server.crt"), "good")

        await asyncio.to_thread(lambda: ran(shell(here(revoke), ca_dir)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            answer = await asyncio.to_thread(shell, check_here, ca_dir)
            if "server.crt: revoked" in ran(answer) or loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert_verified(answer.returncode, ran(answer), Path("server.crt"), "revoked")
        assert "Reason: " in ran(answer) and "Revocation Time: " in ran(answer), ran(answer)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
