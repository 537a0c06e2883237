"""`ocspd serve` as a process: systemd notification, graceful stop, SIGHUP
key rollover, several workers (SPEC §5). Everything on 127.0.0.1, bounded,
and every process started is stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import aiohttp
import psycopg2.extensions
import pytest
from cryptography.x509 import ocsp

from ocspd import pki
from ocspd.config import load_config
from ocspd.keys import load_signers
from ocspd.logs import KeyValueFormatter
from ocspd.server import summary
from tests.faults import PgProxy
from tests.helpers import TestPki, build_pki, post_bytes, read_answer, request_der
from tests.serving import NotifySocket, ask, start_serve, wait_http


@pytest.mark.timeout(120)
async def test_ready_only_once_the_listener_is_up_and_stopping_drains_requests(
    tmp_path: Path, db_pki: TestPki, pg_dsn: str, proxy: PgProxy
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    dbname = psycopg2.extensions.parse_dsn(pg_dsn)["dbname"]
    proxy.cut()  # the database is unreachable when ocspd starts
    served = await start_serve(db_pki, {"NOTIFY_SOCKET": str(notify.path), "OCSPD_DATABASE_DSN": proxy.dsn(dbname)})
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        with pytest.raises(AssertionError):
            await notify.wait_for("READY=1", timeout=1.5)
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{served.admin}/readyz") as r:
            assert r.status == 503
        proxy.restore()
        await notify.wait_for("READY=1", timeout=30)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{served.admin}/readyz") as r:
                assert r.status == 200, await r.text()
            # Requests in flight when SIGTERM arrives: the database answers slowly.
            proxy.delay = 0.5
            ders = [
                request_der(db_pki.leaves[name].cert, db_pki.ca.cert, nonce=os.urandom(16))
                for name in ("good", "revoked", "unissued")
                for _ in range(4)
            ]
            in_flight = [asyncio.create_task(ask(session, served.url, der)) for der in ders]
            await asyncio.sleep(0.2)
            served.proc.send_signal(signal.SIGTERM)
            await notify.wait_for("STOPPING=1", timeout=10)
            responses = await asyncio.gather(*in_flight)
        assert len(responses) == len(ders)  # every one answered, none dropped
        assert await served.stop() == 0
    finally:
        await served.stop()
        notify.close()


@pytest.mark.timeout(120)
async def test_sighup_rolls_the_responder_key_over_without_failed_requests(tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path / "pki")
    old_responder = test_pki.responder
    assert old_responder is not None and test_pki.responder_path is not None
    served = await start_serve(test_pki, {})
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
        new_responder = pki.make_responder(test_pki.ca, "p384", common_name="ocspd rolled responder")
        seen: list[str] = []
        stop = asyncio.Event()

        async def load(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                response = await ask(session, served.url, der)  # raises on any failed request
                signer = response.certificates[0]
                seen.append("new" if signer == new_responder.cert else "old" if signer == old_responder.cert else "?")

        async with aiohttp.ClientSession() as session:
            workers = [asyncio.create_task(load(session)) for _ in range(4)]
            while len(seen) < 20:
                await asyncio.sleep(0.01)
            # Roll over: new certificate and key in place (as a deploy would), then SIGHUP.
            pki.write_key(test_pki.key_path, new_responder.key)
            pki.write_cert(test_pki.responder_path, new_responder.cert)
            served.proc.send_signal(signal.SIGHUP)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while seen.count("new") < 20:
                assert loop.time() < deadline, "the new key never signed"
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*workers)  # re-raises any failed request
        assert "?" not in seen
        first_new = seen.index("new")
        assert seen[:first_new] == ["old"] * first_new and first_new >= 20
        # Responses after the switch are by the new key (a request already in
        # flight at the switch may still finish with the old one).
        assert seen[first_new:].count("old") <= 4
        assert all(s == "new" for s in seen[first_new + 8 :])
        # A broken config is refused and the running one keeps serving.
        test_pki.config_path.write_text(test_pki.config_path.read_text() + "\n[bogus]\n")
        served.proc.send_signal(signal.SIGHUP)
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                response = await ask(session, served.url, der)
                assert response.certificates[0] == new_responder.cert
        await asyncio.sleep(0.5)
        log = (test_pki.directory / "serve.log").read_text()
        assert "event=reload_refused" in log and "bogus" in log
    finally:
        assert await served.stop() == 0


@pytest.mark.timeout(120)
async def test_two_workers_share_the_port_and_metrics_add_up(tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path / "pki", server="workers = 2")
    notify = NotifySocket(tmp_path / "notify.sock")
    served = await start_serve(test_pki, {"NOTIFY_SOCKET": str(notify.path)})
    try:
        await notify.wait_for("READY=1", timeout=60)
        der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
        requests = 60
        for _ in range(requests):
            # A new connection each time, so that the kernel spreads them over the workers.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                await ask(session, served.url, der)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{served.admin}/readyz") as r:
                text = await r.text()
                assert r.status == 200, text
                assert text.count(": ready") == 2, text
            # Workers add their hot-path counts to the shared files once a second.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:
                async with session.get(f"http://127.0.0.1:{served.admin}/metrics") as r:
                    values = _samples(await r.text())
                counted = values.get(("ocspd_requests_total", (("method", "POST"), ("status", "successful"))), 0)
                if counted == requests or loop.time() > deadline:
                    break
                await asyncio.sleep(0.1)
        assert counted == requests
        # Each worker has its own memory tier: each signed this key once.
        assert values[("ocspd_signatures_total", (("issuer", "test-ca"), ("key_type", "ecdsa-secp256r1")))] == 2
        assert await served.stop() == 0
        await notify.wait_for("STOPPING=1", timeout=5)
    finally:
        await served.stop()
        notify.close()


@pytest.mark.timeout(60)
async def test_served_port_answers_on_the_fast_path_and_hands_odd_requests_to_aiohttp(tmp_path: Path) -> None:
    # `ocspd serve` runs on uvloop when it is installed (the test extra installs it):
    # the hand-over of a connection is checked on the loop that production uses.
    test_pki = build_pki(tmp_path / "pki")
    served = await start_serve(test_pki, {})
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        good, revoked = (request_der(test_pki.leaves[n].cert, test_pki.ca.cert) for n in ("good", "revoked"))
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            # Fast, then a PUT that hands the connection to aiohttp, which answers what follows.
            writer.write(post_bytes(good) + post_bytes(good).replace(b"POST", b"PUT", 1))
            answers = [await asyncio.wait_for(read_answer(reader), 10) for _ in range(2)]
            writer.write(post_bytes(revoked))
            answers.append(await asyncio.wait_for(read_answer(reader), 10))
        finally:
            writer.close()
        assert [a.status for a in answers] == [200, 405, 200]
        assert "server" not in answers[0].headers and "aiohttp" in answers[2].headers["server"]
        statuses = [ocsp.load_der_ocsp_response(answers[i].body).certificate_status for i in (0, 2)]
        assert statuses == [ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED]
        assert await served.stop() == 0
    finally:
        await served.stop()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


BAD_REQUESTS = {
    "garbage": b"GARBAGE\r\n\r\n",
    "body cut short": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
    "chunk cut short": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "bad content-length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "handed over, cut short": b"POST / HTTP/1.1\r\nHost: x\r\nX: a\r\nX: b\r\nContent-Length: 100\r\n\r\nab",
}


async def test_a_clients_broken_requests_are_no_error_lines_and_one_throttled_debug_line(tmp_path: Path) -> None:
    test_pki = build_pki(tmp_path / "pki")
    served = await start_serve(test_pki, {"OCSPD_LOG_LEVEL": "debug"})
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        for raw in BAD_REQUESTS.values():
            for hang_up in (False, True):  # read the answer, or go away at once
                reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
                writer.write(raw)
                await writer.drain()
                if not hang_up:
                    with contextlib.suppress(TimeoutError, ConnectionError):
                        await asyncio.wait_for(reader.read(65536), 2)
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        async with aiohttp.ClientSession() as session:  # the server goes on
            response = await ask(session, served.url, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
        assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    finally:
        assert await served.stop() == 0
    log = (test_pki.directory / "serve.log").read_text()
    assert "level=error" not in log and "Traceback" not in log, log
    assert log.count("event=bad_request") == 1, log  # the rest held back by the throttle


@pytest.mark.parametrize("fast_http", ["true", "false"], ids=["fast-path", "aiohttp"])
async def test_idle_connections_are_closed_after_the_configured_keepalive_timeout(
    tmp_path: Path, fast_http: str
) -> None:
    test_pki = build_pki(tmp_path / "pki")
    served = await start_serve(test_pki, {"OCSPD_SERVER_KEEPALIVE_TIMEOUT": "1s", "OCSPD_SERVER_FAST_HTTP": fast_http})
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(post_bytes(request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)))
        answer = await asyncio.wait_for(read_answer(reader), 10)
        assert answer.status == 200
        loop = asyncio.get_running_loop()
        answered = loop.time()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        idle = loop.time() - answered
        assert 0.8 <= idle <= 3.0, f"closed after {idle:.2f}s idle, keepalive_timeout is 1s"
        writer.close()
    finally:
        assert await served.stop() == 0


@pytest.mark.parametrize("fast_http", ["true", "false"], ids=["fast-path", "aiohttp"])
async def test_a_head_trickling_in_is_closed_after_the_keepalive_timeout(tmp_path: Path, fast_http: str) -> None:
    test_pki = build_pki(tmp_path / "pki")
    served = await start_serve(test_pki, {"OCSPD_SERVER_KEEPALIVE_TIMEOUT": "1s", "OCSPD_SERVER_FAST_HTTP": fast_http})
    try:
        await wait_http(f"http://127.0.0.1:{served.admin}/healthz")
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        head = b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        closed = False
        for byte in head:  # a byte every 50 ms: 10 s for the whole head, if let
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                closed = await asyncio.wait_for(reader.read(1), 0.05) == b""
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
            if closed:
                break
        held = loop.time() - started
        assert closed and held <= 3.0, f"a trickling head held the connection {held:.1f}s (closed={closed})"
        writer.close()
    finally:
        assert await served.stop() == 0


def test_the_start_up_summary_speaks_in_the_config_s_units(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Durations and sizes as the config writes them, IPv6 in brackets, paths normalised, and
    where each database DSN leads without its password."""
    test_pki = build_pki(
        tmp_path / "pki",
        database="host=db1.internal dbname=ocspd user=ocspd password=s3cret",
        database_extra='read_dsn = "host=db2.internal dbname=ocspd user=ocspd password=s3cret"',
    )
    config = load_config(test_pki.config_path, environ={"OCSPD_SERVER_LISTEN": "[::1]:8080,127.0.0.1:8080"})
    with caplog.at_level(logging.INFO, logger="ocspd"):
        summary(config, load_signers(config))
    lines = [KeyValueFormatter().format(r) for r in caplog.records]
    [line] = [line for line in lines if "event=config" in line]
    assert "listen=[::1]:8080,127.0.0.1:8080" in line and "admin=127.0.0.1:9180" in line, line
    assert "validity=1d" in line and 'memory_tier="1000000 entries/512MiB"' in line, line
    assert "ocspd@db1.internal:5432/ocspd" in line and "read_dsn=ocspd@db2.internal:5432/ocspd" in line, line
    assert "s3cret" not in "\n".join(lines)
