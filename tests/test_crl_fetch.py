"""Fetching CRL bytes from files and http(s) URLs (ocspd/crlfetch.py; issue 15).

Against a real aiohttp server on 127.0.0.1: conditional requests answered 304,
redirects within the limit and to http(s) only, the size and time bounds, and
every failure as one CrlFetchFailed line with no password in it. Files: the stat
as validator, an atomic rename seen, non-regular files refused unopened.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ocspd import __version__, crlfetch
from ocspd.crlfetch import CrlFetcher, CrlFetchFailed, Fetched, FetchLimits, Validators, is_url
from ocspd.exceptions import OcspdError

LIMITS = FetchLimits(timeout=2.0, max_bytes=1000, max_redirects=3)
LAST_MODIFIED = "Mon, 02 Mar 2026 10:00:00 GMT"


@dataclass
class CrlServer:
    """What the test server serves at /crl, and what it saw."""

    base: str = ""
    body: bytes = b"CRL version 1"
    etag: str | None = '"v1"'
    last_modified: str | None = LAST_MODIFIED
    always_304: bool = False  # answer /crl 304 (with the current validators) whatever was asked
    hits: Counter[str] = field(default_factory=Counter)
    statuses: list[int] = field(default_factory=list)  # of /crl's answers
    requests: list[tuple[str, dict[str, str], int]] = field(default_factory=list)  # path, headers, client port
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends the stalls

    def url(self, path: str) -> str:
        return self.base + path


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _routes(state: CrlServer) -> list[web.RouteDef]:
    def validators() -> dict[str, str]:
        headers = {"ETag": state.etag, "Last-Modified": state.last_modified}
        return {name: value for name, value in headers.items() if value is not None}

    async def crl(request: web.Request) -> web.Response:
        if_none_match = request.headers.get("If-None-Match")
        if state.always_304:
            status = 304
        elif if_none_match is not None:  # RFC 9110 §13.2.2: If-None-Match wins over If-Modified-Since
            status = 304 if if_none_match == state.etag else 200
        else:
            since = request.headers.get("If-Modified-Since")
            status = 304 if since is not None and since == state.last_modified else 200
        state.statuses.append(status)
        return web.Response(status=status, headers=validators(), body=state.body if status == 200 else None)

    async def relative(request: web.Request) -> web.Response:
        left = int(request.match_info["n"])  # redirects still to go: "2" from /rel/3, the last one "../crl"
        raise web.HTTPFound(f"{left - 1}" if left > 1 else "../crl")

    async def absolute(request: web.Request) -> web.Response:
        left = int(request.match_info["n"])
        raise web.HTTPMovedPermanently(state.url(f"/abs/{left - 1}" if left > 1 else "/crl"))

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def no_location(request: web.Request) -> web.Response:
        return web.Response(status=302)

    async def to(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(request.query["url"])

    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["n"]))

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        left = int(request.match_info["n"])
        try:
            while left > 0:
                await response.write(b"y" * min(100, left))
                left -= 100
            await response.write_eof()
        except ConnectionError:  # the client stopped reading at its limit
            pass
        return response

    async def stall(request: web.Request) -> web.Response:
        await asyncio.wait_for(state.release.wait(), 10)
        return web.Response(body=state.body)

    async def stall_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"z" * 10)
        await asyncio.wait_for(state.release.wait(), 10)
        return response

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    def counted(handler: Handler) -> Handler:
        async def count(request: web.Request) -> web.StreamResponse:
            state.hits[request.path] += 1
            peer = request.transport.get_extra_info("peername") if request.transport is not None else None
            state.requests.append((request.path, dict(request.headers), peer[1] if peer else 0))
            return await handler(request)

        return count

    paths: dict[str, Handler] = {
        "/crl": crl,
        "/rel/{n}": relative,
        "/abs/{n}": absolute,
        "/loop": loop,
        "/no-location": no_location,
        "/to": to,
        "/sized/{n}": sized,
        "/chunked/{n}": chunked,
        "/stall": stall,
        "/stall-body": stall_body,
        "/status/{code}": status,
    }
    return [web.get(path, counted(handler)) for path, handler in paths.items()]


@pytest.fixture
async def server() -> AsyncIterator[CrlServer]:
    state = CrlServer()
    app = web.Application()
    app.add_routes(_routes(state))
    runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.base = f"http://{host}:{port}"
    yield state
    state.release.set()
    await runner.cleanup()


Make = Callable[..., CrlFetcher]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """CrlFetchers with LIMITS, changed by keyword; all closed afterwards."""
    made: list[CrlFetcher] = []

    def new(**limits: Any) -> CrlFetcher:
        fetcher = CrlFetcher(replace(LIMITS, **limits))
        made.append(fetcher)
        return fetcher

    yield new
    for fetcher in made:
        await fetcher.close()


@pytest.fixture
def fetcher(make: Make) -> CrlFetcher:
    return make()


async def failure(fetcher: CrlFetcher, location: str, previous: Validators | None = None) -> str:
    """The CrlFetchFailed message a fetch ends with, checked to be one line."""
    with pytest.raises(CrlFetchFailed) as caught:
        await asyncio.wait_for(fetcher.fetch(location, previous), 10)
    message = str(caught.value)
    assert isinstance(caught.value, OcspdError) and message and "\n" not in message and "Traceback" not in message
    return message


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- what a location is -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://ca.example/ca.crl", True),
        ("https://ca.example/ca.crl", True),
        ("HTTPS://ca.example/ca.crl", True),
        ("Http://ca.example/ca.crl", True),
        ("/etc/ocspd/ca.crl", False),
        ("ca.crl", False),
        ("file:///etc/ocspd/ca.crl", False),
        ("ftp://ca.example/ca.crl", False),
        ("httpx://ca.example/ca.crl", False),
        ("http:/ca.example/ca.crl", False),
    ],
)
def test_is_url_takes_http_and_https_in_any_case_and_nothing_else(location: str, expected: bool) -> None:
    assert is_url(location) is expected


@pytest.mark.parametrize(
    ("location", "scheme"),
    [
        ("file:///etc/ocspd/ca.crl", "file"),
        ("FILE:/etc/ocspd/ca.crl", "FILE"),
        ("ldap://ldap.example/cn=CA?certificateRevocationList;binary", "ldap"),
        ("ftp://127.0.0.1:{port}/crl", "ftp"),
        ("crl:1.der", "crl"),
    ],
)
async def test_an_unsupported_scheme_is_refused_without_fetching(
    fetcher: CrlFetcher, server: CrlServer, location: str, scheme: str
) -> None:
    message = await failure(fetcher, location.format(port=server.base.rsplit(":", 1)[1]))
    assert f"unsupported scheme {scheme!r}" in message
    assert not server.hits


@pytest.mark.parametrize("location", ["http://", "https:///crl", "http://[::1/crl", "http://127.0.0.1:99999/crl"])
async def test_a_bad_url_fails_on_one_line_naming_it(fetcher: CrlFetcher, location: str) -> None:
    assert (await failure(fetcher, location)).startswith(location + ": ")


# -- conditional requests -----------------------------------------------------------------


async def test_an_etag_makes_the_next_fetch_a_304_without_a_body(fetcher: CrlFetcher, server: CrlServer) -> None:
    url = server.url("/crl")
    first = await fetcher.fetch(url)
    assert first == Fetched(url, b"CRL version 1", Validators(etag='"v1"', last_modified=LAST_MODIFIED))
    second = await fetcher.fetch(url, first.validators)
    assert second == Fetched(url, None, first.validators)
    assert server.statuses == [200, 304]
    assert server.requests[1][1]["If-None-Match"] == '"v1"'
    assert server.requests[1][1]["If-Modified-Since"] == LAST_MODIFIED


async def test_last_modified_alone_makes_the_next_fetch_a_304(fetcher: CrlFetcher, server: CrlServer) -> None:
    server.etag = None
    url = server.url("/crl")
    first = await fetcher.fetch(url)
    assert first.validators == Validators(last_modified=LAST_MODIFIED)
    assert (await fetcher.fetch(url, first.validators)).data is None
    assert server.statuses == [200, 304]
    assert "If-None-Match" not in server.requests[1][1]


async def test_without_validators_every_fetch_is_a_full_200(fetcher: CrlFetcher, server: CrlServer) -> None:
    server.etag = server.last_modified = None
    url = server.url("/crl")
    first = await fetcher.fetch(url)
    assert first.validators == Validators()
    assert (await fetcher.fetch(url, first.validators)).data == b"CRL version 1"
    assert server.statuses == [200, 200]
    assert not {"If-None-Match", "If-Modified-Since"} & set(server.requests[1][1])


async def test_a_changed_crl_is_fetched_again_with_its_new_validators(fetcher: CrlFetcher, server: CrlServer) -> None:
    url = server.url("/crl")
    first = await fetcher.fetch(url)
    server.body, server.etag, server.last_modified = b"CRL version 2", '"v2"', "Tue, 03 Mar 2026 10:00:00 GMT"
    second = await fetcher.fetch(url, first.validators)
    assert second == Fetched(url, b"CRL version 2", Validators('"v2"', "Tue, 03 Mar 2026 10:00:00 GMT"))
    assert (await fetcher.fetch(url, second.validators)).data is None


async def test_a_304_with_new_validators_hands_them_on(fetcher: CrlFetcher, server: CrlServer) -> None:
    url = server.url("/crl")
    first = await fetcher.fetch(url)
    server.etag, server.last_modified, server.always_304 = '"v1-gzip"', None, True
    second = await fetcher.fetch(url, first.validators)
    assert second == Fetched(url, None, Validators('"v1-gzip"', LAST_MODIFIED))


async def test_a_304_to_an_unconditional_request_fails(fetcher: CrlFetcher, server: CrlServer) -> None:
    server.always_304 = True
    assert "HTTP 304 Not Modified to an unconditional request" in await failure(fetcher, server.url("/crl"))


async def test_requests_say_ocspd_and_its_version(fetcher: CrlFetcher, server: CrlServer) -> None:
    await fetcher.fetch(server.url("/crl"))
    assert server.requests[0][1]["User-Agent"] == f"ocspd/{__version__}"


async def test_one_session_serves_every_fetch_and_close_is_idempotent(fetcher: CrlFetcher, server: CrlServer) -> None:
    await fetcher.close()  # nothing made yet: nothing to close
    for _ in range(3):
        await fetcher.fetch(server.url("/crl"))
    assert len({port for _, _, port in server.requests}) == 1  # one kept-alive connection of one session
    await fetcher.close()
    await fetcher.close()
    assert (await fetcher.fetch(server.url("/crl"))).data == b"CRL version 1"  # a new session after close
    assert len({port for _, _, port in server.requests}) == 2
    await fetcher.close()


# -- redirects --------------------------------------------------------------------------


@pytest.mark.parametrize("redirects", [1, 2, 3])
@pytest.mark.parametrize("kind", ["rel", "abs"])
async def test_redirects_are_followed_up_to_the_limit(
    fetcher: CrlFetcher, server: CrlServer, kind: str, redirects: int
) -> None:
    url = server.url(f"/{kind}/{redirects}")
    fetched = await fetcher.fetch(url)
    assert fetched == Fetched(url, b"CRL version 1", Validators('"v1"', LAST_MODIFIED))
    assert server.hits["/crl"] == 1 and len(server.requests) == redirects + 1


async def test_a_redirect_keeps_the_conditional_request(fetcher: CrlFetcher, server: CrlServer) -> None:
    url = server.url("/rel/2")
    assert (await fetcher.fetch(url, (await fetcher.fetch(url)).validators)).data is None
    assert server.statuses == [200, 304]


@pytest.mark.parametrize("kind", ["rel", "abs"])
async def test_one_redirect_over_the_limit_is_refused(fetcher: CrlFetcher, server: CrlServer, kind: str) -> None:
    message = await failure(fetcher, server.url(f"/{kind}/4"))
    assert f"more than 3 redirects from {server.url(f'/{kind}/1')} (after 3 redirects)" in message
    assert server.hits["/crl"] == 0


async def test_no_redirect_at_all_is_followed_with_a_limit_of_zero(make: Make, server: CrlServer) -> None:
    assert "more than 0 redirects" in await failure(make(max_redirects=0), server.url("/rel/1"))
    assert server.hits["/crl"] == 0


async def test_a_redirect_loop_ends_at_the_limit(fetcher: CrlFetcher, server: CrlServer) -> None:
    assert "more than 3 redirects" in await failure(fetcher, server.url("/loop"))
    assert server.hits["/loop"] == 4


@pytest.mark.parametrize(
    ("target", "scheme"),
    [("file:///etc/passwd", "file"), ("FILE:///etc/passwd", "file"), ("ftp://127.0.0.1/crl", "ftp")],
)
async def test_a_redirect_to_another_scheme_is_refused(
    fetcher: CrlFetcher, server: CrlServer, target: str, scheme: str
) -> None:
    message = await failure(fetcher, server.url(f"/to?url={target}"))
    assert f"redirect to unsupported scheme {scheme!r}" in message


async def test_a_redirect_without_a_location_fails(fetcher: CrlFetcher, server: CrlServer) -> None:
    assert "HTTP 302 Found without a Location" in await failure(fetcher, server.url("/no-location"))


# -- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "said"),
    [(404, "HTTP 404 Not Found"), (500, "HTTP 500 Internal Server Error"), (204, "HTTP 204 No Content"),
     (599, "HTTP 599")],
)  # fmt: skip
async def test_any_other_status_fails_naming_it_and_the_url(
    fetcher: CrlFetcher, server: CrlServer, code: int, said: str
) -> None:
    url = server.url(f"/status/{code}")
    assert await failure(fetcher, url) == f"{url}: {said}"


async def test_a_failure_after_a_redirect_names_the_url_that_answered(fetcher: CrlFetcher, server: CrlServer) -> None:
    url, answered = server.url("/to?url=/status/404"), server.url("/status/404")
    assert await failure(fetcher, url) == f"{url}: HTTP 404 Not Found from {answered} (after 1 redirect)"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/sized/1001", "1001 bytes is over the limit of 1000 bytes"),  # refused on its Content-Length
        ("/chunked/5000", "more than the limit of 1000 bytes"),  # no length: counted while read
    ],
)
async def test_a_body_over_the_limit_is_refused(fetcher: CrlFetcher, server: CrlServer, path: str, reason: str) -> None:
    assert await failure(fetcher, server.url(path)) == f"{server.url(path)}: {reason}"


@pytest.mark.parametrize("path", ["/sized/1000", "/chunked/1000"])
async def test_a_body_of_exactly_the_limit_is_read(fetcher: CrlFetcher, server: CrlServer, path: str) -> None:
    data = (await fetcher.fetch(server.url(path))).data
    assert data is not None and len(data) == 1000


@pytest.mark.parametrize("path", ["/stall", "/stall-body", "/to?url=/stall"])
async def test_a_stalled_server_times_out(make: Make, server: CrlServer, path: str) -> None:
    started = time.monotonic()
    message = await failure(make(timeout=0.3), server.url(path))
    assert "timed out after 0.3 s" in message
    assert time.monotonic() - started < 2


async def test_a_refused_connection_names_the_url(fetcher: CrlFetcher) -> None:
    url = f"http://127.0.0.1:{closed_port()}/crl"
    message = await failure(fetcher, url)
    assert message.startswith(f"{url}: ") and "127.0.0.1" in message.removeprefix(url)


@pytest.mark.parametrize(
    "where",
    ["http://user:s3cret@127.0.0.1:{closed}/crl", "{base}/status/404", "http://user:s3cret@[::1/crl", "{base}/to"],
)
async def test_a_password_in_a_url_is_masked(fetcher: CrlFetcher, server: CrlServer, where: str) -> None:
    base = server.base.replace("http://", "http://user:s3cret@")
    location = where.format(closed=closed_port(), base=base)
    if where.endswith("/to"):  # and one in a redirect's target
        location += "?url=ftp://bob:hunter2@127.0.0.1/crl"
    with pytest.raises(CrlFetchFailed) as caught:
        await fetcher.fetch(location)
    message = str(caught.value)
    assert "user:***@" in message and "user:***@" in caught.value.location
    assert "s3cret" not in message and "hunter2" not in message


# -- files ------------------------------------------------------------------------------


def _key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def test_a_file_is_read_with_its_stat_as_validator(fetcher: CrlFetcher, tmp_path: Path) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(b"CRL from a file")
    assert await fetcher.fetch(str(path)) == Fetched(str(path), b"CRL from a file", Validators(file_stat=_key(path)))


async def test_an_unchanged_file_gives_none_and_the_same_validators(fetcher: CrlFetcher, tmp_path: Path) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(b"CRL from a file")
    first = await fetcher.fetch(str(path))
    assert await fetcher.fetch(str(path), first.validators) == Fetched(str(path), None, first.validators)


async def test_a_file_renamed_into_place_is_read_again_even_with_the_same_size_and_mtime(
    fetcher: CrlFetcher, tmp_path: Path
) -> None:
    path, new = tmp_path / "ca.crl", tmp_path / "ca.crl.new"
    path.write_bytes(b"CRL version 1")
    first = await fetcher.fetch(str(path))
    new.write_bytes(b"CRL version 2")
    mtime_ns = path.stat().st_mtime_ns
    os.utime(new, ns=(mtime_ns, mtime_ns))
    os.replace(new, path)
    second = await fetcher.fetch(str(path), first.validators)
    assert second == Fetched(str(path), b"CRL version 2", Validators(file_stat=_key(path)))
    assert second.validators != first.validators


async def test_a_file_rewritten_in_place_is_read_again(fetcher: CrlFetcher, tmp_path: Path) -> None:
    path = tmp_path / "ca.crl"
    path.write_bytes(b"CRL version 1")
    first = await fetcher.fetch(str(path))
    path.write_bytes(b"CRL version 22")
    assert (await fetcher.fetch(str(path), first.validators)).data == b"CRL version 22"


@pytest.mark.parametrize(
    ("make_it", "reason"),
    [
        (lambda path: None, "No such file or directory"),
        (Path.mkdir, "not a regular file (a directory)"),
        (os.mkfifo, "not a regular file (a FIFO)"),  # opened, it would wait for a writer
    ],
    ids=["missing", "directory", "fifo"],
)
async def test_what_is_not_a_readable_regular_file_fails_with_the_reason(
    fetcher: CrlFetcher, tmp_path: Path, make_it: Callable[[Path], object], reason: str
) -> None:
    path = tmp_path / "ca.crl"
    make_it(path)
    assert await failure(fetcher, str(path)) == f"{path}: {reason}"


async def test_a_file_over_the_limit_is_refused_and_one_at_the_limit_read(make: Make, tmp_path: Path) -> None:
    fetcher = make(max_bytes=10)
    path = tmp_path / "ca.crl"
    path.write_bytes(b"x" * 11)
    assert await failure(fetcher, str(path)) == f"{path}: 11 bytes is over the limit of 10 bytes"
    path.write_bytes(b"x" * 10)
    assert (await fetcher.fetch(str(path))).data == b"x" * 10


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
async def test_a_file_longer_than_its_stat_said_is_cut_at_the_limit(make: Make) -> None:
    # /proc files stat as 0 bytes and read as more: as a file that grows after the stat.
    message = await failure(make(max_bytes=10), "/proc/self/status")
    assert message == "/proc/self/status: grew over the limit of 10 bytes while read"


async def test_a_relative_path_with_a_colon_is_read_after_dot_slash(
    fetcher: CrlFetcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("crl:1.der").write_bytes(b"CRL")
    Path("ca").mkdir()
    assert (await fetcher.fetch("./crl:1.der")).data == b"CRL"
    assert (await fetcher.fetch("ca/../crl:1.der")).data == b"CRL"


async def test_a_file_is_read_off_the_event_loop_within_the_timeout(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hung = threading.Event()

    def hung_read(*args: object) -> None:  # a read on a mount that does not answer
        hung.wait(5)

    monkeypatch.setattr(crlfetch, "_read_file", hung_read)
    started = time.monotonic()
    try:
        assert (
            await failure(make(timeout=0.3), str(tmp_path / "ca.crl"))
            == f"{tmp_path / 'ca.crl'}: timed out after 0.3 s"
        )
        assert time.monotonic() - started < 2  # on the loop, the read would have held it for 5 s
    finally:
        hung.set()
