"""The fast path's head reader (ocspd/web/head.py): bytes in, a decision out.

One table, one test id per rule: what is answered on the fast path (a
``Head``), what is handed to aiohttp and why (a ``HandOff`` reason), and
what is read on (``INCOMPLETE``). The prefix is "/ocsp/" and the largest
POST body 100 bytes throughout.
"""

from __future__ import annotations

import pytest

from ocspd.metrics import HANDOFF_REASONS
from ocspd.web.head import INCOMPLETE, MAX_FIELDS, MAX_HEAD, Decision, Framing, HandOff, Head, read_request

PREFIX = b"/ocsp/"
MAX_BODY = 100
BODY = b"\x30\x03\x02\x01\x01"

KEEP_ALIVE_11 = Framing("HTTP/1.1", "", False)
CLOSE_11 = Framing("HTTP/1.1", "Connection: close\r\n", True)
KEEP_ALIVE_10 = Framing("HTTP/1.0", "Connection: keep-alive\r\n", False)
CLOSE_10 = Framing("HTTP/1.0", "", True)


def request(line: str = "POST /ocsp/ HTTP/1.1", *fields: str, body: bytes = b"") -> bytes:
    return ("".join(f"{part}\r\n" for part in (line, *fields)) + "\r\n").encode("latin-1") + body


def post(*fields: str, line: str = "POST /ocsp/ HTTP/1.1", body: bytes = BODY) -> bytes:
    return request(line, "Host: ocsp.test", f"Content-Length: {len(body)}", *fields, body=body)


def get(target: str = "/ocsp/MEow", *fields: str, version: str = "HTTP/1.1") -> bytes:
    return request(f"GET {target} {version}", "Host: ocsp.test", *fields)


def post_head(raw: bytes, framing: Framing = KEEP_ALIVE_11, target: bytes = PREFIX) -> Head:
    return Head(True, target, raw.index(b"\r\n\r\n") + 4, len(raw), framing, None)


def get_head(
    raw: bytes, target: bytes = b"MEow", framing: Framing = KEEP_ALIVE_11, inm: str | None = None,
    ims: str | None = None,
) -> Head:  # fmt: skip
    return Head(False, target, len(raw), len(raw), framing, (inm, ims))


def case(rule: str, raw: bytes, expected: Decision | None = None) -> object:
    """A row: ``expected`` None means the Head that ``raw`` (a well-formed request) is."""
    return pytest.param(raw, expected, id=rule)


ANSWERED = [
    case("answer: POST at the prefix", post(), post_head(post())),
    case(
        "answer: POST at the prefix without its final slash",
        p := post(line="POST /ocsp HTTP/1.1"),
        post_head(p, target=b"/ocsp"),
    ),
    case("answer: POST with an empty body", p := post(body=b""), post_head(p)),
    case("answer: POST with the largest body", p := post(body=b"x" * MAX_BODY), post_head(p)),
    case("answer: field names in any case", p := post().replace(b"Content-Length", b"cONTENT-lENGTH"), post_head(p)),
    case("answer: blanks around a value", p := post().replace(b"Length: 5", b"Length: \t5 \t"), post_head(p)),
    case("answer: a field value with obs-text", p := post("X-Note: caf\xe9"), post_head(p)),
    case("answer: GET below the prefix", g := get(), get_head(g)),
    case("answer: GET keeps the query in its target", g := get("/ocsp/MEow?x=1"), get_head(g, b"MEow?x=1")),
    case("answer: GET with Content-Length 0", g := get("/ocsp/MEow", "Content-Length: 0"), get_head(g)),
    case(
        "answer: GET carries its conditional fields",
        g := get("/ocsp/MEow", 'If-None-Match: "e1"', "If-Modified-Since: Tue, 01 Dec 2026 00:00:00 GMT"),
        get_head(g, inm='"e1"', ims="Tue, 01 Dec 2026 00:00:00 GMT"),
    ),
    case("answer: HTTP/1.1 Connection close", p := post("Connection: close"), post_head(p, CLOSE_11)),
    case("answer: HTTP/1.1 Connection keep-alive", p := post("Connection: Keep-Alive"), post_head(p)),
    case(
        "answer: HTTP/1.0 without Host closes after the answer",
        g := request("GET /ocsp/MEow HTTP/1.0"),
        get_head(g, framing=CLOSE_10),
    ),
    case(
        "answer: HTTP/1.0 Connection keep-alive",
        g := request("GET /ocsp/MEow HTTP/1.0", "Connection: keep-alive"),
        get_head(g, framing=KEEP_ALIVE_10),
    ),
    case(
        "answer: as many fields as aiohttp takes",
        p := post(*(f"X-F{i}: v" for i in range(MAX_FIELDS - 2))),
        post_head(p),
    ),
]

HANDED_OVER = [
    case("request_line: not three parts", get("/ocsp/MEow HTTP/1.1 extra", version="x"), HandOff.REQUEST_LINE),
    case("request_line: two spaces", request("GET  /ocsp/ HTTP/1.1", "Host: a"), HandOff.REQUEST_LINE),
    case("method: neither GET nor POST", post(line="PUT /ocsp/ HTTP/1.1"), HandOff.METHOD),
    case("method: HEAD", request("HEAD /ocsp/MEow HTTP/1.1", "Host: a"), HandOff.METHOD),
    case("method: is case-sensitive", post(line="post /ocsp/ HTTP/1.1"), HandOff.METHOD),
    case("version: HTTP/2.0", get(version="HTTP/2.0"), HandOff.VERSION),
    case("version: HTTP/1 without a minor version", get(version="HTTP/1"), HandOff.VERSION),
    case("target: outside the prefix", get("/other/MEow"), HandOff.TARGET),
    case("target: a POST below the prefix", post(line="POST /ocsp/x HTTP/1.1"), HandOff.TARGET),
    case("target: a fragment", get("/ocsp/ME#ow"), HandOff.TARGET),
    case("target: absolute-form", get("http://ocsp.test/ocsp/MEow"), HandOff.TARGET),
    case("field_syntax: obs-fold", post("X-Note: a", " folded"), HandOff.FIELD_SYNTAX),
    case("field_syntax: a space before the colon", post("X-Note : a"), HandOff.FIELD_SYNTAX),
    case("field_syntax: a bare LF in a value", post("X-Note: a\nb"), HandOff.FIELD_SYNTAX),
    case("field_syntax: a control character", post("X-Note: a\x01"), HandOff.FIELD_SYNTAX),
    case("repeated_field: Host twice", post("Host: other.test"), HandOff.REPEATED_FIELD),
    case("repeated_field: names compared in any case", post("x-a: 1", "X-A: 2"), HandOff.REPEATED_FIELD),
    case(
        "too_many_fields: one more than aiohttp takes",
        post(*(f"X-F{i}: v" for i in range(MAX_FIELDS - 1))),
        HandOff.TOO_MANY_FIELDS,
    ),
    case("no_host: HTTP/1.1 without Host", request("GET /ocsp/MEow HTTP/1.1"), HandOff.NO_HOST),
    case(
        "hand_off_field: Transfer-Encoding (chunked POST)",
        request("POST /ocsp/ HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", body=b"5\r\nabcde\r\n0\r\n\r\n"),
        HandOff.HAND_OFF_FIELD,
    ),
    case("hand_off_field: Expect", post("Expect: 100-continue"), HandOff.HAND_OFF_FIELD),
    case("hand_off_field: Upgrade", get("/ocsp/MEow", "Upgrade: h2c"), HandOff.HAND_OFF_FIELD),
    case("hand_off_field: Content-Encoding, even identity", post("Content-Encoding: identity"), HandOff.HAND_OFF_FIELD),
    case("hand_off_field: Proxy-Connection", post("Proxy-Connection: keep-alive"), HandOff.HAND_OFF_FIELD),
    case("hand_off_field: Sec-WebSocket-Key1", get("/ocsp/MEow", "Sec-WebSocket-Key1: 4 @1"), HandOff.HAND_OFF_FIELD),
    case("content_length: not a number", post().replace(b"Length: 5", b"Length: 5x"), HandOff.CONTENT_LENGTH),
    case("content_length: signed", post().replace(b"Length: 5", b"Length: +5"), HandOff.CONTENT_LENGTH),
    case("content_length: ten digits", post().replace(b"Length: 5", b"Length: 0000000005"), HandOff.CONTENT_LENGTH),
    case("content_length: none on a POST", request("POST /ocsp/ HTTP/1.1", "Host: a"), HandOff.CONTENT_LENGTH),
    case("content_length: a body on a GET", get("/ocsp/MEow", "Content-Length: 1") + b"x", HandOff.CONTENT_LENGTH),
    case("body_too_large: over max_request_bytes", post(body=b"x" * (MAX_BODY + 1)), HandOff.BODY_TOO_LARGE),
    case("connection: neither close nor keep-alive", post("Connection: upgrade"), HandOff.CONNECTION),
    case("head_too_large: no end of the head within MAX_HEAD", b"GET /ocsp/" + b"A" * MAX_HEAD, HandOff.HEAD_TOO_LARGE),
]

INCOMPLETE_BUT_HOPELESS = [
    case("method: as soon as it cannot become GET or POST", b"GX", HandOff.METHOD),
    case("method: a space after a partial method", b"GE /", HandOff.METHOD),
    case("target: as soon as a character is odd", b"GET /ocsp/a#", HandOff.TARGET),
    case("target: whole but outside the prefix", b"GET /other HTTP/1.1\r\n", HandOff.TARGET),
    case("version: as soon as it cannot become HTTP/1.x", b"GET /ocsp/a HTTP/2", HandOff.VERSION),
    case("version: a CR after a partial version", b"GET /ocsp/a HTTP/1.\r", HandOff.VERSION),
    case("request_line: a space after the version", b"GET /ocsp/a HTTP/1.1 ", HandOff.REQUEST_LINE),
    case("field_syntax: a partial field line", b"GET /ocsp/a HTTP/1.1\r\nX-A b", HandOff.FIELD_SYNTAX),
    case(
        "repeated_field: the field still arriving",
        b"GET /ocsp/a HTTP/1.1\r\nHost: a\r\nhost: b",
        HandOff.REPEATED_FIELD,
    ),
    case(
        "hand_off_field: at the end of its line",
        b"POST /ocsp/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
        HandOff.HAND_OFF_FIELD,
    ),
    case(
        "content_length: at the end of its line",
        b"POST /ocsp/ HTTP/1.1\r\nContent-Length: -1\r\n",
        HandOff.CONTENT_LENGTH,
    ),
]

STILL_INCOMPLETE = [
    case("incomplete: a partial method", b"PO", INCOMPLETE),
    case("incomplete: a partial target", b"GET /ocsp/ME", INCOMPLETE),
    case("incomplete: a target outside the prefix is not known yet", b"GET /oth", INCOMPLETE),
    case("incomplete: a partial version", b"GET /ocsp/ME HTTP/1.", INCOMPLETE),
    case("incomplete: the CR of the request line", b"GET /ocsp/ME HTTP/1.1\r", INCOMPLETE),
    case("incomplete: a partial field", b"GET /ocsp/ME HTTP/1.1\r\nHost: a\r\nIf-None-M", INCOMPLETE),
    case(
        "incomplete: a Transfer-Encoding name not ended yet",
        b"POST /ocsp/ HTTP/1.1\r\nTransfer-Encoding: ch",
        INCOMPLETE,
    ),
    case("incomplete: the final CRLF half there", b"GET /ocsp/ME HTTP/1.1\r\nHost: a\r\n\r", INCOMPLETE),
    case("incomplete: the body short of Content-Length", post()[:-1], INCOMPLETE),
]


@pytest.mark.parametrize(("raw", "expected"), ANSWERED + HANDED_OVER + INCOMPLETE_BUT_HOPELESS + STILL_INCOMPLETE)
def test_head_reader(raw: bytes, expected: Decision) -> None:
    assert read_request(raw, 0, PREFIX, MAX_BODY) == expected


def test_a_pipelined_request_is_read_where_it_begins() -> None:
    first, second = post(), get()
    buf = first + second
    assert read_request(buf, len(first), PREFIX, MAX_BODY) == Head(
        False, b"MEow", len(buf), len(buf), KEEP_ALIVE_11, (None, None)
    )
    assert read_request(buf, 0, PREFIX, MAX_BODY) == post_head(first)  # what follows is not its body


def test_the_prefix_slash_alone_takes_every_path() -> None:
    raw = get("/MEow")
    assert read_request(raw, 0, b"/", MAX_BODY) == get_head(raw)
    assert read_request(post(), 0, b"/", MAX_BODY) == HandOff.TARGET  # POST only at "/"


def test_every_hand_off_reason_is_a_metric_label() -> None:
    assert [reason.value for reason in HandOff] == list(HANDOFF_REASONS)
