"""Fetching a CA's CRLs (issue 15): the bytes from a file path or an http(s) URL, bounded and cheap to poll.

A location is an ``http://`` or ``https://`` URL (the scheme in any case), or
else a file path. Any other scheme (``file:``, ``ldap://``, ``ftp://``) is
refused rather than read as a relative path: write ``./name`` for a relative
path with a colon in it.

Polling is cheap: :meth:`CrlFetcher.fetch` takes the :class:`Validators` of
the last fetch and answers ``data=None`` when the CRL did not change. Over
HTTP that is a conditional request (``If-None-Match``, ``If-Modified-Since``)
answered 304; for a file, the same ``(st_mtime_ns, st_size, st_ino)``, which
an atomic rename into place always changes.

Every fetch is bounded: one timeout for all of it (connect, redirects and
body; a file's read), at most ``max_bytes`` (a file over it is not read, a
response over it is not read further), and at most ``max_redirects``,
followed only to http(s). Files are read in a thread, never on the event
loop, and what is not a regular file (a directory, a FIFO) is refused
without being opened. Whatever goes
wrong is one :class:`CrlFetchFailed` line naming the location, with any
password in a URL shown as ``***``; only cancellation passes through as is.
Checking what the bytes say is ``ocspd.crl``'s work, not this module's.
"""

from __future__ import annotations

import asyncio
import http
import os
import re
import stat
from dataclasses import dataclass, replace

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from ocspd import __version__
from ocspd.exceptions import OcspdError

__all__ = ["CrlFetchFailed", "CrlFetcher", "FetchLimits", "Fetched", "Validators", "is_url"]

_USER_AGENT = f"ocspd/{__version__}"
_StatKey = tuple[int, int, int]  # (st_mtime_ns, st_size, st_ino)
_URL = re.compile(r"https?://", re.IGNORECASE)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# scheme://user:password@ (the password up to the authority's last "@", as a URL parser reads it)
_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*):[^/?#\s]*@")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
# Any exception a request can end with that is not a bug of ours (aiohttp wraps most in ClientError).
_HTTP_ERRORS = (aiohttp.ClientError, HttpProcessingError, OSError, ValueError)
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Validators:
    """What tells a later fetch that the CRL did not change."""

    etag: str | None = None  # HTTP ETag of the last 200
    last_modified: str | None = None  # HTTP Last-Modified of the last 200
    file_stat: tuple[int, int, int] | None = None  # (st_mtime_ns, st_size, st_ino) of a file source


@dataclass(frozen=True, slots=True)
class Fetched:
    """One fetch: the CRL's bytes, or ``None`` when not modified since the ``previous`` validators."""

    location: str
    data: bytes | None  # None: not modified since `previous` (HTTP 304, or file unchanged)
    validators: Validators  # to pass as `previous` next time (the previous ones again on "not modified")


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """The bounds of one fetch."""

    timeout: float = 30.0  # seconds for the whole fetch (connect, redirects and body; a file's read)
    max_bytes: int = 256 * 1024 * 1024
    max_redirects: int = 3


class CrlFetchFailed(OcspdError):
    """One line saying which location failed and why (no traceback text, no newlines)."""

    def __init__(self, location: str, reason: str) -> None:
        self.location = _shown(location)
        self.reason = _shown(reason)
        super().__init__(f"{self.location}: {self.reason}")


def is_url(location: str) -> bool:
    """Whether ``location`` is an http:// or https:// URL (the scheme in any case)."""
    return _URL.match(location) is not None


def _one_line(text: str) -> str:
    """``text`` without line breaks or other control characters (escaped), for a log line."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def _shown(text: str) -> str:
    """``text`` on one line, with the password of any URL in it as ``***``."""
    return _one_line(_PASSWORD.sub(r"\1:***@", text))


def _phrase(status: int) -> str:
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:  # no standard phrase; the server's own text stays out of the log
        return f"HTTP {status}"


def _read_file(path: str, previous: _StatKey | None, max_bytes: int) -> tuple[_StatKey, bytes | None]:
    """Blocking: the file's stat key and its bytes (``None`` if the key is ``previous``), in a worker thread."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise CrlFetchFailed(path, f"not a regular file ({_KINDS.get(stat.S_IFMT(st.st_mode), 'special')})")
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == previous:
            return key, None
        if st.st_size > max_bytes:
            raise CrlFetchFailed(path, f"{st.st_size} bytes is over the limit of {max_bytes} bytes")
        # O_NONBLOCK: were a FIFO put in its place since the stat, opening it must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        with open(fd, "rb", buffering=0) as file:
            st = os.fstat(file.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CrlFetchFailed(path, "not a regular file (replaced while opened)")
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            chunks: list[bytes] = []
            size = 0
            while size <= max_bytes and (chunk := file.read(min(_CHUNK, max_bytes + 1 - size))):
                chunks.append(chunk)
                size += len(chunk)
    except OSError as exc:
        raise CrlFetchFailed(path, exc.strerror or type(exc).__name__) from None
    if size > max_bytes:
        raise CrlFetchFailed(path, f"grew over the limit of {max_bytes} bytes while read")
    return key, b"".join(chunks)


class CrlFetcher:
    """Fetches CRL bytes from files and http(s) URLs; one HTTP session, made on first use, for all fetches."""

    def __init__(self, limits: FetchLimits = FetchLimits()) -> None:
        self.limits = limits
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, location: str, previous: Validators | None = None) -> Fetched:
        """The CRL at ``location``, or ``data=None`` if unchanged since ``previous``; :class:`CrlFetchFailed` else."""
        if is_url(location):
            return await self._fetch_url(location, previous)
        scheme = _SCHEME.match(location)
        if scheme is not None:
            raise CrlFetchFailed(
                location,
                f"unsupported scheme {scheme.group(1)!r} (a CRL location is a file path or an http:// or https:// URL)",
            )
        return await self._fetch_file(location, previous)

    async def close(self) -> None:
        """Close the HTTP session if one was made (a later fetch makes a new one); idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _fetch_file(self, path: str, previous: Validators | None) -> Fetched:
        before = previous.file_stat if previous is not None else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.timeout):  # a hung mount: the thread stays, the caller goes on
                key, data = await loop.run_in_executor(None, _read_file, path, before, self.limits.max_bytes)
        except TimeoutError:
            raise CrlFetchFailed(path, f"timed out after {self.limits.timeout:g} s") from None
        if data is None and previous is not None:
            return Fetched(path, None, previous)
        return Fetched(path, data, Validators(file_stat=key))

    def _session_for(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.limits.timeout),
                trust_env=False,
                headers={"User-Agent": _USER_AGENT},
            )
        return self._session

    async def _fetch_url(self, location: str, previous: Validators | None) -> Fetched:
        headers: dict[str, str] = {}
        if previous is not None and previous.etag is not None:
            headers["If-None-Match"] = previous.etag
        if previous is not None and previous.last_modified is not None:
            headers["If-Modified-Since"] = previous.last_modified
        try:
            async with asyncio.timeout(self.limits.timeout):
                return await self._follow(location, headers, previous)
        except TimeoutError:  # the whole fetch's, or aiohttp's own (its ServerTimeoutError is one too)
            raise CrlFetchFailed(location, f"timed out after {self.limits.timeout:g} s") from None
        except _HTTP_ERRORS as exc:
            raise CrlFetchFailed(location, str(exc) or type(exc).__name__) from None

    async def _follow(self, location: str, headers: dict[str, str], previous: Validators | None) -> Fetched:
        url = URL(location)
        redirects = 0
        while True:
            if not url.host:
                raise CrlFetchFailed(location, f"no host in {url}")
            where = "" if redirects == 0 else f" from {url} (after {redirects} redirect{'s' * (redirects > 1)})"
            async with self._session_for().get(url, headers=headers, allow_redirects=False) as resp:
                if resp.status in _REDIRECTS:
                    target = resp.headers.get("Location")
                    if not target:
                        raise CrlFetchFailed(location, f"{_phrase(resp.status)} without a Location{where}")
                    if redirects == self.limits.max_redirects:
                        raise CrlFetchFailed(location, f"more than {redirects} redirects{where}")
                    url = url.join(URL(target))
                    if url.scheme not in ("http", "https"):
                        raise CrlFetchFailed(location, f"redirect to unsupported scheme {url.scheme!r} ({url})")
                    redirects += 1
                    continue
                if resp.status == 304:
                    if previous is None:
                        raise CrlFetchFailed(location, f"{_phrase(304)} to an unconditional request{where}")
                    etag = resp.headers.get("ETag", previous.etag)
                    last_modified = resp.headers.get("Last-Modified", previous.last_modified)
                    return Fetched(location, None, replace(previous, etag=etag, last_modified=last_modified))
                if resp.status != 200:
                    raise CrlFetchFailed(location, f"{_phrase(resp.status)}{where}")
                data = await self._body(location, resp, where)
                validators = Validators(etag=resp.headers.get("ETag"), last_modified=resp.headers.get("Last-Modified"))
                return Fetched(location, data, validators)

    async def _body(self, location: str, resp: aiohttp.ClientResponse, where: str) -> bytes:
        limit = self.limits.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise CrlFetchFailed(location, f"{resp.content_length} bytes is over the limit of {limit} bytes{where}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise CrlFetchFailed(location, f"more than the limit of {limit} bytes{where}")
            chunks.append(chunk)
        return b"".join(chunks)
