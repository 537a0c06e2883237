"""The fast HTTP/1.1 path (ocspd/web/fast.py), on raw sockets: it answers the
common requests as aiohttp would, keeps pipelined answers in order, hands
everything else to aiohttp, and closes idle connections."""

from __future__ import annotations

import asyncio
import base64
import gzip
import itertools
import logging
import random
import re
import zlib
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.x509 import ocsp
from prometheus_client.parser import text_string_to_metric_families

from ocspd.app import METRICS, RESPONDER
from ocspd.metrics import HANDOFF_REASONS
from ocspd.protocol import MALFORMED_REQUEST
from ocspd.web import fast as fast_path
from ocspd.web.admin import init_admin_app
from tests.conftest import OcspTestServer, Serve
from tests.helpers import Answer, TestPki, hold_after_fetch, post_bytes, read_answer, request_der, verify_response


async def exchange(port: int, data: bytes | list[bytes], answers: int, pause: float = 0.0) -> list[Answer]:
    """Send ``data`` (chunks ``pause`` s apart) on one connection and read ``answers`` responses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in [data] if isinstance(data, bytes) else data:
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return [await asyncio.wait_for(read_answer(reader), 10) for _ in range(answers)]
    finally:
        writer.close()


def get_bytes(der: bytes, *extra: str, version: str = "HTTP/1.1") -> bytes:
    path = "/" + quote(base64.b64encode(der).decode(), safe="")
    return ("\r\n".join([f"GET {path} {version}", "Host: ocsp.test", *extra]) + "\r\n\r\n").encode()


def status_of(answer: Answer, test_pki: TestPki) -> ocsp.OCSPCertStatus:
    assert answer.status == 200, answer
    return verify_response(answer.body, test_pki).certificate_status


# -- the same answers as aiohttp's --------------------------------------------------------------

# Headers that differ between two servers for reasons other than the front:
# the time of the request, the signature (and so its length), aiohttp's Server banner.
_VARYING = {"date", "server", "etag", "cache-control", "last-modified", "expires", "content-length"}


def _requests(good: bytes, revoked: bytes) -> dict[str, bytes]:
    """id -> request bytes, for the requests of the good and the revoked leaf."""
    return {
        "post good": post_bytes(good),
        "post revoked, lowercase names": post_bytes(revoked).replace(b"Content-Length", b"content-length"),
        "post garbage": post_bytes(b"\x30\x03\x02\x01\x01"),
        "get good": get_bytes(good),
        "get with a query": get_bytes(good).replace(b" HTTP/1.1", b"?x=1 HTTP/1.1", 1),
        "get bad base64": b"GET /%%%% HTTP/1.1\r\nHost: x\r\n\r\n",
        "get with Content-Length 0": get_bytes(good, "Content-Length: 0"),
        "get not modified": get_bytes(good, 'If-None-Match: "nope", *'),
        "get modified": get_bytes(good, 'If-None-Match: "nope"'),
        "head": get_bytes(good).replace(b"GET", b"HEAD", 1),
        "put": post_bytes(good).replace(b"POST", b"PUT", 1),
        "post below the prefix": post_bytes(good, path="/x"),
        "post chunked": (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(good):x}\r\n".encode()
            + good
            + b"\r\n0\r\n\r\n"
        ),
        "post too large": post_bytes(b"\x30" * 10001),
        "http/1.0 get": get_bytes(good, version="HTTP/1.0"),
        "http/1.0 post": post_bytes(good).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        "http/1.0 post, keep-alive": post_bytes(good, "Connection: keep-alive").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        "http/1.1 post, close": post_bytes(good, "Connection: close"),
        "http/1.1 without Host": post_bytes(good).replace(b"Host: ocsp.test\r\n", b""),
        "http/1.0 without Host": (
            post_bytes(good).replace(b"Host: ocsp.test\r\n", b"").replace(b"HTTP/1.1", b"HTTP/1.0", 1)
        ),
        "two Hosts": post_bytes(good, "Host: other.test"),
        "get with unusual target characters": b'GET /MA{}|\\^`"<>!$&()*,;=@[]~ HTTP/1.1\r\nHost: x\r\n\r\n',
        "header value with obs-text": post_bytes(good, "X-Note: caf\u00e9"),  # UTF-8 bytes above 0x7f
        "absolute-form target": get_bytes(good).replace(b"GET /", b"GET http://ocsp.test/", 1),
        "128 header fields": post_bytes(good, *(f"X-F{i}: v" for i in range(125))),  # 3 of its own
        "129 header fields": post_bytes(good, *(f"X-F{i}: v" for i in range(126))),
        "http/1.0 post, proxy-connection keep-alive": post_bytes(good, "Proxy-Connection: keep-alive").replace(
            b"HTTP/1.1", b"HTTP/1.0", 1
        ),
        "http/1.1 post, proxy-connection close": post_bytes(good, "Proxy-Connection: close"),
        "sec-websocket-key1": post_bytes(good, "Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5"),
    }


PARITY_CASES = list(_requests(b"\x30", b"\x30"))


@pytest.mark.parametrize("case", PARITY_CASES)
async def test_fast_path_answers_as_aiohttp_does(serve: Serve, test_pki: TestPki, case: str) -> None:
    good = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    revoked = request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert)
    raw = _requests(good, revoked)[case]
    fast = await serve(test_pki, fast_http=True)
    plain = await serve(test_pki, fast_http=False)
    got: list[Answer] = []
    for server in (fast, plain):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw)
        try:
            got.append(await asyncio.wait_for(read_answer(reader, head_request=raw.startswith(b"HEAD")), 10))
        finally:
            writer.close()
    ours, theirs = got
    assert_alike(ours, theirs, case, test_pki)


def assert_alike(ours: Answer, theirs: Answer, label: str, test_pki: TestPki) -> None:
    """The fast path's answer and aiohttp's to the same bytes say the same."""
    assert (ours.version, ours.status) == (theirs.version, theirs.status), label
    assert set(ours.headers) - _VARYING == set(theirs.headers) - _VARYING, label
    assert {k: v for k, v in ours.headers.items() if k not in _VARYING} == {
        k: v for k, v in theirs.headers.items() if k not in _VARYING
    }, label
    if ours.status == 200 and ours.body and ours.body != theirs.body:
        # Signed answers differ (ECDSA); what they say must not.
        assert status_of(ours, test_pki) == status_of(theirs, test_pki), label
    else:
        assert ours.body == theirs.body, label


# -- paths as clients send them, and request Content-Encoding (SPEC §2) ----------------------------


def _b64(der: bytes) -> str:
    return quote(base64.b64encode(der).decode(), safe="")


def _get_raw(target: str, version: str = "HTTP/1.1") -> bytes:
    return f"GET {target} {version}\r\nHost: ocsp.test\r\n\r\n".encode()


def _chunked_post(body: bytes, *extra: str) -> bytes:
    head = ["POST / HTTP/1.1", "Host: ocsp.test", "Content-Type: application/ocsp-request",
            "Transfer-Encoding: chunked", *extra]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def _edge_cases(good: bytes) -> dict[str, tuple[str, bytes, int, str | None]]:
    """id -> (path_prefix, request bytes, HTTP status, what a 200 says: "good", "malformed" or None)."""
    gz, zl = gzip.compress(good), zlib.compress(good)
    junk = b"\x30\x03\x02\x01\x01"  # neither gzip nor zlib
    twice = ("Accept: */*", "Accept: */*")  # a repeated field: off the fast path
    expect = ("Expect: 100-continue",)
    b64 = _b64(good)
    return {
        # POST at the prefix with and without its final "/" (openssl, GnuTLS, Go, pyhanko, strongSwan).
        "post /ocsp, prefix /ocsp": ("/ocsp", post_bytes(good, path="/ocsp"), 200, "good"),
        "post /ocsp/, prefix /ocsp": ("/ocsp", post_bytes(good, path="/ocsp/"), 200, "good"),
        "post /ocsp?x=1, prefix /ocsp": ("/ocsp", post_bytes(good, path="/ocsp?x=1"), 200, "good"),
        "post /ocsp, repeated field, prefix /ocsp": ("/ocsp", post_bytes(good, *twice, path="/ocsp"), 200, "good"),
        "post /ocs, prefix /ocsp": ("/ocsp", post_bytes(good, path="/ocs"), 404, None),
        # GET with slashes between the prefix and the base64 (Go, cfssl: AIA URL + "/" + base64).
        "get //b64": ("/", _get_raw("//" + b64), 200, "good"),
        "get ///b64": ("/", _get_raw("///" + b64), 200, "good"),
        "get //b64, http/1.0": ("/", _get_raw("//" + b64, "HTTP/1.0"), 200, "good"),
        "get /ocsp//b64, prefix /ocsp": ("/ocsp", _get_raw("/ocsp//" + b64), 200, "good"),
        "get /ocsp///b64, prefix /ocsp": ("/ocsp", _get_raw("/ocsp///" + b64), 200, "good"),
        "get // alone": ("/", _get_raw("//"), 200, "malformed"),
        # RFC 9112 §3.2.2: a server MUST accept the absolute form (proxies, some stapling fetchers).
        "get absolute-form": ("/", _get_raw("http://ocsp.test/" + b64), 200, "good"),
        "get absolute-form, port": ("/", _get_raw("http://ocsp.test:8080/" + b64), 200, "good"),
        "get absolute-form, prefix /ocsp": ("/ocsp", _get_raw("http://ocsp.test/ocsp/" + b64), 200, "good"),
        "post absolute-form, prefix /ocsp": ("/ocsp", post_bytes(good, path="http://ocsp.test/ocsp"), 200, "good"),
        "get /ocsp alone, prefix /ocsp": ("/ocsp", _get_raw("/ocsp"), 200, "malformed"),
        "get /other/b64, prefix /ocsp": ("/ocsp", _get_raw("/other/" + b64), 404, None),
        # A request body with a Content-Encoding: 415 on both fronts, whatever the body (SPEC §2).
        "post gzip": ("/", post_bytes(gz, "Content-Encoding: gzip"), 415, None),
        "post deflate": ("/", post_bytes(zl, "Content-Encoding: deflate"), 415, None),
        "post br": ("/", post_bytes(good, "Content-Encoding: br"), 415, None),
        "post GZIP, not gzip": ("/", post_bytes(junk, "Content-Encoding: GZIP"), 415, None),
        "post identity, gzip": ("/", post_bytes(gz, "Content-Encoding: identity, gzip"), 415, None),
        "post gzip, repeated field": ("/", post_bytes(gz, "Content-Encoding: gzip", *twice), 415, None),
        "post gzip, not gzip, repeated field": ("/", post_bytes(junk, "Content-Encoding: gzip", *twice), 415, None),
        "post deflate, not zlib, expect": ("/", post_bytes(junk, "Content-Encoding: deflate", *expect), 415, None),
        "post gzip, expect": ("/", post_bytes(gz, "Content-Encoding: gzip", *expect), 415, None),
        "post gzip, chunked": ("/", _chunked_post(gz, "Content-Encoding: gzip"), 415, None),
        "post gzip, not gzip, chunked": ("/", _chunked_post(junk, "Content-Encoding: gzip"), 415, None),
        "get gzip": ("/", get_bytes(good, "Content-Encoding: gzip"), 415, None),
        "post identity": ("/", post_bytes(good, "Content-Encoding: identity"), 200, "good"),
        "post identity, chunked": ("/", _chunked_post(good, "Content-Encoding: identity"), 200, "good"),
    }


EDGE_CASES = list(_edge_cases(b"\x30"))


async def read_final_answer(reader: asyncio.StreamReader) -> Answer:
    """The final answer, past any interim (1xx) one."""
    while (answer := await read_answer(reader)).status < 200:
        pass
    return answer


@pytest.mark.parametrize("case", EDGE_CASES)
async def test_paths_and_content_encodings_are_answered_alike_by_both_fronts(
    serve: Serve, test_pki: TestPki, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    good = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    prefix, raw, want_status, says = _edge_cases(good)[case]
    env = {"OCSPD_SERVER_PATH_PREFIX": prefix}
    fast = await serve(test_pki, fast_http=True, env=env)
    plain = await serve(test_pki, fast_http=False, env=env)
    got: list[Answer] = []
    for server in (fast, plain):
        # Twice: a miss (the full path), then a hit (the hit path), on the same connection
        # unless the first answer closes it (HTTP/1.0).
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            for attempt in range(2):
                if attempt and got[-1].version == "HTTP/1.0" and got[-1].headers.get("connection") != "keep-alive":
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(raw)
                got.append(await asyncio.wait_for(read_final_answer(reader), 10))
        finally:
            writer.close()
    for answer in got:
        assert answer.status == want_status, (case, answer)
        if says == "good":
            assert status_of(answer, test_pki) is ocsp.OCSPCertStatus.GOOD, case
        elif says == "malformed":
            assert answer.body == MALFORMED_REQUEST, case
    assert_alike(got[0], got[2], case, test_pki)
    assert_alike(got[1], got[3], case, test_pki)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], case


async def test_fast_path_is_what_answers_unless_turned_off(serve: Serve, test_pki: TestPki) -> None:
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    fast = await serve(test_pki)
    plain = await serve(test_pki, fast_http=False)
    # aiohttp names itself in a Server header; the fast path sends none.
    assert all("server" not in a.headers for a in await exchange(fast.port, post_bytes(der) * 2, 2))
    assert all("aiohttp" in a.headers["server"] for a in await exchange(plain.port, post_bytes(der) * 2, 2))
    # A request off the fast path hands the connection to aiohttp, which then answers the rest.
    answers = await exchange(fast.port, [post_bytes(der, path="/x"), post_bytes(der)], 2, pause=0.05)
    assert [a.status for a in answers] == [405, 200]
    assert all("aiohttp" in a.headers["server"] for a in answers)


# -- connections ---------------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(serve: Serve, test_pki: TestPki) -> None:
    server = await serve(test_pki)
    ders = {name: request_der(test_pki.leaves[name].cert, test_pki.ca.cert) for name in ("good", "revoked", "unissued")}
    expected = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                "unissued": ocsp.OCSPCertStatus.UNKNOWN}  # fmt: skip
    await exchange(server.port, post_bytes(ders["good"]) + get_bytes(ders["good"]), 2)  # memory hits from now on
    # Hits (answered at once) after misses and errors (answered in a task), all in one write.
    order = ["revoked", "good", "garbage", "good", "unissued", "revoked", "garbage", "unissued", "good"]
    data = b"".join(
        post_bytes(b"\x30\x00") if name == "garbage" else
        (get_bytes(ders[name]) if i % 2 else post_bytes(ders[name]))
        for i, name in enumerate(order)
    )  # fmt: skip
    answers = await exchange(server.port, data, len(order))
    for name, answer in zip(order, answers, strict=True):
        if name == "garbage":
            assert answer.body == MALFORMED_REQUEST
        else:
            assert status_of(answer, test_pki) is expected[name], name


async def test_a_request_split_across_reads_is_answered(serve: Serve, test_pki: TestPki) -> None:
    server = await serve(test_pki)
    der = request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert)
    for raw in (post_bytes(der), get_bytes(der)):
        cuts = [0, 3, len(raw) // 3, len(raw) - len(der) - 2, len(raw) - 1, len(raw)]
        chunks = [raw[a:b] for a, b in itertools.pairwise(cuts)]
        (answer,) = await exchange(server.port, chunks, 1, pause=0.02)
        assert status_of(answer, test_pki) is ocsp.OCSPCertStatus.REVOKED


@pytest.mark.parametrize("trickled", ["head", "body"])
async def test_a_request_trickling_in_over_many_reads_goes_to_aiohttp_and_is_answered(
    serve: Serve, test_pki: TestPki, trickled: str
) -> None:
    """Each read of an incomplete request looks at it from its start: past
    MAX_PARTIAL_READS reads it is aiohttp's (whose parser keeps its place), so a
    byte-a-read sender costs linear time, and still gets its answer. A request
    in a few reads stays on the fast path (its answers carry no Server field)."""
    server = await serve(test_pki)
    der = request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert)
    raw = post_bytes(der, "X-Pad: " + "p" * 60)
    head_end = raw.index(b"\r\n\r\n") + 4
    split = 0 if trickled == "head" else head_end
    steps = fast_path.MAX_PARTIAL_READS + 4
    piece = max(1, (len(raw) - split) // steps)
    cuts = [0, *range(split or 1, len(raw), piece), len(raw)]
    (slow,) = await exchange(server.port, [raw[a:b] for a, b in itertools.pairwise(cuts)], 1, pause=0.005)
    assert status_of(slow, test_pki) is ocsp.OCSPCertStatus.REVOKED
    assert "server" in slow.headers  # answered by aiohttp
    few = [raw[: head_end - 5], raw[head_end - 5 : head_end + 10], raw[head_end + 10 :]]
    (quick,) = await exchange(server.port, few, 1, pause=0.005)
    assert status_of(quick, test_pki) is ocsp.OCSPCertStatus.REVOKED
    assert "server" not in quick.headers  # the fast path's


@pytest.mark.parametrize("fast_http", [True, False], ids=["fast path", "aiohttp"])
async def test_a_head_not_whole_within_the_header_timeout_is_closed_and_an_idle_connection_is_not(
    serve: Serve, test_pki: TestPki, fast_http: bool
) -> None:
    """[server] header_timeout (here 0.5 s) bounds a head from its first byte, on both
    fronts, while an idle keep-alive connection waits for keepalive_timeout (30 s)."""
    server = await serve(test_pki, fast_http=fast_http, env={"OCSPD_SERVER_HEADER_TIMEOUT": "500ms"})
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    loop = asyncio.get_running_loop()
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(post_bytes(der))  # a first request, answered: then the next head trickles in
        assert status_of(await asyncio.wait_for(read_answer(reader), 10), test_pki) is ocsp.OCSPCertStatus.GOOD
        started = loop.time()
        closed_after = None
        for byte in post_bytes(der)[:60]:
            writer.write(bytes([byte]))
            try:
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    closed_after = loop.time() - started
                    break
            except TimeoutError:
                continue
        assert closed_after is not None, "the trickling head was never closed"
        assert 0.4 <= closed_after <= 1.8, closed_after
        with pytest.raises(TimeoutError):  # the idle one is still open
            await asyncio.wait_for(idle_reader.read(1), 0.2)
    finally:
        writer.close()
        idle_writer.close()


async def test_connection_close_and_http10_are_honoured(serve: Serve, test_pki: TestPki) -> None:
    server = await serve(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    http10 = post_bytes(der).replace(b"HTTP/1.1", b"HTTP/1.0", 1)  # as OpenSSL-based clients (stapling) send
    for raw in (post_bytes(der, "Connection: close"), get_bytes(der, "Connection: close"), http10):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            # A second request after "close" is not answered.
            writer.write(raw + post_bytes(der))
            answer = await asyncio.wait_for(read_answer(reader), 10)
            assert answer.headers.get("connection") == ("close" if answer.version == "HTTP/1.1" else None)
            assert "server" not in answer.headers  # the fast path answered
            assert status_of(answer, test_pki) is ocsp.OCSPCertStatus.GOOD
            assert await asyncio.wait_for(reader.read(), 10) == b""
        finally:
            writer.close()


async def test_idle_and_stalled_connections_are_closed_after_the_keepalive_timeout(
    serve: Serve, test_pki: TestPki
) -> None:
    server = await serve(test_pki, keepalive_timeout=0.3)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    for first, then in ((post_bytes(der), b""), (b"", post_bytes(der)[:20])):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            if first:
                writer.write(first)
                assert (await asyncio.wait_for(read_answer(reader), 10)).status == 200
            writer.write(then)  # nothing, or the start of a request that never ends
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            assert loop.time() - started < 5
        finally:
            writer.close()


async def test_half_closed_client_still_gets_its_answers(serve: Serve, test_pki: TestPki) -> None:
    server = await serve(test_pki)
    ders = [request_der(test_pki.leaves[name].cert, test_pki.ca.cert) for name in ("unissued", "good")]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        # Two requests, misses both, then the start of a third that the EOF cuts short.
        writer.write(b"".join(post_bytes(der) for der in ders) + post_bytes(ders[0])[:30])
        writer.write_eof()
        statuses = [status_of(await asyncio.wait_for(read_answer(reader), 10), test_pki) for _ in ders]
        assert statuses == [ocsp.OCSPCertStatus.UNKNOWN, ocsp.OCSPCertStatus.GOOD]
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n\x30\x03\x02\x01\x01",
        b"POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n\x30\x03\x02\x01\x01",
        b"POST / HTTP/1.1\r\nX: a\r\n folded\r\nContent-Length: 5\r\n\r\n\x30\x03\x02\x01\x01",
        b"POST / HTTP/1.1\r\nX: a\x00b\r\nContent-Length: 5\r\n\r\n\x30\x03\x02\x01\x01",
        b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n\x30\x03\x02\x01\x01",
        b"POST  /  HTTP/1.1\r\nContent-Length: 5\r\n\r\n\x30\x03\x02\x01\x01",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
        b"GET /" + b"A" * 20000 + b" HTTP/1.1\r\n\r\n",
        b"BREW / HTCPCP/1.0\r\n\r\n",
        b"Host: x\r\n\r\n",
    ],
    ids=["two lengths", "space before colon", "obs-fold", "NUL", "negative length", "bad length",
         "extra spaces", "non-ASCII target", "huge target", "other protocol", "no request line"],
)  # fmt: skip
async def test_odd_requests_get_an_http_error_and_the_server_goes_on(
    serve: Serve, test_pki: TestPki, raw: bytes
) -> None:
    server = await serve(test_pki)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
    # aiohttp's answer: a 4xx (or a well-formed OCSP error); never a 5xx.
    assert re.match(rb"HTTP/1\.[01] (4\d\d|200) ", head), head[:100]
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    (answer,) = await exchange(server.port, post_bytes(der), 1)
    assert status_of(answer, test_pki) is ocsp.OCSPCertStatus.GOOD


# -- flow control ----------------------------------------------------------------------------------


class FakeTransport:
    """Records what the protocol asks of its transport."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False
        self.ended = ""

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True
        self.ended = "close"  # after what is written has gone out

    def abort(self) -> None:
        self.closed = True
        self.ended = "abort"  # at once, dropping what is not sent yet

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # a hand-over to aiohttp

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def fake_connection(server: OcspTestServer) -> tuple[fast_path.FastServer, fast_path.FastProtocol, FakeTransport]:
    """A connection of ``server``'s fast path over a FakeTransport."""
    fast = server.runner.server
    assert isinstance(fast, fast_path.FastServer)
    protocol = fast()
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return fast, protocol, transport


async def test_a_client_that_does_not_read_is_not_read_either(serve: Serve, test_pki: TestPki) -> None:
    server = await serve(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    (warm,) = await exchange(server.port, post_bytes(der), 1)  # now a memory hit
    _, protocol, transport = fake_connection(server)
    try:
        protocol.pause_writing()  # the socket's send buffer is full
        request = post_bytes(der)
        sent = 0
        while transport.reading and sent < 10 * fast_path.MAX_BUFFERED:
            protocol.data_received(request)
            sent += len(request)
        assert not transport.reading and not transport.written  # stopped reading, answered nothing
        assert sent <= fast_path.MAX_BUFFERED + len(request)
        assert protocol.eof_received() is True  # the client is done sending; answers are still owed
        assert not transport.closed
        protocol.resume_writing()  # the client reads again: everything is answered, in order, then closed
        for _ in range(sent // len(request)):  # a share of them per loop turn
            if transport.closed:
                break
            await asyncio.sleep(0)
        answers = b"".join(transport.written)
        assert answers.count(b"HTTP/1.1 200 OK") == sent // len(request)
        assert answers.count(warm.body) == sent // len(request)
        assert transport.closed
    finally:
        protocol.connection_lost(None)


async def test_stopping_lets_the_answer_being_produced_finish(serve: Serve, test_pki: TestPki) -> None:
    server = await serve(test_pki)
    der = request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        idle_writer.write(get_bytes(request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)))
        assert (await asyncio.wait_for(read_answer(idle_reader), 10)).status == 200  # a connection, served
        entered, release = hold_after_fetch(server.app[RESPONDER].issuers["test-ca"].source)
        writer.write(post_bytes(der))
        await asyncio.wait_for(entered.wait(), 10)  # the miss is being answered
        stopping = asyncio.create_task(server.close())
        # An idle connection is closed at once; the busy one waits for its answer.
        assert await asyncio.wait_for(idle_reader.read(), 10) == b""
        assert not stopping.done()
        release.set()
        answer = await asyncio.wait_for(read_answer(reader), 10)
        assert status_of(answer, test_pki) is ocsp.OCSPCertStatus.REVOKED
        assert await asyncio.wait_for(reader.read(), 10) == b""
        await asyncio.wait_for(stopping, 10)
    finally:
        writer.close()
        idle_writer.close()


async def test_stopping_closes_connections_without_dropping_what_is_written(serve: Serve, test_pki: TestPki) -> None:
    server = await serve(test_pki)
    fast, protocol, transport = fake_connection(server)
    try:
        await fast.shutdown(1.0)
        assert transport.ended == "close"
    finally:
        protocol.connection_lost(None)


# -- fairness ----------------------------------------------------------------------------------------


async def _pipeline(port: int, data: bytes, answers: int) -> list[Answer]:
    """Write ``data`` on one connection while reading ``answers`` responses (so neither side blocks)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        reading = asyncio.create_task(_read_answers(reader, answers))
        writer.write(data)
        await asyncio.wait_for(writer.drain(), 30)
        return await asyncio.wait_for(reading, 30)
    finally:
        writer.close()


async def _read_answers(reader: asyncio.StreamReader, n: int) -> list[Answer]:
    return [await read_answer(reader) for _ in range(n)]


async def test_a_long_pipeline_is_answered_in_order_across_turns_and_handed_over_midway(
    serve: Serve, test_pki: TestPki
) -> None:
    server = await serve(test_pki)
    ders = {name: request_der(test_pki.leaves[name].cert, test_pki.ca.cert) for name in ("good", "revoked")}
    warm = await exchange(server.port, b"".join(post_bytes(der) for der in ders.values()), 2)
    bodies = {name: answer.body for name, answer in zip(ders, warm, strict=True)}  # memory hits from now on
    rng = random.Random(11)
    names = [rng.choice(("good", "revoked")) for _ in range(5000)]
    requests = [get_bytes(ders[name]) if rng.random() < 0.5 else post_bytes(ders[name]) for name in names]
    # At 3000, a request the fast path hands over (a repeated field): aiohttp answers it and the rest.
    handed_over = 3000
    names.insert(handed_over, "good")
    requests.insert(handed_over, post_bytes(ders["good"], "X-Twice: a", "X-Twice: b"))
    answers = await _pipeline(server.port, b"".join(requests), len(requests))
    assert [a.body for a in answers] == [bodies[name] for name in names]
    assert all(a.status == 200 for a in answers)
    servers = ["server" in a.headers for a in answers]
    assert servers == [False] * handed_over + [True] * (len(answers) - handed_over)


async def test_a_pipeline_is_answered_a_bounded_share_per_loop_turn(serve: Serve, test_pki: TestPki) -> None:
    server = await serve(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    (warm,) = await exchange(server.port, get_bytes(der), 1)  # a memory hit from now on
    _, protocol, transport = fake_connection(server)
    loop = asyncio.get_running_loop()
    total = 5000
    seen: list[int] = []  # answers written so far, at each turn of the loop

    def tick() -> None:  # a callback of another connection's: it runs once a turn
        seen.append(len(transport.written))
        if len(transport.written) < total:
            loop.call_soon(tick)

    try:
        loop.call_soon(tick)
        protocol.data_received(get_bytes(der) * total)  # one read holding 5000 requests
        assert len(transport.written) == fast_path.MAX_ANSWERS_PER_TURN
        assert not transport.reading  # the rest first, then more from the socket
        for _ in range(2 * total):
            if len(transport.written) == total:
                break
            await asyncio.sleep(0)
        assert len(transport.written) == total
        shares = [b - a for a, b in itertools.pairwise([0, *seen])]
        assert max(shares) <= fast_path.MAX_ANSWERS_PER_TURN, max(shares)
        assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(warm.body) for w in transport.written)
        assert transport.reading and not transport.closed  # all answered: reading again
    finally:
        protocol.connection_lost(None)


async def test_a_hand_over_in_a_later_turn_reads_the_socket_again(serve: Serve, test_pki: TestPki) -> None:
    server = await serve(test_pki)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    (warm,) = await exchange(server.port, get_bytes(der), 1)  # a memory hit from now on
    _, protocol, transport = fake_connection(server)
    try:
        # Hits for two turns, then a request aiohttp must answer (a repeated field): handed over in the third.
        protocol.data_received(get_bytes(der) * (2 * fast_path.MAX_ANSWERS_PER_TURN) + get_bytes(der, "X: a", "X: b"))
        assert not transport.reading
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(transport.written) == 2 * fast_path.MAX_ANSWERS_PER_TURN
        assert getattr(transport, "protocol", protocol) is not protocol, "not handed over"
        # aiohttp's now, and the socket is read again (aiohttp's protocol pauses it only when it wants to).
        assert transport.reading
        for _ in range(20):
            if len(transport.written) > 2 * fast_path.MAX_ANSWERS_PER_TURN:
                break
            await asyncio.sleep(0.01)
        answer = b"".join(transport.written[2 * fast_path.MAX_ANSWERS_PER_TURN :])
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Server: " in answer and answer.endswith(warm.body)
    finally:
        getattr(transport, "protocol", protocol).connection_lost(None)


async def test_a_client_that_never_reads_meets_backpressure_not_a_growing_buffer(
    serve: Serve, test_pki: TestPki
) -> None:
    server = await serve(test_pki)
    fast = server.runner.server
    assert isinstance(fast, fast_path.FastServer)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    (warm,) = await exchange(server.port, get_bytes(der), 1)  # a memory hit from now on
    one_answer = len(warm.body) + 400  # an answer's head is well under 400 bytes
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    loop = asyncio.get_running_loop()
    try:
        local = writer.get_extra_info("sockname")
        total = 20000  # ~20 MB of answers: far more than the kernel's socket buffers hold
        writer.write(get_bytes(der) * total)
        sending = asyncio.create_task(writer.drain())
        conn = next(c for c in list(fast.fast) if c._transport and c._transport.get_extra_info("peername") == local)
        largest = 0
        deadline = loop.time() + 10
        # The client reads nothing: the server's buffer must stop at its high-water mark (plus a turn's answers).
        while not (conn._write_paused and conn._read_paused) and loop.time() < deadline:
            largest = max(largest, conn._transport.get_write_buffer_size() if conn._transport else 0)
            await asyncio.sleep(0.001)
        assert conn._write_paused and conn._read_paused, "the server never stopped for the client"
        for _ in range(50):  # and it stays stopped
            assert conn._transport is not None
            largest = max(largest, conn._transport.get_write_buffer_size())
            await asyncio.sleep(0.005)
        assert largest <= 65536 + fast_path.MAX_ANSWERS_PER_TURN * one_answer, largest
        assert conn._read_paused
        # The client reads at last: every answer arrives, in full.
        answers = await asyncio.wait_for(_read_answers(reader, total), 60)
        await asyncio.wait_for(sending, 10)
        assert [a.body for a in answers] == [warm.body] * total
    finally:
        writer.close()


# -- hand-overs, counted by reason ---------------------------------------------------------------


async def test_hand_overs_are_counted_by_reason_on_metrics(
    serve: Serve, test_pki: TestPki, aiohttp_client: Any
) -> None:
    server = await serve(test_pki, fast_http=True)
    good = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    chunked = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(good):x}\r\n".encode()
        + good
        + b"\r\n0\r\n\r\n"
    )
    sent = [
        (chunked, 1),  # hand_off_field
        (post_bytes(good, "Expect: 100-continue"), 2),  # hand_off_field: 100 Continue, then the answer
        (post_bytes(good).replace(b"Host: ocsp.test\r\n", b""), 1),  # no_host
        (post_bytes(good, "Host: other.test"), 1),  # repeated_field
        (post_bytes(good).replace(b"POST", b"PUT", 1), 1),  # method
        (get_bytes(good, version="HTTP/1.0").replace(b"Host: ocsp.test\r\n", b""), 1),  # answered here
    ]
    for raw, answers in sent:
        await exchange(server.port, raw, answers)
    admin = await aiohttp_client(init_admin_app(server.app[METRICS].exposition))
    text = await (await admin.get("/metrics")).text()
    counts = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "ocspd_http_handoffs"
        for sample in family.samples
        if sample.name == "ocspd_http_handoffs_total"
    }
    expected = dict.fromkeys(HANDOFF_REASONS, 0.0) | {
        "hand_off_field": 2.0,
        "no_host": 1.0,
        "repeated_field": 1.0,
        "method": 1.0,
    }
    assert counts == expected
