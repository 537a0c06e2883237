"""The README's easy-rsa recipe ("Serving an easy-rsa or OpenSSL CA"), run as written with
Debian's easy-rsa: CA, responder and server certificate, their copies in /etc/ocspd and the
ACLs on index.txt, ocspd serving them, `openssl ocsp` says good, `easyrsa revoke`, then
revoked (issue 14).

Substituted: /srv/easyrsa and /etc/ocspd by directories of the test, the port, and the
`ocspd` account where the recipe names it (`-o ocspd`, `-g ocspd`, `u:ocspd:`). As root
that account is `nobody` (group `nogroup`), who owns nothing here: ocspd runs as it, and
it must be able to read index.txt, before and after the revoke rewrites it, but no key
under pki/. Not as root, it is the test's own user, who owns the CA directory anyway: the
recipe still runs, the checks of what `nobody` cannot read are left out."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.helpers import README, assert_verified
from tests.serving import free_port, wait_http

EASYRSA = Path("/usr/share/easy-rsa/easyrsa")
SECTION = "## Serving an easy-rsa or OpenSSL CA"
CA_DIR = "/srv/easyrsa"  # where the README keeps the CA; the test's own directory instead
ETC_DIR = "/etc/ocspd"
README_URL = "http://127.0.0.1:8080/"
NAMES_THE_USER = re.compile(r"(-o |-g |u:)ocspd\b")

pytestmark = [
    pytest.mark.skipif(not EASYRSA.exists(), reason="easy-rsa is not installed (apt-get install easy-rsa)"),
    pytest.mark.skipif(shutil.which("setfacl") is None, reason="setfacl is not installed (apt-get install acl)"),
]


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


@dataclass(frozen=True)
class Account:
    """Who ocspd runs as, with a Python it can start that has this checkout's packages."""

    user: str
    group: str
    python: str
    uid: int | None  # None: the test's own user, no switch
    gid: int | None
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, user=self.uid, group=self.gid, extra_groups=None if self.uid is None else [],
            env=self.env, cwd="/", capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip


def account() -> Account:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCSPD_", "NOTIFY_SOCKET", "PYTHON"))}
    paths = dict.fromkeys([str(README.parent), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.getuid())
        return Account(me.pw_name, grp.getgrgid(me.pw_gid).gr_name, sys.executable, None, None, env)
    nobody = pwd.getpwnam("nobody")
    # The venv's interpreter may be out of nobody's reach (a pyenv under /root, 0700): then the
    # system's of the same version, with the venv's packages on PYTHONPATH.
    for python in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        them = Account("nobody", grp.getgrgid(nobody.pw_gid).gr_name, python, nobody.pw_uid, nobody.pw_gid, env)
        try:
            if them.run(python, "-c", "import ocspd.cli, aiohttp, cryptography").returncode == 0:
                return them
        except OSError:  # cannot execute it at all
            pass
    pytest.skip("no Python that nobody can run imports ocspd's packages")


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, or as root a directory that nobody can traverse (0711; pytest's are 0700)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="ocspd-easyrsa-"))  # 0700
    try:
        path.chmod(0o711)
        yield path
    finally:
        shutil.rmtree(path)


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


def assert_reads_index_not_keys(them: Account, pki: Path) -> None:
    """``them`` reads pki/index.txt, and no key under pki/ (ca.key, or one a revoke moved)."""
    assert them.run("cat", str(pki / "index.txt")).returncode == 0, f"{them.user} cannot read index.txt"
    keys = [*pki.glob("private/*"), *pki.glob("revoked/private_by_serial/*")]
    assert pki / "private/ca.key" in keys
    for key in keys:
        denied = them.run("cat", str(key))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, f"{them.user} can read {key}"


async def test_easyrsa_recipe_serves_good_then_revoked(workdir: Path) -> None:
    recipe, copy, check, revoke = section_blocks("sh")
    (toml,) = section_blocks("toml")
    ca_dir, etc = workdir / "easyrsa", workdir / "etc-ocspd"
    assert CA_DIR in recipe and CA_DIR in copy and CA_DIR in toml and README_URL in check
    assert {m[1] for m in NAMES_THE_USER.finditer(copy)} == {"-o ", "-g ", "u:"}, copy
    them = account()

    def here(text: str) -> str:
        text = text.replace(CA_DIR, str(ca_dir)).replace(ETC_DIR, str(etc))
        return NAMES_THE_USER.sub(lambda m: m[1] + (them.group if m[1] == "-g " else them.user), text)

    await asyncio.to_thread(lambda: ran(shell(here(recipe), workdir)))
    responder = x509.load_pem_x509_certificate((ca_dir / "pki/issued/ocsp.crt").read_bytes())
    assert ExtendedKeyUsageOID.OCSP_SIGNING in responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    server = x509.load_pem_x509_certificate((ca_dir / "server.crt").read_bytes())
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    await asyncio.to_thread(lambda: ran(shell(here(copy), ca_dir)))

    config = etc / "ocspd.toml"
    config.write_text(here(toml))
    config.chmod(0o640)
    shutil.chown(config, group=them.group)
    checked = await asyncio.to_thread(them.run, them.python, "-m", "ocspd", "check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    if them.uid is not None:  # else (not root) the test's own user owns the CA directory, keys included
        assert_reads_index_not_keys(them, ca_dir / "pki")

    port, admin = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/"
    check_here = here(check).replace(README_URL, url)
    env = {**them.env, "OCSPD_SERVER_LISTEN": f"127.0.0.1:{port}", "OCSPD_ADMIN_LISTEN": f"127.0.0.1:{admin}"}
    with open(workdir / "serve.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            them.python, "-m", "ocspd", "serve", "--config", str(config),
            user=them.uid, group=them.gid, extra_groups=None if them.uid is None else [], cwd="/",
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
        if them.uid is not None:
            assert any((ca_dir / "pki/revoked/private_by_serial").iterdir())  # server.key, moved by the revoke
            assert_reads_index_not_keys(them, ca_dir / "pki")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        print((workdir / "serve.log").read_text(errors="replace"))  # shown if the test failed
