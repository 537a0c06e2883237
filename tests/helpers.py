"""What the tests share: test PKIs, request builders and response checks, raw HTTP/1.1,
the CLI as a subprocess, PostgreSQL statements and replicas, counting signers and a hand-moved
clock, `openssl ocsp`, and the revocation-rule checks. `ocspd serve` processes: tests/serving.py.

Over ~400 lines on purpose: the one home of shared test helpers (test modules do not import each other)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import pytest
from aiohttp.test_utils import TestClient
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ocspd import pki
from ocspd.app import LISTENER
from ocspd.config import Config, load_config
from ocspd.keys import load_signers
from ocspd.protocol import TRY_LATER, CertId
from ocspd.signer import Answer as SignerAnswer
from ocspd.signer import Signer

if TYPE_CHECKING:
    from tests.conftest import AppClient  # conftest imports this module

GOOD_SERIAL = 0x1001
REVOKED_SERIAL = 0x1002
UNISSUED_SERIAL = 0x1003
REVOKED_AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@dataclass
class TestPki:
    """A CA, its responder and leaves on disk, with an index.txt and a config."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca: pki.Identity
    responder: pki.Identity | None
    ca_path: Path
    responder_path: Path | None
    key_path: Path
    index_path: Path
    config_path: Path
    leaves: dict[str, pki.Identity] = field(default_factory=dict)
    leaf_paths: dict[str, Path] = field(default_factory=dict)

    def config(self, **env: str) -> Config:
        return load_config(self.config_path, environ=env)

    def revoke_in_index(self, name: str, reason: str = "keyCompromise") -> None:
        """Rewrite index.txt with ``name`` revoked, as `openssl ca -revoke` does (new file, rename)."""
        cert = self.leaves[name].cert
        lines = [
            line
            for line in self.index_path.read_text().splitlines()
            if int(line.split("\t")[3], 16) != cert.serial_number
        ]
        lines.append(pki.index_line(cert, revoked_at=dt.datetime.now(dt.UTC), reason=reason))
        tmp = self.index_path.with_suffix(".new")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.index_path)


def build_pki(
    directory: Path,
    *,
    key_type: pki.KeyType = "p256",
    delegated: bool = True,
    responder_key_type: pki.KeyType | None = None,
    server: str = "",
    responses: str = "",
    issuer_extra: str = "",
    issuer_id: str = "test-ca",
    database: str | None = None,
    database_extra: str = "",
) -> TestPki:
    """Make a PKI and a config that serves it from index.txt, or from ``database`` (a DSN) when given
    (``database_extra``: more lines of its ``[database]`` section)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca("ocspd test CA " + issuer_id, key_type)
    ca_path = directory / "ca.pem"
    pki.write_cert(ca_path, ca.cert)
    responder: pki.Identity | None = None
    responder_path: Path | None = None
    key_path = directory / "signer.key"
    if delegated:
        responder = pki.make_responder(ca, responder_key_type or key_type)
        responder_path = directory / "responder.pem"
        pki.write_cert(responder_path, responder.cert)
        pki.write_key(key_path, responder.key)
    else:
        pki.write_key(key_path, ca.key)
    result = TestPki(
        directory, ca, responder, ca_path, responder_path, key_path, directory / "index.txt", directory / "ocspd.toml"
    )
    for name, serial in (("good", GOOD_SERIAL), ("revoked", REVOKED_SERIAL), ("unissued", UNISSUED_SERIAL)):
        leaf = pki.make_leaf(ca, serial, f"{name}.example.test")
        result.leaves[name] = leaf
        result.leaf_paths[name] = directory / f"{name}.pem"
        pki.write_cert(result.leaf_paths[name], leaf.cert)
    lines = [
        pki.index_line(result.leaves["good"].cert),
        pki.index_line(result.leaves["revoked"].cert, revoked_at=REVOKED_AT, reason="keyCompromise"),
    ]
    result.index_path.write_text("\n".join(lines) + "\n")
    responder_line = f'responder_cert = "{responder_path.name}"\n' if responder_path else ""
    database_section = f"[database]\ndsn = {json.dumps(database)}\n{database_extra}\n" if database else ""
    index_line = "" if database else 'index = "index.txt"\n'
    result.config_path.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\n{server}\n{database_section}'
        f"[responses]\n{responses}\n"
        f'[[issuers]]\nid = "{issuer_id}"\nca_cert = "ca.pem"\n{responder_line}'
        f'responder_key = "{key_path.name}"\n{index_line}{issuer_extra}\n'
    )
    return result


def request_der(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """A one-CertID OCSPRequest, as a client would build it."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def multi_request_der(certs: list[x509.Certificate], issuer: x509.Certificate, nonce: bytes | None = None) -> bytes:
    """An OCSPRequest with one CertID per certificate (cryptography cannot build these)."""
    items = []
    for cert in certs:
        single = ocsp.load_der_ocsp_request(request_der(cert, issuer))
        items.append(
            {
                "req_cert": {
                    "hash_algorithm": {"algorithm": "sha1"},
                    "issuer_name_hash": single.issuer_name_hash,
                    "issuer_key_hash": single.issuer_key_hash,
                    "serial_number": single.serial_number,
                }
            }
        )
    tbs: dict[str, object] = {"request_list": items}
    if nonce is not None:
        tbs["request_extensions"] = [{"extn_id": "nonce", "extn_value": nonce}]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())


def verify_response(der: bytes, test_pki: TestPki) -> ocsp.OCSPResponse:
    """Load a response and check its signature with the responder (or CA) key."""
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    signer = test_pki.responder.cert if test_pki.responder else test_pki.ca.cert
    public_key = signer.public_key()
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    if isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(response.signature, response.tbs_response_bytes)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        assert response.signature_hash_algorithm is not None
        public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
    else:
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert response.signature_hash_algorithm is not None
        public_key.verify(
            response.signature, response.tbs_response_bytes, padding.PKCS1v15(), response.signature_hash_algorithm
        )
    return response


async def status_of(client: TestClient[Any, Any], der: bytes, test_pki: TestPki) -> ocsp.OCSPCertStatus | bytes:
    """The certificate status an app answers a POST of ``der`` with, or the raw body of an
    unsuccessful OCSP response (tryLater and the like)."""
    resp = await client.post("/", data=der)
    body = await resp.read()
    assert resp.status == 200
    if len(body) < 10:
        return body
    return verify_response(body, test_pki).certificate_status


def outcome(http_status: int, body: bytes, test_pki: TestPki, expected: ocsp.OCSPCertStatus | None = None) -> str:
    """What one answer was, for tests that count them: "HTTP <n>" (not 200), "tryLater",
    another unsuccessful OCSP status's name, else (the signature checked) "right" or
    "wrong: <status>" against ``expected``, or "signed" without one."""
    if http_status != 200:
        return f"HTTP {http_status}"
    if body == TRY_LATER:
        return "tryLater"
    response = ocsp.load_der_ocsp_response(body)
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return response.response_status.name
    checked = verify_response(body, test_pki)
    if expected is None:
        return "signed"
    status = checked.certificate_status
    return "right" if status is expected else f"wrong: {status.name}"


def hold_after_fetch(source: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """Make ``source.fetch`` stop after reading a status until ``release`` is set; ``entered`` says it did.

    Only the fetches before ``release`` are held: the responder's next read goes through.
    """
    entered, release = asyncio.Event(), asyncio.Event()
    real_fetch = source.fetch

    async def held_fetch(*args: Any) -> Any:
        lookup = await real_fetch(*args)
        if not release.is_set():
            entered.set()
            await release.wait()
        return lookup

    source.fetch = held_fetch
    return entered, release


# -- raw HTTP/1.1, for what the aiohttp client would not send -------------------------------------


@dataclass
class Answer:
    version: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


async def read_answer(reader: asyncio.StreamReader, *, head_request: bool = False) -> Answer:
    """One HTTP/1.1 response (Content-Length framed; 304 and HEAD answers carry no body)."""
    status_line = await reader.readuntil(b"\r\n")
    version, status, _ = status_line.decode("latin-1").split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
    answer = Answer(version, int(status))
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        answer.headers[name.strip().lower()] = value.strip()
    if answer.status != 304 and not head_request:
        answer.body = await reader.readexactly(int(answer.headers.get("content-length", "0")))
    return answer


def post_bytes(der: bytes, *extra: str, path: str = "/") -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: ocsp.test", "Content-Type: application/ocsp-request",
            f"Content-Length: {len(der)}", *extra]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + der


# -- the CLI, as a subprocess ------------------------------------------------------------------


OCSPD = [sys.executable, "-m", "ocspd"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`ocspd *args` as a subprocess, with no OCSPD_ variables but ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OCSPD_")}
    full_env.update(env or {})
    return subprocess.run([*OCSPD, *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2 and one stderr line, no traceback, containing every fragment."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- PostgreSQL: statements and replicas -------------------------------------------------------


def query(dsn: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """One statement on its own autocommit connection; the rows it returns, if any."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> float:
    """Poll ``check`` until true; returns the seconds it took. No fixed sleeps."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        if loop.time() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.005)
    return loop.time() - start


async def start_replicas(
    ocspd_client: AppClient, test_pki: TestPki, n: int = 2, **kwargs: Any
) -> list[TestClient[Any, Any]]:
    """``n`` in-process replicas of one app, each once its LISTEN connection is up."""
    clients = [await ocspd_client(test_pki, **kwargs) for _ in range(n)]
    for client in clients:
        await asyncio.wait_for(client.app[LISTENER].ever_connected.wait(), 10)
    return clients


# -- signing and time, observed ----------------------------------------------------------------


T0 = 1_800_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingSigner(Signer):
    """The real signer, counting signatures and optionally failing or waiting."""

    def __init__(self, inner: Signer) -> None:
        self.__dict__.update(inner.__dict__)
        self.count = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    def sign(
        self,
        certids: Sequence[CertId],
        answers: Sequence[SignerAnswer],
        this_update: dt.datetime,
        next_update: dt.datetime,
        nonce: bytes | None = None,
        *,
        produced_at: dt.datetime,
    ) -> bytes:
        self.count += 1
        if self.fail:
            raise RuntimeError("injected signer failure")
        return super().sign(certids, answers, this_update, next_update, nonce, produced_at=produced_at)


def counting_signers(test_pki: TestPki) -> dict[str, CountingSigner]:
    """The signers of ``test_pki``'s config, each counting its signatures."""
    return {k: CountingSigner(v) for k, v in load_signers(test_pki.config()).items()}


# -- openssl ocsp, a client we did not write ---------------------------------------------------


async def openssl_ocsp(test_pki: TestPki, url: str, *names: str, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    """Ask ``url`` about the leaves ``names`` with `openssl ocsp`; its exit code and output."""
    # Options go before -cert: openssl reads the CertID digest option positionally.
    args = ["openssl", "ocsp", *extra, "-issuer", str(test_pki.ca_path), "-CAfile", str(test_pki.ca_path), "-url", url]
    for name in names:
        args += ["-cert", str(test_pki.leaf_paths[name])]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, out.decode()


def assert_verified(code: int, output: str, leaf: Path, status: str) -> None:
    """`openssl ocsp` verified the response and read ``status`` for ``leaf``, with no warning."""
    assert code == 0, output
    assert "Response verify OK" in output, output
    assert f"{leaf}: {status}" in output, output
    assert "WARNING" not in output, output  # e.g. "no nonce in response"


# -- revocation rules (tests/test_revocation_rules.py, tests/test_revocation_imports.py) -------


Status = ocsp.OCSPCertStatus
Reason = x509.ReasonFlags
ISSUER = "test-ca"
RULE_VIOLATION = "23R01"
HOLD_AT = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
LATER_AT = dt.datetime(2026, 4, 2, 8, 30, 0, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2031, 2, 3, 4, 5, 6, tzinfo=dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# - the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    status: str
    revoked_at: dt.datetime | None
    reason: str | None
    not_after: dt.datetime | None
    version: int

    @property
    def revocation(self) -> tuple[str, dt.datetime | None, str | None, int]:
        """What the rules protect (not_after is not part of it)."""
        return self.status, self.revoked_at, self.reason, self.version


async def sql(dsn: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """One statement on its own connection, off the event loop: the in-process replica keeps running
    (a blocked loop would leave its transactions open, and a TRUNCATE would wait on them for ever)."""
    return await asyncio.to_thread(query, dsn, statement, *params)


async def row(dsn: str, serial: int) -> Row | None:
    rows = await sql(
        dsn,
        "SELECT status, revoked_at, reason, not_after, version FROM ocspd_certificates"
        " WHERE issuer_id = %s AND serial = %s",
        ISSUER,
        f"{serial:x}",
    )
    return Row(*rows[0]) if rows else None


async def refused_by_database(dsn: str, serial: int | None, statement: str, *params: object) -> str:
    """Run ``statement``; it must be refused with SQLSTATE 23R01, naming the certificate. Returns the message."""
    with pytest.raises(psycopg2.IntegrityError) as info:
        await sql(dsn, statement, *params)
    message = str(info.value)
    assert info.value.pgcode == RULE_VIOLATION, (info.value.pgcode, message)
    if serial is not None:
        assert f"{serial:x}" in message.lower() and ISSUER in message, message
    return message


async def revoke_sql(
    dsn: str, serial: int, reason: str | None = None, at: dt.datetime | None = None, amend: bool = False
) -> int:
    rows = await sql(dsn, "SELECT ocspd_revoke(%s, %s, %s, %s, %s)", ISSUER, f"{serial:x}", reason, at, amend)
    return int(rows[0][0])


# - the CLI, as a subprocess (off the event loop, so the replica keeps running) -------------------


async def ocspd(test_pki: TestPki, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run, *args, "--config", str(test_pki.config_path), env=env)


def assert_ok(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stdout + result.stderr, (fragment, result.stdout, result.stderr)


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 1 and one stderr line containing every fragment."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def revoke_args(
    serial: int, reason: str | None = None, at: dt.datetime | None = None, amend: bool = False
) -> tuple[str, ...]:
    args = ["revoke", "--issuer", ISSUER, "--serial", f"{serial:X}"]
    if reason is not None:
        args += ["--reason", reason]
    if at is not None:
        args += ["--at", rfc3339(at)]
    if amend:
        args.append("--amend")
    return tuple(args)


def unhold_args(serial: int) -> tuple[str, ...]:
    return ("unhold", "--issuer", ISSUER, "--serial", f"{serial:X}")


@dataclass(frozen=True)
class Summary:
    """The final line of ``ocspd cert import``."""

    line: str
    total: int
    new: int
    kept: int  # every revocation the import kept against what the file said
    merged: int


def import_summary(stderr: str) -> Summary:
    lines = [line for line in stderr.splitlines() if re.search(r"imported \d+ certificates for issuer", line)]
    assert lines, f"no summary line in: {stderr!r}"
    line = lines[-1]

    def count(pattern: str) -> int:
        match = re.search(pattern, line)
        assert match, f"{pattern!r} not in the summary {line!r}"
        return int(match.group(1))

    count(r"(\d+) already revoked, kept")  # the spec's wording; other kept revocations may have their own count
    kept = sum(int(n) for n in re.findall(r"(\d+) [a-z ]+, kept", line))
    return Summary(
        line,
        count(r"imported (\d+) certificates"),
        count(r"(\d+) new"),
        kept,
        count(r"(\d+) duplicates? merged"),
    )


def index_file(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


# - the replica -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedAnswer:
    status: Status
    reason: Reason | None = None
    revoked_at: dt.datetime | None = None


GOOD = ServedAnswer(Status.GOOD)
UNKNOWN = ServedAnswer(Status.UNKNOWN)


def revoked(reason: Reason | None, at: dt.datetime) -> ServedAnswer:
    return ServedAnswer(Status.REVOKED, reason, at.replace(microsecond=0))


async def answer(
    client: TestClient[Any, Any], test_pki: TestPki, cert: x509.Certificate, *, live: bool = False
) -> ServedAnswer:
    """What the replica answers; ``live`` adds a nonce, so the response is signed from the status source."""
    der = request_der(cert, test_pki.ca.cert, nonce=os.urandom(16) if live else None)
    resp = await client.post("/", data=der)
    assert resp.status == 200
    response = verify_response(await resp.read(), test_pki)
    if response.certificate_status is Status.REVOKED:
        return ServedAnswer(Status.REVOKED, response.revocation_reason, response.revocation_time_utc)
    return ServedAnswer(response.certificate_status)


async def becomes(
    client: TestClient[Any, Any], test_pki: TestPki, cert: x509.Certificate, expected: ServedAnswer
) -> None:
    """A change reaches the replica (by NOTIFY): it is eventually served, cached and live."""
    seen: list[ServedAnswer] = []

    async def served() -> bool:
        seen.append(await answer(client, test_pki, cert))
        return seen[-1] == expected

    try:
        await eventually(served, what=f"served {expected}")
    except AssertionError:
        raise AssertionError(f"expected {expected}, last served {seen[-1]}") from None
    assert await answer(client, test_pki, cert, live=True) == expected


async def stays(
    client: TestClient[Any, Any], test_pki: TestPki, cert: x509.Certificate, expected: ServedAnswer
) -> None:
    """Nothing changed: signed live from the database, and from the cache, it is still ``expected``."""
    assert await answer(client, test_pki, cert, live=True) == expected
    assert await answer(client, test_pki, cert) == expected


async def replica(ocspd_client: AppClient, test_pki: TestPki) -> TestClient[Any, Any]:
    return (await start_replicas(ocspd_client, test_pki, n=1))[0]


def leaf(test_pki: TestPki, name: str) -> x509.Certificate:
    return test_pki.leaves[name].cert


# -- the README ---------------------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str, language: str, *, after: str = "") -> str:
    """The first ```language block after the line ``heading`` (and then after the text ``after``)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(after, text.index(heading + "\n"))
    match = re.compile(rf"^```{language}\n(.*?)^```", re.MULTILINE | re.DOTALL).search(text, start)
    assert match is not None, f"no ```{language} block after {heading!r}"
    return match.group(1)
