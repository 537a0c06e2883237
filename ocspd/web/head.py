"""Reading an HTTP/1.x request for the fast path (``ocspd/web/fast.py``): the decision.

``read_request`` looks at the bytes of one request and says one of three things:

- a ``Head``: answer this (GET or POST under the prefix, or POST at the prefix
  without its final "/", HTTP/1.1 or 1.0, header fields of plain RFC 9112
  syntax, one Host in HTTP/1.1, no field twice, no Transfer-Encoding, Expect,
  Upgrade or Content-Encoding, and the whole body read);
- a ``HandOff`` reason: hand the connection to aiohttp, whose answer (a 400, a
  404, a 415, a chunked body read...) is then the answer;
- ``INCOMPLETE``: not whole yet, and it can still become a request answered here.

Strict on purpose: a head is answered here only when it is certainly one that
aiohttp would read the same way. An incomplete head is handed over as soon as
it can no longer become one, so a broken request line gets aiohttp's 400 at
once rather than a timeout. The rules run in the order the bytes come: the
request line (its parts, method, version, target), then the fields (syntax,
repeats, count, Host, fields handled by aiohttp, Content-Length, Connection),
then what the method asks of the target and body. The first rule a request
does not meet is the reason it is handed over.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, NamedTuple

from ocspd.web.handlers import Conditional

# A head (request line and fields) longer than this, or not complete within
# it, goes to aiohttp, which answers 400/431 by its own limits (8190 a line).
MAX_HEAD = 8192
# aiohttp refuses a head with more fields than this (400): so does this path, by handing it over.
MAX_FIELDS = 128


class HandOff(enum.Enum):
    """Why a request goes to aiohttp: the ``reason`` of ``ocspd_http_handoffs_total``
    (``ocspd.metrics.HANDOFF_REASONS`` lists the same values)."""

    REQUEST_LINE = "request_line"  # not three parts separated by single spaces
    METHOD = "method"  # neither GET nor POST (aiohttp answers 405)
    TARGET = "target"  # outside the prefix (404), a POST below it (405), odd characters or a fragment
    VERSION = "version"  # neither HTTP/1.1 nor HTTP/1.0
    FIELD_SYNTAX = "field_syntax"  # not "token:value" lines (obs-fold, bare CR or LF, a blank name...)
    REPEATED_FIELD = "repeated_field"  # a field twice (aiohttp refuses repeated Host, Content-Length...)
    TOO_MANY_FIELDS = "too_many_fields"  # over MAX_FIELDS
    NO_HOST = "no_host"  # HTTP/1.1 without Host (RFC 9112 §3.2)
    HAND_OFF_FIELD = "hand_off_field"  # a field whose handling is aiohttp's (_HAND_OFF_NAMES)
    CONTENT_LENGTH = "content_length"  # not a plain number, none on a POST (411), a body on a GET
    BODY_TOO_LARGE = "body_too_large"  # over [server] max_request_bytes (413)
    CONNECTION = "connection"  # a Connection value other than close or keep-alive
    HEAD_TOO_LARGE = "head_too_large"  # no end of the head within MAX_HEAD
    PARTIAL_READS = "partial_reads"  # not whole within fast.MAX_PARTIAL_READS reads (decided there)


class Incomplete(enum.Enum):
    """Not a whole request yet, and it may still become one this path answers: read on."""

    INCOMPLETE = "incomplete"


INCOMPLETE: Final = Incomplete.INCOMPLETE


class Framing(NamedTuple):
    """How an answer is framed, as aiohttp frames it."""

    version: str  # the status line's
    connection: str  # the Connection field line, or ""
    close: bool  # whether the connection closes after the answer


_KEEP_ALIVE_11 = Framing("HTTP/1.1", "", False)
_CLOSE_11 = Framing("HTTP/1.1", "Connection: close\r\n", True)
_KEEP_ALIVE_10 = Framing("HTTP/1.0", "Connection: keep-alive\r\n", False)
_CLOSE_10 = Framing("HTTP/1.0", "", True)  # HTTP/1.0 closes unless asked otherwise (stapling clients)


@dataclass(slots=True)
class Head:
    """A whole request this path answers: ``buf[body_start:end]`` is its body (empty for GET).

    With slots: one object per request on the hit path, as the tuple it replaces was.
    """

    is_post: bool
    target: bytes  # for GET the part below the prefix, query included
    body_start: int
    end: int  # where the next request begins
    framing: Framing
    conditional: Conditional  # GET's If-None-Match and If-Modified-Since; None for POST


Decision = Head | HandOff | Incomplete

# Header fields as RFC 9112 §5 has them, with no obs-fold and no bare CR or LF:
# a token, a colon, visible characters, spaces and tabs.
_FIELDS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
# The start of a header field that may still become one.
_FIELD_START = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*(?::[\t\x20-\x7e\x80-\xff]*)?\r?")
# Visible ASCII but "#": aiohttp's raw_path would differ on a fragment.
_TARGET = re.compile(rb'/[!"$-~]*')
_NAMES = re.compile(rb"\r\n([^:\r\n]*):")  # over the fields with a CRLF before the first
_METHODS = (b"GET", b"POST")
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
# Fields that make a request leave this path whatever their value. Content-Encoding:
# aiohttp's side answers 415 (even "identity", which it accepts, is too rare to read here).
_HAND_OFF_NAMES = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"content-encoding",
                             # aiohttp honours Proxy-Connection for keep-alive, and its parser
                             # refuses a hixie-76 WebSocket key: the same bytes, the same answer.
                             b"proxy-connection", b"sec-websocket-key1"})  # fmt: skip


def read_request(buf: bytes, start: int, prefix: bytes, max_body: int) -> Decision:
    """What the fast path does with the request that begins at ``buf[start]`` (module docstring).

    ``prefix`` is the path prefix (ending in "/"), ``max_body`` the largest POST body answered.
    The rules of a whole head are spelled out here, in their order, rather than in
    helpers: this runs for every request on the hit path.
    """
    head_end = buf.find(b"\r\n\r\n", start, start + MAX_HEAD)
    if head_end < 0:
        if len(buf) - start >= MAX_HEAD:
            return HandOff.HEAD_TOO_LARGE
        return _unfinished(buf, start, prefix) or INCOMPLETE
    line_end = buf.find(b"\r\n", start, head_end + 2)
    parts = buf[start:line_end].split(b" ")
    refused = _request_line(parts, prefix)
    if refused is not None:
        return refused
    method, target, version = parts
    http10 = version == b"HTTP/1.0"
    fields = buf[line_end + 2 : head_end + 2]  # each field line with its CRLF
    if _FIELDS.fullmatch(fields) is None:
        return HandOff.FIELD_SYNTAX
    lowered = b"\r\n" + fields.lower()  # every name now follows a CRLF
    names = _NAMES.findall(lowered)
    unique = set(names)
    if len(unique) != len(names):
        return HandOff.REPEATED_FIELD
    if len(names) > MAX_FIELDS:
        return HandOff.TOO_MANY_FIELDS
    if not http10 and b"host" not in unique:
        return HandOff.NO_HOST
    if not unique.isdisjoint(_HAND_OFF_NAMES):
        return HandOff.HAND_OFF_FIELD  # chunked bodies, 100-continue, upgrades...
    length_at = lowered.find(b"\r\ncontent-length:")
    if length_at >= 0:
        value = _value(fields, lowered, length_at + 17)
        if not value.isdigit() or len(value) > 9:
            return HandOff.CONTENT_LENGTH
        length = int(value)
    else:
        length = -1
    framing = _CLOSE_10 if http10 else _KEEP_ALIVE_11
    connection_at = lowered.find(b"\r\nconnection:")
    if connection_at >= 0:
        value = _value(fields, lowered, connection_at + 13).lower()
        if value == b"keep-alive":
            framing = _KEEP_ALIVE_10 if http10 else _KEEP_ALIVE_11
        elif value == b"close":
            framing = _CLOSE_10 if http10 else _CLOSE_11
        else:
            return HandOff.CONNECTION
    body_start = head_end + 4
    if method == b"POST":
        # A target no longer than the prefix is the prefix, or it without its final "/".
        if len(target) > len(prefix):
            return HandOff.TARGET  # aiohttp answers 405
        if length < 0:
            return HandOff.CONTENT_LENGTH  # 411
        if length > max_body:
            return HandOff.BODY_TOO_LARGE  # 413
        if len(buf) < body_start + length:
            return INCOMPLETE  # the body is not whole yet
        return Head(True, target, body_start, body_start + length, framing, None)
    if length > 0:
        return HandOff.CONTENT_LENGTH
    conditional = (_field(fields, lowered, b"\r\nif-none-match:"), _field(fields, lowered, b"\r\nif-modified-since:"))
    return Head(False, target[len(prefix) :], body_start, body_start, framing, conditional)


def _request_line(parts: list[bytes], prefix: bytes) -> HandOff | None:
    """Why a whole request line, split at its spaces, is not one this path answers; None if it is."""
    if len(parts) != 3:
        return HandOff.REQUEST_LINE
    method, target, version = parts
    if method not in _METHODS:
        return HandOff.METHOD
    if version not in _VERSIONS:
        return HandOff.VERSION
    if (not target.startswith(prefix) and target != prefix[:-1]) or _TARGET.fullmatch(target) is None:
        return HandOff.TARGET  # outside the prefix (aiohttp answers 404, and counts it), or odd characters
    return None


def _unfinished(buf: bytes, start: int, prefix: bytes) -> HandOff | None:
    """Why the incomplete head at ``buf[start:]`` can no longer become one this path answers;
    None while it still can."""
    line_end = buf.find(b"\r\n", start)
    if line_end < 0:
        return _unfinished_line(buf[start:])
    refused = _request_line(buf[start:line_end].split(b" "), prefix)
    if refused is not None:
        return refused
    last = buf.rfind(b"\r\n", line_end)
    if _FIELDS.fullmatch(buf, line_end + 2, last + 2) is None or _FIELD_START.fullmatch(buf, last + 2) is None:
        return HandOff.FIELD_SYNTAX
    lowered = buf[line_end:].lower()
    names = _NAMES.findall(lowered)  # the last, incomplete line's name too
    if len(set(names)) != len(names):
        return HandOff.REPEATED_FIELD
    if len(names) > MAX_FIELDS:
        return HandOff.TOO_MANY_FIELDS
    # What is already certain hands over now, as aiohttp's parser refuses (or takes
    # over) at the end of the field's line: a field whose handling is aiohttp's,
    # or a Content-Length that is no plain number.
    complete = lowered[: last + 2 - line_end]
    if not set(_NAMES.findall(complete)).isdisjoint(_HAND_OFF_NAMES):
        return HandOff.HAND_OFF_FIELD
    length_at = complete.find(b"\r\ncontent-length:")
    if length_at >= 0:
        value = _value(buf[line_end + 2 : last + 2], complete, length_at + 17)
        if not value.isdigit() or len(value) > 9:
            return HandOff.CONTENT_LENGTH
    return None


def _unfinished_line(line: bytes) -> HandOff | None:
    """Why a request line not ended yet (no CRLF in it) can no longer become one this
    path answers: each part read so far must be the start of what ``_request_line`` takes."""
    parts = line.split(b" ", 2)
    method = parts[0]
    if len(parts) == 1:  # the method, still arriving
        return None if any(m.startswith(method) for m in _METHODS) else HandOff.METHOD
    if method not in _METHODS:
        return HandOff.METHOD
    target = parts[1]
    if len(parts) == 2:  # the target, still arriving
        return None if not target or _TARGET.fullmatch(target) is not None else HandOff.TARGET
    if _TARGET.fullmatch(target) is None:
        return HandOff.TARGET
    version = parts[2]
    if version.endswith(b"\r"):  # the CR of the line's end, its LF still to come
        return None if version[:-1] in _VERSIONS else HandOff.VERSION
    if b" " in version:
        return HandOff.REQUEST_LINE
    return None if any(v.startswith(version) for v in _VERSIONS) else HandOff.VERSION


def _value(fields: bytes, lowered: bytes, at: int) -> bytes:
    """The value of the field whose name ends at ``lowered[at]``, without its blanks."""
    return fields[at - 2 : lowered.find(b"\r\n", at) - 2].strip(b" \t")


def _field(fields: bytes, lowered: bytes, name: bytes) -> str | None:
    at = lowered.find(name)
    if at < 0:
        return None
    return _value(fields, lowered, at + len(name)).decode("latin-1")
