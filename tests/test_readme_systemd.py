"""README.md's "Install as a systemd service", run as written against a scratch root (issue 14).

The section's blocks are what a new operator types. This test runs them one
command at a time, with this machine's tools, but with every install target
moved into a scratch root. Then it checks what they installed:
``systemd-analyze verify`` and ``security --offline`` on that root, the owners
and modes the example configuration lists, and the output of the
``ocspd check-config`` the README runs.

What is run, and how (RULES below; the first rule that matches a command applies):

- The blocks: every ```sh block between "### Install as a systemd service" and
  "### Health" marked ``<!-- run by tests/test_readme_systemd.py -->``. A block
  marked ``<!-- not run by the tests: reason -->`` is left out, and any other
  block fails the test. The block that installs systemd/passphrase.conf is for
  an encrypted key only: the "plain" scenario runs the other blocks and the
  "encrypted" one runs them all, in README order. The "elsewhere" scenario is
  plain plus the section's ```ini drop-in, written where ``systemctl edit ocspd``
  puts it.
- Commands: a line is cut into words as the shell would (shlex) and cut again
  at ``&&``. Each command runs with no shell in between, so a pipe, a
  redirection, ``;``, ``$``, a backquote or a glob fails the test (that would
  need a rule of its own). Apart from the rules, only the programs in ALLOWED
  run.
- Paths: a word that is an absolute path under /etc, /opt or /var (also after
  ``--opt=``) moves under the scratch root. ``~/`` is a scratch HOME where the
  test made the PKI the README expects in ~/pki/. Relative paths are relative to
  a scratch "clone" whose systemd/ is this checkout's. Any other absolute path
  fails the test, because the command would touch this machine.
- Owners: this machine has no ocspd account, so ``install -o/-g ocspd`` get the
  uid/gid the scratch root's systemd-sysusers gave ocspd.
- The configuration: the installed ocspd.toml names /etc/ocspd/... too. Just
  before an ``ocspd ... --config FILE`` command runs, FILE's own /etc, /opt and
  /var paths get the same rewrite, in place, owner and mode kept. That stands
  for the README's "then edit" step.

The scratch root starts as a minimal Debian 12 with systemd:
/etc/systemd/system, /etc/tmpfiles.d (no /etc/sysusers.d: Debian does not ship
one), /opt, a copy of this machine's /usr/lib/systemd/system (verify needs
sysinit.target and the like) and of kill (ExecReload=), and /bin -> usr/bin.

Everything runs as root (install -o/-g, sysusers, tmpfiles and the switch to
the ocspd user need it); elsewhere the test is skipped, like
test_systemd_unit.py's tmpfiles test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from ocspd import pki
from tests.helpers import README

ROOT = Path(__file__).resolve().parent.parent
SECTION = "### Install as a systemd service"
NEXT_SECTION = "### Health"
UNIT = "ocspd.service"
EXAMPLE_CONFIG = ROOT / "systemd" / "ocspd.toml"
PASSPHRASE = b"correct horse battery staple"
# The bound issue 14 sets for the installed unit, drop-ins included (tests/test_systemd_unit.py
# holds the file alone to SPEC §5's "OK", <= 2.0).
MAX_EXPOSURE = 1.5

ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(tool) for tool in ("systemd-analyze", "systemd-sysusers", "systemd-tmpfiles")),
    reason="needs root (owners, sysusers, tmpfiles, the ocspd user) and systemd-analyze, -sysusers, -tmpfiles",
)

# Programs run as the README says, once their paths and owners are rewritten.
ALLOWED = {"install", "sed", "mkdir", "chmod", "cp", "ln", "touch"}
SHELL_SYNTAX = {"|", "||", ";", "&", ">", ">>", "<", "<<", "2>", "2>&1", "(", ")"}
MOVED = re.compile(r"^(?P<opt>--[\w-]+=)?(?P<path>/(?:etc|opt|var)(?:/.*)?)$")
MOVED_IN_TEXT = re.compile(r"(?<![\w./~-])/(etc|opt|var)(?=/)")


# --- the README's blocks ---


@dataclass(frozen=True)
class Block:
    language: str
    body: str
    line: int  # README line of the block's first line of code
    marker: str  # the line before the fence that is not blank


BLOCK = re.compile(r"^```(?P<language>\w*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def section_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION + "\n")
    end = text.index(NEXT_SECTION + "\n", start)
    blocks = []
    for match in BLOCK.finditer(text, start, end):
        before = next((line for line in reversed(text[: match.start()].splitlines()) if line.strip()), "")
        line = text.count("\n", 0, match.start("body")) + 1
        blocks.append(Block(match["language"], match["body"], line, before.strip()))
    return blocks


def shell_blocks(blocks: list[Block]) -> list[Block]:
    """The ```sh blocks to run; each says whether it is run (and by this file) or why not."""
    run = []
    for block in blocks:
        if block.language != "sh":
            continue
        if re.fullmatch(r"<!-- not run by the tests: .+ -->", block.marker):
            continue
        assert block.marker == "<!-- run by tests/test_readme_systemd.py -->", (
            f"README.md line {block.line}: a block of {SECTION!r} that this test does not run must say why: "
            f"<!-- not run by the tests: reason --> (found {block.marker!r})"
        )
        run.append(block)
    return run


def is_encrypted_key_only(block: Block) -> bool:
    return "systemd/passphrase.conf" in block.body


def scenario_blocks(blocks: list[Block], scenario: str) -> list[Block]:
    runnable = shell_blocks(blocks)
    encrypted_only = [b for b in runnable if is_encrypted_key_only(b)]
    assert len(encrypted_only) == 1, "one block installs systemd/passphrase.conf, for an encrypted key only"
    return runnable if scenario == "encrypted" else [b for b in runnable if not is_encrypted_key_only(b)]


def override_drop_in(blocks: list[Block]) -> Block:
    """The ```ini drop-in for another install location (what `systemctl edit ocspd` gets)."""
    found = [b for b in blocks if b.language == "ini" and "ExecStart=" in b.body]
    assert len(found) == 1, f"{SECTION!r}: one ```ini drop-in with ExecStart=, found {len(found)}"
    return found[0]


@dataclass(frozen=True)
class Command:
    line: int
    text: str  # the README line it comes from
    words: list[str]


def commands(block: Block) -> Iterator[Command]:
    logical, first = "", 0
    for number, raw in enumerate(block.body.splitlines(), block.line):
        if not logical:
            first = number
        if raw.endswith("\\"):
            logical += raw[:-1] + " "
            continue
        logical += raw
        words = shlex.split(logical, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            yield Command(first, logical.strip(), words[:cut])
            words = words[cut + 1 :]
        logical = ""
    assert not logical, f"README.md line {first}: a continuation line ends the block"


# --- the scratch root ---


@dataclass
class Sandbox:
    root: Path
    home: Path
    clone: Path
    uid: int | None = None  # of ocspd in the root, once systemd-sysusers made it
    gid: int | None = None
    ocspd_runs_here: bool | None = None  # can ocspd's uid run this checkout's interpreter
    check_config: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    not_run: list[tuple[int, str, str]] = field(default_factory=list)  # (line, command, rule)

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("OCSPD_", "CREDENTIALS_DIRECTORY"))}
        return {**keep, "HOME": str(self.home), "LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}

    def inside(self, path: str) -> Path:
        """Where an absolute path of the README lands in the scratch root."""
        return self.root / path.lstrip("/")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    # Not pytest's tmp_path: its parent is 0700, and the ocspd user must reach the root.
    with tempfile.TemporaryDirectory(prefix="ocspd-readme-") as scratch:
        base = Path(scratch)
        base.chmod(0o755)
        box = Sandbox(base / "root", base / "home", base / "clone")
        for directory in ("etc/systemd/system", "etc/tmpfiles.d", "opt", "usr/bin", "usr/lib/systemd"):
            (box.root / directory).mkdir(parents=True)
        shutil.copytree("/usr/lib/systemd/system", box.root / "usr/lib/systemd/system", symlinks=True)
        kill = shutil.which("kill", path="/usr/bin:/bin")
        assert kill, "kill (procps) is missing: ExecReload= needs it"
        shutil.copy(kill, box.root / "usr/bin/kill")
        (box.root / "bin").symlink_to("usr/bin")
        # The PKI the README expects in ~/pki/, made by the scenario (plain or encrypted key).
        (box.home / "pki").mkdir(parents=True)
        box.clone.mkdir()
        (box.clone / "systemd").symlink_to(ROOT / "systemd")
        yield box


def make_pki(box: Sandbox, encrypted: bool) -> None:
    ca = pki.make_ca("ocspd README CA")
    responder = pki.make_responder(ca)
    pki.write_cert(box.home / "pki" / "ca.pem", ca.cert)
    pki.write_cert(box.home / "pki" / "responder.pem", responder.cert)
    pki.write_key(box.home / "pki" / "responder.key", responder.key, passphrase=PASSPHRASE if encrypted else None)
    if encrypted:
        fd = os.open(box.home / "pki" / "responder.pass", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, PASSPHRASE + b"\n")
        os.close(fd)


def moved(box: Sandbox, word: str, command: Command) -> str:
    """``word`` with an install target moved into the root; a path anywhere else fails the test."""
    if word.startswith("~/"):
        return str(box.home) + word[1:]
    match = MOVED.match(word)
    if match:
        return (match["opt"] or "") + str(box.inside(match["path"]))
    host_path = re.match(r"^(--[\w-]+=)?(/.*)$", word)
    assert host_path is None, (
        f"README.md line {command.line}: {command.text!r} names {host_path[2] if host_path else word}, outside "
        "/etc, /opt and /var: run here it would touch this machine (add a rule to tests/test_readme_systemd.py)"
    )
    return word


def ocspd_ids(box: Sandbox) -> tuple[int, int]:
    if box.uid is None or box.gid is None:
        passwd = (box.root / "etc/passwd").read_text().splitlines()
        entry = next((line.split(":") for line in passwd if line.startswith("ocspd:")), None)
        assert entry, "no ocspd account in the scratch root: the README runs systemd-sysusers before it needs one"
        box.uid, box.gid = int(entry[2]), int(entry[3])
    return box.uid, box.gid


def with_owners(box: Sandbox, words: list[str]) -> list[str]:
    """install's -o/-g ocspd as the scratch root's numbers (this machine has no ocspd account)."""
    out = list(words)
    for i, word in enumerate(out):
        if word in ("-o", "-g") and i + 1 < len(out) and out[i + 1] == "ocspd":
            out[i + 1] = str(ocspd_ids(box)[0 if word == "-o" else 1])
        elif word in ("--owner=ocspd", "--group=ocspd"):
            out[i] = word.replace("ocspd", str(ocspd_ids(box)[0 if word.startswith("--owner") else 1]))
    return out


def edited_config(box: Sandbox, words: list[str]) -> None:
    """Before ocspd reads its installed config: the config's own paths moved into the root, in place."""
    if "--config" not in words:
        return
    config = Path(words[words.index("--config") + 1])
    with config.open("r+", encoding="utf-8") as file:  # in place: owner and mode stay those installed
        text = MOVED_IN_TEXT.sub(lambda m: f"{box.root}/{m[1]}", file.read())
        file.seek(0)
        file.write(text)
        file.truncate()


def run_words(box: Sandbox, command: Command, words: list[str], *, as_ocspd: bool = False) -> None:
    """Run one rewritten command; a failure fails the test, naming the README line."""
    user: dict[str, Any] = {}
    if as_ocspd:
        uid, gid = ocspd_ids(box)
        if box.ocspd_runs_here is None:
            try:
                probe = subprocess.run(
                    [sys.executable, "-c", "import ocspd"],
                    user=uid,
                    group=gid,
                    extra_groups=[],
                    cwd="/",
                    env={**box.env(), "PYTHONPATH": str(ROOT)},
                    capture_output=True,
                    check=False,
                )
                box.ocspd_runs_here = probe.returncode == 0
            except PermissionError:  # the interpreter itself is out of reach
                box.ocspd_runs_here = False
        if box.ocspd_runs_here:
            user = {"user": uid, "group": gid, "extra_groups": []}
        # Otherwise this checkout's interpreter is out of the ocspd user's reach (a pyenv under /root,
        # 0700, say): the command runs as root, and check_installed_files() checks from the modes and
        # owners what the ocspd user can read.
    result = subprocess.run(
        words, cwd=box.clone, env=box.env(), capture_output=True, text=True, timeout=120, check=False, **user
    )
    assert result.returncode == 0, (
        f"README.md line {command.line}: {command.text!r} failed (exit {result.returncode}), run here as "
        f"{shlex.join(words)}:\n{result.stdout}{result.stderr}"
    )
    if "check-config" in words:
        box.check_config.append(result)


# Rules: (name, does it match these words (paths not yet moved), what to do instead). First match wins.
Rule = tuple[str, Callable[[list[str]], bool], Callable[[Sandbox, Command, list[str]], None]]


def _not_run(why: str) -> Callable[[Sandbox, Command, list[str]], None]:
    def action(box: Sandbox, command: Command, words: list[str]) -> None:
        box.not_run.append((command.line, shlex.join(words), why))

    return action


def _make_venv_directory(box: Sandbox, command: Command, words: list[str]) -> None:
    box.inside(words[3]).mkdir(parents=True, mode=0o755)


def _stand_in_for_pip_install(box: Sandbox, command: Command, words: list[str]) -> None:
    # A wrapper, not a symlink: systemd-analyze --root resolves an absolute symlink inside the root.
    venv_bin = box.inside(words[0]).parent
    assert venv_bin.parent.is_dir(), f"README.md line {command.line}: pip of a venv the README did not make"
    venv_bin.mkdir(exist_ok=True, mode=0o755)
    write_wrapper(venv_bin / "ocspd")


def write_wrapper(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.write_text(
        "#!/bin/sh\n# Stands in for `pip install .` (tests/test_readme_systemd.py): this checkout's ocspd.\n"
        f'PYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.quote(sys.executable)} -m ocspd "$@"\n'
    )
    path.chmod(0o755)


def _in_the_root(box: Sandbox, command: Command, words: list[str]) -> None:
    run_words(box, command, [words[0], f"--root={box.root}", *(moved(box, w, command) for w in words[1:])])


def _as_ocspd(box: Sandbox, command: Command, words: list[str]) -> None:
    rest = words[3:]
    for _name, matches, action in NOT_RUN:  # db migrate: not run, whoever would run it
        if matches(rest):
            action(box, command, rest)
            return
    rest = [moved(box, w, command) for w in rest]
    edited_config(box, rest)
    run_words(box, command, rest, as_ocspd=True)


def _run_as_written(box: Sandbox, command: Command, words: list[str]) -> None:
    assert words[0] in ALLOWED, (
        f"README.md line {command.line}: {command.text!r}: {words[0]} is not a program this test runs "
        f"({sorted(ALLOWED)}); add a rule to tests/test_readme_systemd.py"
    )
    run_words(box, command, with_owners(box, [moved(box, w, command) for w in words]))


def _is_ocspd(words: list[str], subcommand: str) -> bool:
    parts = subcommand.split()
    return bool(words) and words[0].endswith("/bin/ocspd") and words[1 : 1 + len(parts)] == parts


NOT_RUN: list[Rule] = [
    (
        "systemctl",  # needs a running systemd (PID 1); what it would load is what verify/security check below
        lambda w: w[:1] == ["systemctl"] and w[1:2] in (["daemon-reload"], ["enable"], ["start"], ["restart"]),
        _not_run("needs a running systemd; the installed unit is checked by systemd-analyze --root instead"),
    ),
    (
        "db migrate",
        lambda w: _is_ocspd(w, "db migrate"),
        _not_run("needs the PostgreSQL server of [database]; tests/test_db_cli.py runs migrate"),
    ),
]
RULES: list[Rule] = [
    *NOT_RUN,
    ("venv", lambda w: w[:3] == ["python3", "-m", "venv"] and len(w) == 4, _make_venv_directory),
    (
        "pip install",
        lambda w: len(w) >= 2 and w[0].endswith("/bin/pip") and w[1] == "install",
        _stand_in_for_pip_install,
    ),
    ("sysusers, tmpfiles", lambda w: w[:1] in (["systemd-sysusers"], ["systemd-tmpfiles"]), _in_the_root),
    ("sudo -u ocspd", lambda w: w[:3] == ["sudo", "-u", "ocspd"], _as_ocspd),
    ("run", lambda w: True, _run_as_written),
]


def run_blocks(box: Sandbox, blocks: list[Block]) -> None:
    for block in blocks:
        for command in commands(block):
            bad = [w for w in command.words if w in SHELL_SYNTAX or any(c in w for c in "$`*")]
            assert not bad, f"README.md line {command.line}: {command.text!r}: shell syntax {bad} needs a rule here"
            for _name, matches, action in RULES:
                if matches(command.words):
                    action(box, command, command.words)
                    break


def install_as_the_readme_says(box: Sandbox, blocks: list[Block], scenario: str) -> None:
    make_pki(box, encrypted=scenario == "encrypted")
    run_blocks(box, scenario_blocks(blocks, "encrypted" if scenario == "encrypted" else "plain"))
    if scenario == "elsewhere":
        drop_in = override_drop_in(blocks).body
        box.inside("/etc/systemd/system/ocspd.service.d").mkdir(exist_ok=True)
        box.inside("/etc/systemd/system/ocspd.service.d/override.conf").write_text(drop_in)
        starts = [line.partition("=")[2].split() for line in drop_in.splitlines() if line.startswith("ExecStart=")]
        program = next(words[0] for words in reversed(starts) if words)
        write_wrapper(box.inside(program))  # where that drop-in says ocspd is


# --- checking what was installed ---


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run([ANALYZE, *map(str, args)], capture_output=True, text=True, timeout=60, env=env, check=False)


def check_verify(box: Sandbox) -> None:
    """The installed unit and its drop-ins, as systemd would load them from the root."""
    result = analyze("verify", "--man=no", f"--root={box.root}", UNIT)
    output = (result.stdout + result.stderr).splitlines()
    ours = [line for line in output if UNIT in line]
    assert ours == [] and result.returncode == 0, f"systemd-analyze verify --root: {output}"


def check_security(box: Sandbox) -> float:
    result = analyze("security", "--offline=true", "--no-pager", f"--root={box.root}", UNIT)
    if result.returncode != 0 and "offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip(f"systemd-analyze too old for --offline (systemd >= 250): {result.stderr.strip()}")
    match = re.search(rf"Overall exposure level for {re.escape(UNIT)}: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    exposure = float(match[1])
    assert exposure <= MAX_EXPOSURE, f"installed unit: exposure {exposure} > {MAX_EXPOSURE}"
    return exposure


OWNERSHIP = re.compile(r"^#\s+(?P<path>/etc/ocspd/\S*)\s+(?P<user>\w+):(?P<group>\w+)\s+(?P<mode>0[0-7]{3})\b")


def listed_ownership() -> dict[str, tuple[str, str, int]]:
    """The files ocspd.toml's header lists, with the owner, group and mode the service needs."""
    found = {}
    for line in EXAMPLE_CONFIG.read_text().splitlines():
        match = OWNERSHIP.match(line)
        if match:
            found[match["path"].rstrip("/") or "/"] = (match["user"], match["group"], int(match["mode"], 8))
    assert "/etc/ocspd" in found and "/etc/ocspd/responder.key" in found, found
    return found


def may(path: Path, uid: int, gid: int, bit: int) -> bool:
    """Whether ocspd (uid, gid, no other group) has ``bit`` (4 read, 1 search) on ``path``, by its mode bits."""
    st = path.stat()
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
    return bool((st.st_mode >> shift) & bit)


def ocspd_may_read(box: Sandbox, path: Path) -> bool:
    uid, gid = ocspd_ids(box)
    ancestors = [p for p in path.parents if p == box.root or box.root in p.parents]
    return all(may(p, uid, gid, 1) for p in ancestors) and may(path, uid, gid, 4)


def check_installed_files(box: Sandbox, scenario: str) -> None:
    uid, gid = ocspd_ids(box)
    ids = {"root": (0, 0), "ocspd": (uid, gid)}
    for path, (user, group, mode) in listed_ownership().items():
        installed = box.inside(path)
        if path.endswith(".pass") and scenario != "encrypted":
            assert not installed.exists(), f"{path} is for an encrypted key only"
            continue
        assert installed.exists(), f"{path}: listed in systemd/ocspd.toml, not installed by the README"
        st = installed.stat()
        found = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
        assert found == (ids[user][0], ids[group][1], mode), (
            f"{path}: installed {found[0]}:{found[1]} {found[2]:04o}, systemd/ocspd.toml lists {user}:{group} "
            f"{mode:04o} (ocspd is {uid}:{gid} here)"
        )
        # What the service reads itself, the ocspd user reads; what systemd hands over, it does not.
        assert ocspd_may_read(box, installed) is (group == "ocspd" or user == "ocspd"), path
    drop_ins = box.inside("/etc/systemd/system/ocspd.service.d")
    expected = {"encrypted": ["passphrase.conf"], "elsewhere": ["override.conf"], "plain": []}[scenario]
    installed_drop_ins = sorted(p.name for p in drop_ins.iterdir()) if drop_ins.exists() else []
    assert installed_drop_ins == expected, installed_drop_ins


def check_credential(box: Sandbox) -> None:
    """The drop-in's credential lands where the config reads it, and decrypts the key."""
    drop_in = box.inside("/etc/systemd/system/ocspd.service.d/passphrase.conf").read_text()
    credentials = [line.partition("=")[2] for line in drop_in.splitlines() if line.startswith("LoadCredential=")]
    assert len(credentials) == 1, credentials
    name, _, source = credentials[0].partition(":")
    config = tomllib.loads(box.inside("/etc/ocspd/ocspd.toml").read_text())
    assert config["issuers"][0].get("key_passphrase_file") == f"/run/credentials/{UNIT}/{name}"
    passphrase = box.inside(source).read_bytes().rstrip(b"\r\n")
    key_path = Path(config["issuers"][0]["responder_key"])  # moved into the root by edited_config()
    serialization.load_pem_private_key(key_path.read_bytes(), passphrase)


def check_check_config(box: Sandbox, scenario: str) -> None:
    assert len(box.check_config) == 1, "the README runs check-config once"
    stderr = box.check_config[0].stderr
    issuer = [line for line in stderr.splitlines() if line.startswith("# issuer root-2026: ")]
    assert len(issuer) == 1, stderr
    if scenario == "encrypted":
        assert "key not checked: its passphrase is a systemd credential" in issuer[0], issuer[0]
        assert f"/run/credentials/{UNIT}/" in issuer[0]
    else:
        assert issuer[0].endswith("signed by the delegated responder"), issuer[0]


def check_everything(box: Sandbox, scenario: str) -> float:
    check_installed_files(box, scenario)
    check_verify(box)
    exposure = check_security(box)
    check_check_config(box, scenario)
    if scenario == "encrypted":
        check_credential(box)
    return exposure


# --- the tests ---


@pytest.mark.parametrize("scenario", ["plain", "encrypted", "elsewhere"])
def test_the_install_steps_run_as_written_and_install_a_unit_systemd_accepts(sandbox: Sandbox, scenario: str) -> None:
    blocks = section_blocks()
    install_as_the_readme_says(sandbox, blocks, scenario)
    check_everything(sandbox, scenario)
    # The rules skipped what they say, and no more.
    assert sorted({why.split(";")[0] for _, _, why in sandbox.not_run}) == [
        "needs a running systemd",
        "needs the PostgreSQL server of [database]",
    ], sandbox.not_run


def _drop_empty_exec_start(blocks: list[Block]) -> list[Block]:
    return [
        Block(b.language, b.body.replace("ExecStart=\n", ""), b.line, b.marker) if b.language == "ini" else b
        for b in blocks
    ]


def _venv_elsewhere(blocks: list[Block]) -> list[Block]:
    return [Block(b.language, b.body.replace("/opt/ocspd/.venv", "/opt/ocspd/venv"), b.line, b.marker) for b in blocks]


def _no_sed(blocks: list[Block]) -> list[Block]:
    return [
        Block(
            b.language, "\n".join(x for x in b.body.splitlines() if not x.startswith("sed ")) + "\n", b.line, b.marker
        )
        for b in blocks
    ]


def _key_not_for_ocspd(blocks: list[Block]) -> list[Block]:
    return [Block(b.language, b.body.replace("-o ocspd -g ocspd ", ""), b.line, b.marker) for b in blocks]


@pytest.mark.parametrize(
    ("scenario", "breakage", "expected"),
    [
        ("elsewhere", _drop_empty_exec_start, "systemd-analyze verify"),
        ("plain", _venv_elsewhere, "failed|systemd-analyze verify"),
        ("encrypted", _no_sed, "key_passphrase_file"),
        ("plain", _key_not_for_ocspd, "responder.key"),
    ],
    ids=["no-empty-ExecStart", "venv-not-where-the-unit-says", "passphrase-not-configured", "key-not-ocspd's"],
)
def test_a_broken_install_step_fails_the_test(
    sandbox: Sandbox, scenario: str, breakage: Callable[[list[Block]], list[Block]], expected: str
) -> None:
    """The checks are not vacuous: README mistakes like those of issue 14 fail them."""
    blocks = breakage(section_blocks())
    with pytest.raises(AssertionError, match=expected):
        install_as_the_readme_says(sandbox, blocks, scenario)
        check_everything(sandbox, scenario)


def test_every_block_of_the_section_is_run_or_says_why_not() -> None:
    blocks = section_blocks()
    assert shell_blocks(blocks), f"no ```sh block under {SECTION!r}"
    override = override_drop_in(blocks)
    lines = [line for line in override.body.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "[Service]" and lines[1] == "ExecStart=", "an ExecStart= drop-in clears the unit's first"
