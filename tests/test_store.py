"""The PostgreSQL store on a real server: migrations, the response tier,
presign and the shared refresh (SPEC §1, §5)."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from collections import Counter
from typing import Any

import psycopg2
import pytest
from cryptography.x509 import ocsp

from ocspd import app as ocspd_app
from ocspd.app import LISTENER, METRICS, RESPONDER, STORE, RefreshSettings, refresh_loop
from ocspd.keys import load_signers
from ocspd.responder import Responder
from ocspd.status import REASON_BY_NAME, REASONS, CertStatus, Status
from ocspd.store import DueRow, SignedResponse, Store
from ocspd.store.queries import migrations
from tests.conftest import AppClient
from tests.helpers import (
    GOOD_SERIAL,
    TestPki,
    assert_verified,
    counting_signers,
    openssl_ocsp,
    query,
    request_der,
    run,
    verify_response,
)
from tests.pg import PgServer


async def test_migrations_run_twice_are_a_no_op(pg_server: PgServer) -> None:
    name = pg_server.create_database()
    try:
        store = Store(pg_server.dsn_for(name))
        assert await store.migrate() == [m.name for m in migrations()]
        assert await store.migrate() == []
        rows = query(pg_server.dsn_for(name), "SELECT version FROM ocspd_migrations ORDER BY version")
        assert [r[0] for r in rows] == [m.version for m in migrations()]
    finally:
        pg_server.drop_database(name)


async def test_concurrent_migrations_do_not_fail(pg_server: PgServer) -> None:
    name = pg_server.create_database()
    try:
        stores = [Store(pg_server.dsn_for(name)) for _ in range(4)]
        results = await asyncio.gather(*(s.migrate() for s in stores))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(m.name for m in migrations())  # each applied exactly once
    finally:
        pg_server.drop_database(name)


def test_db_migrate_command_is_idempotent(pg_server: PgServer, db_pki: TestPki) -> None:
    name = pg_server.create_database()
    try:
        env = {"OCSPD_DATABASE_DSN": pg_server.dsn_for(name)}
        first = run("db", "migrate", "--config", str(db_pki.config_path), env=env)
        assert first.returncode == 0, first.stderr
        assert "applied 0001_" in first.stdout
        second = run("db", "migrate", "--config", str(db_pki.config_path), env=env)
        assert second.returncode == 0, second.stderr
        assert "up to date" in second.stdout
    finally:
        pg_server.drop_database(name)


def test_serials_are_normalised_and_checked_in_sql(pg_dsn: str) -> None:
    assert query(pg_dsn, "SELECT ocspd_serial('0x00:1A:2b')") == [("1a2b",)]
    with pytest.raises(psycopg2.errors.CheckViolation):
        query(pg_dsn, "INSERT INTO ocspd_certificates (issuer_id, serial) VALUES ('x', '0A')")


def test_status_change_deletes_stored_responses_in_the_same_transaction(pg_dsn: str) -> None:
    query(pg_dsn, "SELECT ocspd_add_certificate('ca', '1')")
    version = query(pg_dsn, "SELECT version FROM ocspd_certificates")[0][0]
    query(
        pg_dsn,
        "INSERT INTO ocspd_responses VALUES ('ca', '1', 'sha1', '\\x00', 'good', now(), now(), now(), %s)",
        version,
    )
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("UPDATE ocspd_certificates SET status = 'revoked', revoked_at = now()")
            cur.execute("SELECT count(*) FROM ocspd_responses")
            assert cur.fetchone() == (0,)  # gone before commit, in the writer's own transaction
        conn.rollback()
    finally:
        conn.close()
    assert query(pg_dsn, "SELECT count(*) FROM ocspd_responses") == [(1,)]


def test_unchanged_reimport_bumps_no_version(pg_dsn: str, db_pki: TestPki) -> None:
    before = query(pg_dsn, "SELECT serial, version FROM ocspd_certificates ORDER BY serial")
    query(pg_dsn, "UPDATE ocspd_certificates SET not_after = not_after")
    assert query(pg_dsn, "SELECT serial, version FROM ocspd_certificates ORDER BY serial") == before


async def test_presigned_responses_are_served_by_a_fresh_replica_without_signing(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    result = run("presign", "--config", str(db_pki.config_path))
    assert result.returncode == 0, result.stderr
    assert "presigned issuer=test-ca hash=sha1 stored=2" in result.stderr
    assert query(pg_dsn, "SELECT count(*) FROM ocspd_responses") == [(4,)]  # 2 certificates x sha1, sha256
    signers = counting_signers(db_pki)
    client = await ocspd_client(db_pki, signers=signers)
    for name in ("good", "revoked"):
        resp = await client.post("/", data=request_der(db_pki.leaves[name].cert, db_pki.ca.cert))
        verify_response(await resp.read(), db_pki)
    assert signers["test-ca"].count == 0
    again = run("presign", "--config", str(db_pki.config_path))
    assert "presigned issuer=test-ca hash=sha1 stored=0" in again.stderr  # nothing left to do


async def test_refresh_resigns_each_due_row_once_across_two_replicas(db_pki: TestPki, pg_dsn: str) -> None:
    rows = 300
    query(
        pg_dsn,
        "INSERT INTO ocspd_certificates (issuer_id, serial) SELECT 'test-ca', to_hex(g) FROM generate_series(1, %s) g",
        rows,
    )
    config = db_pki.config()
    store = Store(pg_dsn)
    responder = Responder(config, load_signers(config), {"test-ca": store})
    await store.open()
    try:
        # Responses that are already due (refresh_at in the past).
        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=20)
        certificates = query(pg_dsn, "SELECT serial, version FROM ocspd_certificates")
        good = [(int(s, 16), CertStatus(Status.GOOD, version=v)) for s, v in certificates]
        batch = [
            SignedResponse(n, "sha1", await responder.sign_stored("test-ca", n, "sha1", st), st.version)
            for n, st in good
        ]
        signer = responder.issuers["test-ca"].signer.fingerprint
        assert await store.responses.store_many("test-ca", signer, batch) == len(batch)
        query(pg_dsn, "UPDATE ocspd_responses SET refresh_at = %s", past)
    finally:
        await store.close()

    signed: Counter[tuple[int, str]] = Counter()

    async def sign(row: DueRow) -> Any:
        signed[(row.serial, row.hash_alg)] += 1
        return await responder.sign_stored(row.issuer_id, row.serial, row.hash_alg, row.status)

    async def replica() -> int:
        replica_store = Store(pg_dsn)
        await replica_store.open()
        total = 0
        try:
            while done := await replica_store.refresh_due({"test-ca": signer}, sign, lead=dt.timedelta(0), limit=25):
                total += done
        finally:
            await replica_store.close()
        return total

    first, second = await asyncio.gather(replica(), replica())
    assert first + second == len(batch)
    assert first > 0 and second > 0  # the work was shared
    assert set(signed.values()) == {1}  # and no row was signed twice
    assert query(pg_dsn, "SELECT count(*) FROM ocspd_responses WHERE refresh_at <= now()") == [(0,)]


async def test_refresher_task_keeps_stored_responses_fresh(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    from ocspd.app import RefreshSettings

    client = await ocspd_client(db_pki, refresh=RefreshSettings(interval=0.05, lead=dt.timedelta(hours=13)))
    await asyncio.wait_for(client.app[LISTENER].ever_connected.wait(), 10)
    der = request_der(db_pki.leaves["good"].cert, db_pki.ca.cert)
    first = await (await client.post("/", data=der)).read()
    stored = query(pg_dsn, "SELECT this_update FROM ocspd_responses WHERE serial = %s", f"{GOOD_SERIAL:x}")
    # With a lead longer than half the validity, every stored row is due at once.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while query(pg_dsn, "SELECT this_update FROM ocspd_responses WHERE serial = %s", f"{GOOD_SERIAL:x}") == stored:
        assert loop.time() < deadline, "refresher did not re-sign the row"
        await asyncio.sleep(0.05)
    assert ocsp.load_der_ocsp_response(first).certificate_status is ocsp.OCSPCertStatus.GOOD


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
async def test_openssl_verifies_answers_from_the_postgres_source(ocspd_server: Any, db_pki: TestPki) -> None:
    from ocspd.app import init_app

    server = await ocspd_server(init_app(db_pki.config()))
    url = f"http://127.0.0.1:{server.port}/"
    for name, status in (("good", "good"), ("revoked", "revoked"), ("unissued", "unknown")):
        code, output = await openssl_ocsp(db_pki, url, name)
        assert_verified(code, output, db_pki.leaf_paths[name], status)


def test_array_parameters_round_trip_any_text(pg_dsn: str) -> None:
    from ocspd.store.values import number_array, text_array

    texts: list[str | None] = [
        "plain",
        'quo"te',
        "back\\slash",
        "com,ma",
        "{brace}",
        " spaced ",
        "",
        "NULL",
        "ünï",
        'a\\"b',
        None,
    ]
    assert query(pg_dsn, "SELECT %s::text[]", text_array(texts)) == [(texts,)]
    moments = [dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC), None]
    literal = text_array([m.isoformat() if m else None for m in moments])
    assert query(pg_dsn, "SELECT %s::timestamptz[]", literal) == [(moments,)]
    numbers = [0, -1, 2**62, 1764233000.5]
    assert query(pg_dsn, "SELECT %s::float8[], %s::bigint[]", number_array(numbers), number_array([7, 2**62])) == [
        (numbers, [7, 2**62])
    ]


async def test_write_backs_beyond_the_bound_are_dropped_not_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    """The response tier is a cache: with the database unusable, write-backs are counted and let go."""
    from ocspd.cache import Entry, windows
    from ocspd.status import Served
    from ocspd.store import writes

    monkeypatch.setattr(writes, "WRITE_BEHIND_MAX_PENDING", 2)
    monkeypatch.setattr(writes, "WRITE_BEHIND_BATCH", 2)  # the second write-back sends the batch
    store = Store("host=127.0.0.1 port=1 dbname=none")  # never opened: every write fails
    now = dt.datetime.now(dt.UTC).timestamp()
    entry = Entry(b"\x30\x00", Served.GOOD, windows()[(now, now + 3600)])
    for serial in (1, 2, 3):  # the third finds two being written
        store.write_back("ca", serial, "sha1", entry, 1, "signer")
    await store.flush()
    assert store.take_write_back_counts() == {"written": 0, "refused": 0, "failed": 2, "dropped": 1}
    store.write_back("ca", 4, "sha1", entry, 1, "signer")  # room again once the failed ones are let go
    await store.flush()
    assert store.take_write_back_counts()["failed"] == 1
    await store.close()


@pytest.mark.parametrize("reason", [r.name for r in REASONS])
def test_the_database_accepts_exactly_the_revocation_reasons_of_the_one_table(pg_dsn: str, reason: str) -> None:
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(
                    "INSERT INTO ocspd_certificates (issuer_id, serial, status, revoked_at, reason)"
                    " VALUES ('t', '1', 'revoked', now(), %s) RETURNING reason",
                    (reason,),
                )
                stored = cur.fetchone()
            except psycopg2.IntegrityError:
                stored = None
    finally:
        conn.close()
    revocable = REASON_BY_NAME[reason].revocation
    assert (stored is not None) == revocable
    if stored is not None:  # unspecified is kept as no reason, as answers carry it
        assert stored[0] == (None if reason == "unspecified" else reason)


async def test_the_refresh_loop_says_a_bug_and_goes_on(
    ocspd_client: AppClient, db_pki: TestPki, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception in a round (a bug) used to end the shared refresh for good,
    without a line: now it is logged at ERROR with its traceback, and the next round runs."""
    client = await ocspd_client(db_pki)
    store, responder = client.app[STORE], client.app[RESPONDER]
    real, rounds = store.refresh_due, 0

    async def first_round_breaks(*args: Any, **kwargs: Any) -> int:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise RuntimeError("a bug in a round")
        signed: int = await real(*args, **kwargs)
        return signed

    monkeypatch.setattr(store, "refresh_due", first_round_breaks)
    settings = RefreshSettings(interval=0.01, lead=dt.timedelta(minutes=1))
    task = asyncio.create_task(refresh_loop(store, responder, ["test-ca"], settings))
    try:
        for _ in range(500):
            if rounds >= 3:
                break
            await asyncio.sleep(0.01)
        assert rounds >= 3, "the loop stopped after the failing round"
    finally:
        task.cancel()
    crashed = [r for r in caplog.records if r.getMessage() == "refresh_crashed"]
    assert len(crashed) == 1 and crashed[0].levelname == "ERROR" and crashed[0].exc_info
    assert responder.metrics.registry.get_sample_value("ocspd_background_errors_total", {"loop": "refresh"}) == 1


async def test_the_gauge_loop_says_a_bug_and_goes_on(
    ocspd_client: AppClient, test_pki: TestPki, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ocspd_app, "GAUGE_SECONDS", 0.01)
    client = await ocspd_client(test_pki)
    memory = client.app[RESPONDER].memory
    real, sweeps = memory.sweep, 0

    def breaks_twice() -> None:
        nonlocal sweeps
        sweeps += 1
        if sweeps <= 2:
            raise RuntimeError("a bug in a sweep")
        real()

    monkeypatch.setattr(memory, "sweep", breaks_twice)
    for _ in range(500):
        if sweeps >= 4:
            break
        await asyncio.sleep(0.01)
    assert sweeps >= 4, "the gauge loop stopped after a failing round"
    failed = [r for r in caplog.records if r.getMessage() == "gauges_failed"]
    assert len(failed) == 1 and failed[0].levelname == "ERROR" and failed[0].exc_info  # the second is held back
    errors = client.app[METRICS].registry.get_sample_value("ocspd_background_errors_total", {"loop": "gauges"})
    assert errors == 2  # both counted, the second not said
