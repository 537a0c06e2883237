"""Reading an HTTP/1.x request head for the fast path (``ocspd/fasthttp.py``).

Strict on purpose: a head is accepted only when it is certainly one that
aiohttp would read the same way and that the fast path answers (GET or POST
under the prefix, or POST at the prefix without its final "/", HTTP/1.1 or
1.0, header fields of plain RFC 9112 syntax, one Host in HTTP/1.1, no field
twice, no Transfer-Encoding, Expect, Upgrade or Content-Encoding). Anything
else is None: the connection goes to aiohttp, whose answer (a 400, a 404, a
415, a chunked body read...) is then the answer. An incomplete head is
handed over as soon as it can no longer become one, so a broken request
line gets aiohttp's 400 at once rather than a timeout.
"""

from __future__ import annotations

import re

from ocspd.http import Conditional

# Header fields as RFC 9112 §5 has them, with no obs-fold and no bare CR or LF:
# a token, a colon, visible characters, spaces and tabs.
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
# Visible ASCII but "#": aiohttp's raw_path would differ on a fragment.
_TARGET = re.compile(rb'/[!"$-~]*')
# The start of a request line, and of a header field, that may still become one.
_LINE_START = re.compile(
    rb'(?:G|GE|P|PO|POS|(?:GET|POST)(?: (?:/[!"$-~]*'
    rb"(?: (?:H|HT|HTT|HTTP|HTTP/|HTTP/1|HTTP/1\.|HTTP/1\.[01]\r?)?)?)?)?)?"  # a version that can become HTTP/1.x
)
_FIELD_START = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*(?::[\t\x20-\x7e\x80-\xff]*)?\r?")
_NAMES = re.compile(rb"\r\n([^:\r\n]*):")  # over the fields with a CRLF before the first
# Fields that make a request leave this path whatever their value. Content-Encoding:
# aiohttp's side answers 415 (even "identity", which it accepts, is too rare to read here).
_HAND_OFF_NAMES = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"content-encoding",
                             # aiohttp honours Proxy-Connection for keep-alive, and its parser
                             # refuses a hixie-76 WebSocket key: the same bytes, the same answer.
                             b"proxy-connection", b"sec-websocket-key1"})
# aiohttp refuses a head with more fields than this (400): so does this path, by handing it over.
MAX_FIELDS = 128

# How an answer is framed, as aiohttp frames it: the status line's version,
# the Connection field, and whether the connection closes after the answer.
Framing = tuple[str, str, bool]
_KEEP_ALIVE_11: Framing = ("HTTP/1.1", "", False)
_CLOSE_11: Framing = ("HTTP/1.1", "Connection: close\r\n", True)
_KEEP_ALIVE_10: Framing = ("HTTP/1.0", "Connection: keep-alive\r\n", False)
_CLOSE_10: Framing = ("HTTP/1.0", "", True)  # HTTP/1.0 closes unless asked otherwise (stapling clients)


def parse_head(
    buf: bytes, start: int, end: int, prefix: bytes, max_body: int
) -> tuple[bool, bytes, int, Framing, Conditional] | None:
    """The request at ``buf[start:end]`` (its head, up to the last field's CRLF), if it
    is one the fast path answers: (is POST, target below the prefix for GET, body
    length, framing of the answer, GET's conditional fields). None: hand it over.
    """
    line_end = buf.find(b"\r\n", start, end)
    request_line = _request_line(buf[start:line_end], prefix)
    if request_line is None:
        return None
    method, target, http10 = request_line
    fields = buf[line_end + 2 : end]
    if _FIELDS.fullmatch(fields) is None:
        return None
    lowered = b"\r\n" + fields.lower()  # every name now follows a CRLF
    names = _NAMES.findall(lowered)
    unique = set(names)
    if (
        len(unique) != len(names) or len(names) > MAX_FIELDS or (not http10 and b"host" not in unique)
        or not unique.isdisjoint(_HAND_OFF_NAMES)
    ):
        # A repeated field (aiohttp refuses repeated Host, Content-Length,
        # Content-Type...), HTTP/1.1 without Host (RFC 9112 §3.2), or a field
        # whose handling is aiohttp's (chunked bodies, 100-continue, upgrades).
        return None
    length_at = lowered.find(b"\r\ncontent-length:")
    if length_at >= 0:
        value = _value(fields, lowered, length_at + 17)
        if not value.isdigit() or len(value) > 9:
            return None
        length = int(value)
    else:
        length = -1
    framing = _CLOSE_10 if http10 else _KEEP_ALIVE_11
    connection_at = lowered.find(b"\r\nconnection:")
    if connection_at >= 0:
        value = _value(fields, lowered, connection_at + 13).lower()
        if value not in (b"close", b"keep-alive"):
            return None
        if value == b"keep-alive":
            framing = _KEEP_ALIVE_10 if http10 else _KEEP_ALIVE_11
        else:
            framing = _CLOSE_10 if http10 else _CLOSE_11
    if method == b"POST":
        # A target no longer than the prefix is the prefix, or it without its final "/".
        if len(target) > len(prefix) or length < 0 or length > max_body:
            return None  # aiohttp answers 405, 411, 413
        return True, target, length, framing, None
    if method != b"GET" or length > 0:
        return None
    return (
        False,
        target[len(prefix) :],
        0,
        framing,
        (_field(fields, lowered, b"\r\nif-none-match:"), _field(fields, lowered, b"\r\nif-modified-since:")),
    )


def _request_line(line: bytes, prefix: bytes) -> tuple[bytes, bytes, bool] | None:
    """(method, target, HTTP/1.0?) of a request line this path answers, else None."""
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"POST") or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    target = parts[1]
    if (not target.startswith(prefix) and target != prefix[:-1]) or _TARGET.fullmatch(target) is None:
        return None  # outside the prefix (aiohttp answers 404, and counts it), or odd characters
    return parts[0], target, parts[2] == b"HTTP/1.0"


def may_become_head(buf: bytes, start: int, prefix: bytes) -> bool:
    """Whether the incomplete head at ``buf[start:]`` can still become one this path answers."""
    line_end = buf.find(b"\r\n", start)
    if line_end < 0:
        return _LINE_START.fullmatch(buf, start) is not None
    if _request_line(buf[start:line_end], prefix) is None:
        return False
    last = buf.rfind(b"\r\n", line_end)
    if _FIELDS.fullmatch(buf, line_end + 2, last + 2) is None or _FIELD_START.fullmatch(buf, last + 2) is None:
        return False
    lowered = buf[line_end:].lower()
    names = _NAMES.findall(lowered)  # the last, incomplete line's name too
    if len(set(names)) != len(names) or len(names) > MAX_FIELDS:
        return False
    # What is already certain hands over now, as aiohttp's parser refuses (or takes
    # over) at the end of the field's line: a field whose handling is aiohttp's,
    # or a Content-Length that is no plain number.
    complete = lowered[: last + 2 - line_end]
    if not set(_NAMES.findall(complete)).isdisjoint(_HAND_OFF_NAMES):
        return False
    length_at = complete.find(b"\r\ncontent-length:")
    if length_at >= 0:
        value = _value(buf[line_end + 2 : last + 2], complete, length_at + 17)
        if not value.isdigit() or len(value) > 9:
            return False
    return True


def _value(fields: bytes, lowered: bytes, at: int) -> bytes:
    """The value of the field whose name ends at ``lowered[at]``, without its blanks."""
    return fields[at - 2 : lowered.find(b"\r\n", at) - 2].strip(b" \t")


def _field(fields: bytes, lowered: bytes, name: bytes) -> str | None:
    at = lowered.find(name)
    if at < 0:
        return None
    return _value(fields, lowered, at + len(name)).decode("latin-1")
