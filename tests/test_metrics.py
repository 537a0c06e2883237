"""Metrics, health and logs (SPEC §5): every family moves on its path."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ocspd.app import LISTENER, METRICS, RESPONDER, STORE, app_readiness
from ocspd.config import load_config
from ocspd.logs import JsonFormatter, KeyValueFormatter, event, stderr_is_the_journal
from ocspd.web.admin import init_admin_app
from tests.conftest import AppClient
from tests.helpers import (
    GOOD_SERIAL,
    Clock,
    TestPki,
    build_pki,
    counting_signers,
    eventually,
    query,
    request_der,
    start_replicas,
)


def samples(app: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an app's metrics, keyed by (name, sorted labels)."""
    from ocspd.app import update_gauges

    update_gauges(app)
    text = app[METRICS].exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(app: Any, name: str, **labels: str) -> float:
    return samples(app).get((name, tuple(sorted(labels.items()))), 0.0)


async def post(client: TestClient[Any, Any], der: bytes) -> bytes:
    resp = await client.post("/", data=der)
    return await resp.read()


async def test_requests_are_counted_by_method_and_status(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    app = client.app
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    await post(client, der)
    await post(client, b"junk")
    import base64

    await (await client.get("/" + base64.b64encode(der).decode())).read()
    await (await client.post("/", data=b"0" * 20_000)).read()
    assert value(app, "ocspd_requests_total", method="POST", status="successful") == 1
    assert value(app, "ocspd_requests_total", method="POST", status="malformedRequest") == 1
    assert value(app, "ocspd_requests_total", method="GET", status="successful") == 1
    assert value(app, "ocspd_requests_total", method="POST", status="request_too_large") == 1
    assert value(app, "ocspd_request_duration_seconds_count", method="POST") == 2


async def test_memory_lookups_and_signatures_are_counted(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    app = client.app
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    for _ in range(3):
        await post(client, der)
    assert value(app, "ocspd_cache_lookups_total", tier="memory", result="miss") == 1
    assert value(app, "ocspd_cache_lookups_total", tier="memory", result="hit") == 2
    assert value(app, "ocspd_signatures_total", issuer="test-ca", key_type="ecdsa-secp256r1") == 1
    assert value(app, "ocspd_signing_duration_seconds_count", issuer="test-ca") == 1
    assert value(app, "ocspd_memory_entries") == 1
    assert value(app, "ocspd_memory_bytes") > len(der)
    assert value(app, "ocspd_inflight_signatures") == 0


async def test_signing_errors_are_counted(ocspd_client: AppClient, test_pki: TestPki) -> None:
    signers = counting_signers(test_pki)
    signers["test-ca"].fail = True
    client = await ocspd_client(test_pki, signers=signers)
    await post(client, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
    assert value(client.app, "ocspd_signature_errors_total", issuer="test-ca") == 1
    assert value(client.app, "ocspd_requests_total", method="POST", status="internalError") == 1


async def test_index_reload_invalidation_is_counted(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    test_pki.revoke_in_index("good")

    async def counted() -> bool:
        return value(client.app, "ocspd_invalidations_total", cause="index_reload") >= 1

    await eventually(counted, what="index_reload invalidation counted")


async def test_postgres_tier_notify_and_listener_metrics(ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str) -> None:
    client = (await start_replicas(ocspd_client, db_pki, n=1))[0]
    app = client.app
    der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    await post(client, der)  # memory miss, postgres miss, signed and stored
    await app[STORE].flush()  # the write-back is asynchronous
    assert value(app, "ocspd_write_backs_total", result="written") == 1
    app[RESPONDER].memory.clear()
    await post(client, der)  # memory miss, postgres hit
    assert value(app, "ocspd_cache_lookups_total", tier="postgres", result="miss") == 1
    assert value(app, "ocspd_cache_lookups_total", tier="postgres", result="hit") == 1
    assert value(app, "ocspd_listener_connected") == 1
    query(pg_dsn, "SELECT ocspd_revoke('test-ca', %s)", f"{GOOD_SERIAL:x}")

    async def notified() -> bool:
        return value(app, "ocspd_invalidations_total", cause="notify") >= 1

    await eventually(notified, what="notify invalidation counted")
    listener = app[LISTENER]
    query(pg_dsn, "SELECT pg_terminate_backend(%s)", listener.backend_pid)

    async def reconnected() -> bool:
        return value(app, "ocspd_listener_reconnects_total") >= 1 and listener.connected

    await eventually(reconnected, what="listener reconnect counted")
    assert value(app, "ocspd_invalidations_total", cause="channel_loss") >= 2  # on loss and on reconnect


async def test_reload_invalidation_is_counted_as_local(ocspd_client: AppClient, test_pki: TestPki) -> None:
    from ocspd import pki
    from ocspd.app import reload_app

    client = await ocspd_client(test_pki)
    await post(client, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
    responder = pki.make_responder(test_pki.ca)
    assert test_pki.responder_path is not None
    pki.write_cert(test_pki.responder_path, responder.cert)
    pki.write_key(test_pki.key_path, responder.key)
    assert reload_app(client.app, test_pki.config()) == ["test-ca"]
    assert value(client.app, "ocspd_invalidations_total", cause="local") == 1
    assert len(client.app[RESPONDER].memory) == 0


async def test_metric_labels_are_bounded(ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    for name in ("good", "revoked", "unissued"):
        await post(client, request_der(test_pki.leaves[name].cert, test_pki.ca.cert))
    text = client.app[METRICS].exposition().decode()
    # Label values only: a short serial's digits can turn up in a timestamp sample.
    families = text_string_to_metric_families(text)
    label_values = {v for family in families for sample in family.samples for v in sample.labels.values()}
    for leaf in test_pki.leaves.values():
        serial = leaf.cert.serial_number
        assert not {f"{serial:X}", f"{serial:x}", str(serial)} & label_values
        assert not any(f"{serial:x}" in v.lower() for v in label_values)


async def test_healthz_and_readyz(aiohttp_client: Any, ocspd_client: AppClient, test_pki: TestPki) -> None:
    client = await ocspd_client(test_pki)
    app = client.app
    admin = await aiohttp_client(init_admin_app(app[METRICS].exposition, lambda: app_readiness(app)))
    health = await admin.get("/healthz")
    assert health.status == 200
    ready = await admin.get("/readyz")
    assert ready.status == 200
    text = await ready.text()
    assert text.startswith("ready") and "index test-ca: loaded" in text
    scrape = await admin.get("/metrics")
    assert scrape.status == 200 and "ocspd_requests_total" in await scrape.text()


async def test_readyz_says_which_dependency_fails(
    aiohttp_client: Any, ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    client = (await start_replicas(ocspd_client, db_pki, n=1))[0]
    app = client.app
    admin = await aiohttp_client(init_admin_app(app[METRICS].exposition, lambda: app_readiness(app)))
    ok = await admin.get("/readyz")
    assert ok.status == 200 and "database: reachable" in await ok.text()
    conn = psycopg2.connect(pg_dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            # Rename the schema's marker table: the database answers but cannot serve us.
            cur.execute("ALTER TABLE ocspd_migrations RENAME TO ocspd_migrations_moved")
        down = await admin.get("/readyz")
        assert down.status == 503
        assert "database: database schema missing" in await down.text()
        with conn.cursor() as cur:
            cur.execute("ALTER TABLE ocspd_migrations_moved RENAME TO ocspd_migrations")
    finally:
        conn.close()
    assert (await admin.get("/readyz")).status == 200


def test_logs_are_one_line_key_value_or_json(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("ocspd.test")
    with caplog.at_level(logging.INFO, logger="ocspd.test"):
        event(logger, "listening", address="127.0.0.1:8080", note="two words\nand a newline")
    record = caplog.records[-1]
    kv = KeyValueFormatter().format(record)
    assert "\n" not in kv
    assert kv.startswith("level=info logger=ocspd.test event=listening address=127.0.0.1:8080 note=")
    parsed = json.loads(JsonFormatter().format(record))
    assert parsed["event"] == "listening" and parsed["note"] == "two words\nand a newline"


def test_log_lines_start_with_a_utc_timestamp_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("ocspd.test")
    with caplog.at_level(logging.INFO, logger="ocspd.test"):
        event(logger, "listening", address="127.0.0.1:8080")
    record = caplog.records[-1]
    record.created = 1_800_000_000.25
    kv = KeyValueFormatter(timestamps=True).format(record)
    assert kv.startswith("time=2027-01-15T08:00:00.250Z level=info logger=ocspd.test event=listening"), kv
    assert json.loads(JsonFormatter(timestamps=True).format(record))["time"] == "2027-01-15T08:00:00.250Z"


@pytest.mark.parametrize(
    ("stream", "journal"),
    [
        pytest.param("same", True, id="stderr-is-the-journal-stream"),
        pytest.param("other", False, id="another-stream"),
        pytest.param("", False, id="no-journal-stream"),
        pytest.param("garbage", False, id="unreadable-journal-stream"),
    ],
)
def test_timestamps_are_left_to_the_journal_only_when_stderr_is_its_stream(
    stream: str, journal: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stderr").open("w") as stderr:
        monkeypatch.setattr("sys.stderr", stderr)
        stat = os.fstat(stderr.fileno())
        value = {"same": f"{stat.st_dev}:{stat.st_ino}", "other": f"{stat.st_dev}:{stat.st_ino + 1}"}.get(
            stream, stream
        )
        assert stderr_is_the_journal({"JOURNAL_STREAM": value} if value else {}) is journal


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        pytest.param("true", "on", id="toml-true"),
        pytest.param("false", "off", id="toml-false"),
        pytest.param('"auto"', "auto", id="auto"),
    ],
)
def test_log_timestamps_setting(tmp_path: Path, value: str, parsed: str) -> None:
    test_pki = build_pki(tmp_path / "pki")
    test_pki.config_path.write_text(test_pki.config_path.read_text() + f"\n[log]\ntimestamps = {value}\n")
    assert load_config(test_pki.config_path, environ={}).log.timestamps == parsed
    assert load_config(test_pki.config_path, environ={"OCSPD_LOG_TIMESTAMPS": "false"}).log.timestamps == "off"


async def test_transaction_log_names_issuer_serial_status_and_tier(
    ocspd_client: AppClient, test_pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    client = await ocspd_client(test_pki, env={"OCSPD_LOG_REQUESTS": "true"})
    der = request_der(test_pki.leaves["revoked"].cert, test_pki.ca.cert)
    with caplog.at_level(logging.INFO, logger="ocspd.requests"):
        await post(client, der)
        await post(client, der)
    lines = [KeyValueFormatter().format(r) for r in caplog.records if r.name == "ocspd.requests"]
    assert len(lines) == 2
    assert "status=revoked" in lines[0] and "tier=signed" in lines[0] and "serial=1002" in lines[0]
    assert "tier=memory" in lines[1]


async def test_logs_never_contain_key_material(
    ocspd_client: AppClient, test_pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    from ocspd.keys import load_signers
    from ocspd.server import summary

    with caplog.at_level(logging.DEBUG):
        summary(test_pki.config(), load_signers(test_pki.config()))
        client = await ocspd_client(test_pki, env={"OCSPD_LOG_REQUESTS": "true"})
        await post(client, request_der(test_pki.leaves["good"].cert, test_pki.ca.cert))
        await asyncio.sleep(0)
    text = "\n".join(KeyValueFormatter().format(r) for r in caplog.records)
    key_pem = test_pki.key_path.read_text()
    body = "".join(key_pem.splitlines()[1:-1])
    assert body[:40] not in text and "PRIVATE KEY" not in text
    assert "event=issuer" in text and "key_type=ecdsa-secp256r1" in text


async def test_a_known_request_past_its_refresh_point_counts_one_memory_miss(
    ocspd_client: AppClient, test_pki: TestPki
) -> None:
    clock = Clock()
    client = await ocspd_client(test_pki, clock=clock)
    der = request_der(test_pki.leaves["good"].cert, test_pki.ca.cert)
    await post(client, der)  # miss: signed, and the raw request remembered
    await post(client, der)  # hit through the raw-request map
    clock.now += 2 * 86400  # past the entry's refresh point and nextUpdate
    await post(client, der)  # known request, entry gone: one miss, signed again
    assert value(client.app, "ocspd_cache_lookups_total", tier="memory", result="hit") == 1
    assert value(client.app, "ocspd_cache_lookups_total", tier="memory", result="miss") == 2


# -- metrics.Timing and the prometheus-client release it is written against -----------------------

TIMING_BUCKETS = (0.001, 0.01, 0.1, 1.0)


def test_timing_relies_on_these_private_attributes_of_a_histogram_child() -> None:
    """setup.cfg bounds prometheus-client because of these: a release without them must fail here."""
    from importlib.metadata import version

    from prometheus_client import CollectorRegistry, Histogram

    child = Histogram("t", "t", ["l"], buckets=TIMING_BUCKETS, registry=CollectorRegistry()).labels("x")
    release = version("prometheus-client")
    assert list(child._upper_bounds) == [*TIMING_BUCKETS, float("inf")], release
    assert len(child._buckets) == len(child._upper_bounds), release
    for counter in (*child._buckets, child._sum):
        counter.inc(2)
        assert counter.get() == 2, release


def histogram_samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Bucket counts, count and sum (not the creation time) of a registry's samples."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize(
    "seconds", [[], [0.0005], [0.001, 0.001], [0.0011, 0.05, 0.5, 3.0, 1e9], [0.0] * 7 + [0.01, 0.1, 1.0]]
)
def test_timing_flushes_what_observe_would_have_counted(seconds: list[float]) -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from ocspd.metrics import Timing

    def family(registry: CollectorRegistry) -> Histogram:
        return Histogram("t_seconds", "t", ["l"], buckets=TIMING_BUCKETS, registry=registry)

    ours, reference = CollectorRegistry(), CollectorRegistry()
    timing, child = Timing(family(ours).labels("x")), family(reference).labels("x")
    for flushes in range(2):  # a second flush adds to the first
        for s in seconds:
            timing.observe(s)
            child.observe(s)
        timing.flush()
        got, want = histogram_samples(ours), histogram_samples(reference)
        assert got.keys() == want.keys(), flushes
        for key, expected in want.items():
            assert got[key] == pytest.approx(expected), (flushes, key)
    assert timing.counts == [0] * len(timing.bounds) and timing.total == 0.0
