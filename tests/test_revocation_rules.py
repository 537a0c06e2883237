"""Revocation is one-way, whoever writes (SPEC §3 invariant 9, §4; issue 10).

Every path a status can change by (the CLI, an import, the SQL functions,
plain SQL) on a real PostgreSQL, each checked twice: in the table, and as
served by a running replica (in-process, served as ``ocspd serve`` serves
it). The user-visible messages come from the CLI run as a subprocess.

A served answer is read two ways: a plain request (the memory tier, kept
fresh by NOTIFY) and a request with a nonce (signed live from the status
source), so "still revoked" is checked against the database itself, not
only against a cached answer that a missing notification would leave alone.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from ocspd import pki
from tests.conftest import AppClient
from tests.helpers import (
    GOOD,
    GOOD_SERIAL,
    HOLD_AT,
    ISSUER,
    LATER_AT,
    NOT_AFTER,
    REVOKED_AT,
    REVOKED_SERIAL,
    RULE_VIOLATION,
    UNISSUED_SERIAL,
    UNKNOWN,
    Reason,
    ServedAnswer,
    Status,
    TestPki,
    answer,
    assert_ok,
    assert_one_line_error,
    assert_refused,
    becomes,
    import_summary,
    index_file,
    leaf,
    ocspd,
    query,
    refused_by_database,
    replica,
    request_der,
    revoke_args,
    revoke_sql,
    revoked,
    rfc3339,
    row,
    sql,
    stays,
    unhold_args,
)

# -- a permanent revocation against every writer ----------------------------------------------------

WRITERS = ["cert-add", "pem-import", "der-import", "index-v-import", "sql-add-certificate", "sql-update-to-good"]


@pytest.mark.parametrize("writer", WRITERS)
async def test_permanent_revocation_is_kept_whatever_writes_good(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, tmp_path: Path, writer: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "good")
    assert await answer(client, db_pki, cert) == GOOD  # cached now
    assert_ok(
        await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "keyCompromise", LATER_AT)),
        f"revoked issuer={ISSUER} serial={GOOD_SERIAL:X}",
    )
    expected = revoked(Reason.key_compromise, LATER_AT)
    await becomes(client, db_pki, cert, expected)
    before = await row(pg_dsn, GOOD_SERIAL)
    assert before is not None and before.status == "revoked"

    if writer == "cert-add":
        result = await ocspd(db_pki, "cert", "add", "--issuer", ISSUER, "--serial", f"{GOOD_SERIAL:X}")
        assert_ok(result, "already revoked", "kept")
    elif writer in ("pem-import", "der-import", "index-v-import"):
        if writer == "pem-import":
            path = db_pki.leaf_paths["good"]
        elif writer == "der-import":
            path = tmp_path / "good.der"
            path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        else:
            path = index_file(tmp_path / "index.txt", pki.index_line(cert))
        result = await ocspd(db_pki, "cert", "import", "--issuer", ISSUER, str(path))
        assert_ok(result)
        summary = import_summary(result.stderr)
        assert (summary.total, summary.new, summary.kept) == (1, 0, 1), summary.line
    elif writer == "sql-add-certificate":
        await sql(pg_dsn, "SELECT ocspd_add_certificate(%s, %s, %s)", ISSUER, f"{GOOD_SERIAL:x}", NOT_AFTER)
    else:
        await refused_by_database(
            pg_dsn,
            GOOD_SERIAL,
            "UPDATE ocspd_certificates SET status = 'good', revoked_at = NULL, reason = NULL"
            " WHERE issuer_id = %s AND serial = %s",
            ISSUER,
            f"{GOOD_SERIAL:x}",
        )

    after = await row(pg_dsn, GOOD_SERIAL)
    assert after is not None and after.revocation == before.revocation
    await stays(client, db_pki, cert, expected)


async def test_permanent_revocation_survives_every_writer_in_turn(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, tmp_path: Path
) -> None:
    """The issue's sequence: revoke, then cert add, PEM import, index.txt V import, SQL UPDATE to good."""
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "good")
    assert await answer(client, db_pki, cert) == GOOD
    assert_ok(await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "keyCompromise")), "revoked")
    stored = await row(pg_dsn, GOOD_SERIAL)
    assert stored is not None and stored.revoked_at is not None and stored.reason == "keyCompromise"
    expected = revoked(Reason.key_compromise, stored.revoked_at)
    await becomes(client, db_pki, cert, expected)

    assert_ok(
        await ocspd(db_pki, "cert", "add", "--issuer", ISSUER, "--serial", f"{GOOD_SERIAL:x}"),
        "already revoked",
        "kept",
    )
    await stays(client, db_pki, cert, expected)
    pem = await ocspd(db_pki, "cert", "import", "--issuer", ISSUER, str(db_pki.leaf_paths["good"]))
    assert_ok(pem)
    assert import_summary(pem.stderr).kept == 1
    await stays(client, db_pki, cert, expected)
    index = await ocspd(
        db_pki, "cert", "import", "--issuer", ISSUER, str(index_file(tmp_path / "index.txt", pki.index_line(cert)))
    )
    assert_ok(index)
    assert import_summary(index.stderr).kept == 1
    await stays(client, db_pki, cert, expected)
    await refused_by_database(
        pg_dsn,
        GOOD_SERIAL,
        "UPDATE ocspd_certificates SET status = 'good', revoked_at = NULL, reason = NULL"
        " WHERE issuer_id = %s AND serial = %s",
        ISSUER,
        f"{GOOD_SERIAL:x}",
    )
    after = await row(pg_dsn, GOOD_SERIAL)
    assert after is not None and after.revocation == stored.revocation
    assert after.not_after == cert.not_valid_after_utc  # what the imports may add
    await stays(client, db_pki, cert, expected)


@pytest.mark.parametrize("at", [None, REVOKED_AT], ids=["no-time", "same-time"])
async def test_the_same_revocation_again_is_unchanged(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, at: dt.datetime | None
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "revoked")
    expected = revoked(Reason.key_compromise, REVOKED_AT)
    assert await answer(client, db_pki, cert) == expected
    before = await row(pg_dsn, REVOKED_SERIAL)
    assert before is not None
    result = await ocspd(db_pki, *revoke_args(REVOKED_SERIAL, "keyCompromise", at))
    assert_ok(result)
    assert "already revoked" in result.stdout and "unchanged" in result.stdout, result.stdout
    assert await revoke_sql(pg_dsn, REVOKED_SERIAL, "keyCompromise", at) == before.version  # the current version
    assert await row(pg_dsn, REVOKED_SERIAL) == before  # not even a new version: no notification
    await stays(client, db_pki, cert, expected)


async def test_status_version_of_a_kept_revocation_does_not_change_on_import(
    db_pki: TestPki, pg_dsn: str, tmp_path: Path
) -> None:
    """An import of the same R line is not a write: no new version, hence no invalidation storm."""
    before = await row(pg_dsn, REVOKED_SERIAL)
    line = pki.index_line(leaf(db_pki, "revoked"), revoked_at=REVOKED_AT, reason="keyCompromise")
    result = await ocspd(db_pki, "cert", "import", "--issuer", ISSUER, str(index_file(tmp_path / "i.txt", line)))
    assert_ok(result)
    assert import_summary(result.stderr).new == 0
    after = await row(pg_dsn, REVOKED_SERIAL)
    assert before is not None and after is not None and after.revocation == before.revocation


# -- amendments -----------------------------------------------------------------------------------

AMENDMENTS: dict[str, tuple[str | None, dt.datetime | None, Reason | None, dt.datetime | None]] = {
    # change: (--reason, --at, served reason after --amend, served time after --amend; None = not pinned)
    "other-reason": ("superseded", None, Reason.superseded, None),
    "other-time": ("keyCompromise", LATER_AT, Reason.key_compromise, LATER_AT),
    "other-reason-and-time": ("cessationOfOperation", LATER_AT, Reason.cessation_of_operation, LATER_AT),
    "reason-dropped": (None, REVOKED_AT, None, REVOKED_AT),
}


@pytest.mark.parametrize("change", list(AMENDMENTS))
@pytest.mark.parametrize("via", ["cli", "sql"])
async def test_changing_a_permanent_revocation_is_refused_without_amend_and_applied_with_it(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, change: str, via: str
) -> None:
    reason, at, new_reason, new_at = AMENDMENTS[change]
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "revoked")
    expected = revoked(Reason.key_compromise, REVOKED_AT)
    assert await answer(client, db_pki, cert) == expected
    before = await row(pg_dsn, REVOKED_SERIAL)

    if via == "cli":
        assert_refused(await ocspd(db_pki, *revoke_args(REVOKED_SERIAL, reason, at)), "already revoked", "--amend")
    else:
        await refused_by_database(
            pg_dsn, REVOKED_SERIAL, "SELECT ocspd_revoke(%s, %s, %s, %s)", ISSUER, f"{REVOKED_SERIAL:x}", reason, at
        )
    assert await row(pg_dsn, REVOKED_SERIAL) == before
    await stays(client, db_pki, cert, expected)

    if via == "cli":
        assert_ok(await ocspd(db_pki, *revoke_args(REVOKED_SERIAL, reason, at, amend=True)), "revoked")
    else:
        assert before is not None
        assert await revoke_sql(pg_dsn, REVOKED_SERIAL, reason, at, amend=True) > before.version
    after = await row(pg_dsn, REVOKED_SERIAL)
    assert after is not None and after.status == "revoked" and after.revoked_at is not None
    assert after.reason == (new_reason.value if new_reason else None)
    if new_at is not None:
        assert after.revoked_at == new_at
    await becomes(client, db_pki, cert, revoked(new_reason, new_at or after.revoked_at))


@pytest.mark.parametrize("via", ["cli", "sql-function", "sql-update"])
async def test_an_amendment_can_never_make_a_permanent_revocation_a_hold(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, via: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "revoked")
    expected = revoked(Reason.key_compromise, REVOKED_AT)
    assert await answer(client, db_pki, cert) == expected
    before = await row(pg_dsn, REVOKED_SERIAL)
    if via == "cli":
        result = await ocspd(db_pki, *revoke_args(REVOKED_SERIAL, "certificateHold", amend=True))
        assert_refused(result)
        assert "certificateHold" in result.stderr or "hold" in result.stderr, result.stderr
    elif via == "sql-function":
        await refused_by_database(
            pg_dsn,
            REVOKED_SERIAL,
            "SELECT ocspd_revoke(%s, %s, 'certificateHold', NULL, true)",
            ISSUER,
            f"{REVOKED_SERIAL:x}",
        )
    else:
        await refused_by_database(
            pg_dsn,
            REVOKED_SERIAL,
            "UPDATE ocspd_certificates SET reason = 'certificateHold' WHERE issuer_id = %s AND serial = %s",
            ISSUER,
            f"{REVOKED_SERIAL:x}",
        )
    assert await row(pg_dsn, REVOKED_SERIAL) == before
    await stays(client, db_pki, cert, expected)
    assert_refused(await ocspd(db_pki, *unhold_args(REVOKED_SERIAL)))  # still permanent
    await stays(client, db_pki, cert, expected)


@pytest.mark.parametrize("column", ["issuer_id", "serial"])
async def test_the_key_of_a_permanent_revocation_cannot_change(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, column: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "revoked")
    expected = revoked(Reason.key_compromise, REVOKED_AT)
    before = await row(pg_dsn, REVOKED_SERIAL)
    new_value = "other-ca" if column == "issuer_id" else "abcdef"
    await refused_by_database(
        pg_dsn,
        REVOKED_SERIAL,
        f"UPDATE ocspd_certificates SET {column} = %s WHERE issuer_id = %s AND serial = %s",
        new_value,
        ISSUER,
        f"{REVOKED_SERIAL:x}",
    )
    assert await row(pg_dsn, REVOKED_SERIAL) == before
    assert (await sql(pg_dsn, "SELECT count(*) FROM ocspd_certificates"))[0][0] == 2
    await stays(client, db_pki, cert, expected)


# -- holds ----------------------------------------------------------------------------------------


async def _hold_good_leaf(client: TestClient[Any, Any], db_pki: TestPki) -> ServedAnswer:
    cert = leaf(db_pki, "good")
    assert await answer(client, db_pki, cert) == GOOD
    assert_ok(await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "certificateHold", HOLD_AT)), "revoked")
    held = revoked(Reason.certificate_hold, HOLD_AT)
    await becomes(client, db_pki, cert, held)
    return held


@pytest.mark.parametrize("via", ["cli", "sql"])
async def test_a_hold_is_released_only_by_unhold_and_is_served_good_again(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, via: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "good")
    held = await _hold_good_leaf(client, db_pki)
    before = await row(pg_dsn, GOOD_SERIAL)
    assert before is not None and before.reason == "certificateHold" and before.revoked_at == HOLD_AT
    # Plain SQL cannot release it, nor can cert add or an import saying V.
    await refused_by_database(
        pg_dsn,
        GOOD_SERIAL,
        "UPDATE ocspd_certificates SET status = 'good', revoked_at = NULL, reason = NULL"
        " WHERE issuer_id = %s AND serial = %s",
        ISSUER,
        f"{GOOD_SERIAL:x}",
    )
    assert_ok(
        await ocspd(db_pki, "cert", "add", "--issuer", ISSUER, "--serial", f"{GOOD_SERIAL:X}"),
        "already revoked",
        "kept",
    )
    assert_ok(await ocspd(db_pki, "cert", "import", "--issuer", ISSUER, str(db_pki.leaf_paths["good"])))
    still = await row(pg_dsn, GOOD_SERIAL)
    assert still is not None and still.revocation == before.revocation
    await stays(client, db_pki, cert, held)

    if via == "cli":
        assert_ok(await ocspd(db_pki, *unhold_args(GOOD_SERIAL)), "released")
    else:
        version = (await sql(pg_dsn, "SELECT ocspd_unhold(%s, %s)", ISSUER, f"{GOOD_SERIAL:x}"))[0][0]
        assert version > before.version
    after = await row(pg_dsn, GOOD_SERIAL)
    assert after is not None and (after.status, after.revoked_at, after.reason) == ("good", None, None)
    await becomes(client, db_pki, cert, GOOD)
    # Released once: a second unhold has nothing to release.
    assert_refused(await ocspd(db_pki, *unhold_args(GOOD_SERIAL)))
    await stays(client, db_pki, cert, GOOD)


UNHOLD_REFUSED = ["keyCompromise", "no-reason", "good", "unlisted"]


@pytest.mark.parametrize("state", UNHOLD_REFUSED)
async def test_unhold_is_refused_unless_the_certificate_is_on_hold(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, state: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    if state == "keyCompromise":
        name, serial, expected = "revoked", REVOKED_SERIAL, revoked(Reason.key_compromise, REVOKED_AT)
    elif state == "no-reason":
        name, serial, expected = "good", GOOD_SERIAL, revoked(None, LATER_AT)
        assert_ok(await ocspd(db_pki, *revoke_args(GOOD_SERIAL, at=LATER_AT)))
    elif state == "good":
        name, serial, expected = "good", GOOD_SERIAL, GOOD
    else:
        name, serial, expected = "unissued", UNISSUED_SERIAL, UNKNOWN
    cert = leaf(db_pki, name)
    await becomes(client, db_pki, cert, expected)
    before = await row(pg_dsn, serial)
    assert_refused(await ocspd(db_pki, *unhold_args(serial)))
    if state == "unlisted":
        with pytest.raises(psycopg2.IntegrityError) as info:
            await sql(pg_dsn, "SELECT ocspd_unhold(%s, %s)", ISSUER, f"{serial:x}")
        assert info.value.pgcode == RULE_VIOLATION
    else:
        await refused_by_database(pg_dsn, serial, "SELECT ocspd_unhold(%s, %s)", ISSUER, f"{serial:x}")
    assert await row(pg_dsn, serial) == before
    await stays(client, db_pki, cert, expected)


@pytest.mark.parametrize("amend", [False, True], ids=["", "amend"])
@pytest.mark.parametrize("at", [None, LATER_AT], ids=["now", "given-time"])
@pytest.mark.parametrize("via", ["cli", "sql"])
async def test_a_hold_may_become_a_permanent_revocation_at_the_new_time(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, at: dt.datetime | None, via: str, amend: bool
) -> None:
    """Re-revoking a hold needs no --amend, and --amend (harmless here) does not change what it does."""
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "good")
    await _hold_good_leaf(client, db_pki)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    if via == "cli":
        assert_ok(await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "keyCompromise", at, amend)), "revoked")
    else:
        await revoke_sql(pg_dsn, GOOD_SERIAL, "keyCompromise", at, amend)
    after = await row(pg_dsn, GOOD_SERIAL)
    assert after is not None and after.reason == "keyCompromise" and after.revoked_at is not None
    if at is None:  # the new time: now, not the hold's
        assert started - dt.timedelta(seconds=5) <= after.revoked_at <= dt.datetime.now(dt.UTC)
    else:
        assert after.revoked_at == at
    expected = revoked(Reason.key_compromise, after.revoked_at)
    await becomes(client, db_pki, cert, expected)
    # Permanent from now on.
    assert_refused(await ocspd(db_pki, *unhold_args(GOOD_SERIAL)))
    assert_refused(await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "certificateHold")), "already revoked", "--amend")
    await refused_by_database(
        pg_dsn,
        GOOD_SERIAL,
        "UPDATE ocspd_certificates SET status = 'good', revoked_at = NULL, reason = NULL"
        " WHERE issuer_id = %s AND serial = %s",
        ISSUER,
        f"{GOOD_SERIAL:x}",
    )
    assert await row(pg_dsn, GOOD_SERIAL) == after
    await stays(client, db_pki, cert, expected)


async def test_changing_only_the_time_of_a_hold_needs_amend(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "good")
    held = await _hold_good_leaf(client, db_pki)
    before = await row(pg_dsn, GOOD_SERIAL)
    unchanged = await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "certificateHold"))
    assert_ok(unchanged, "already revoked", "unchanged")
    assert_refused(await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "certificateHold", LATER_AT)), "--amend")
    await refused_by_database(
        pg_dsn,
        GOOD_SERIAL,
        "UPDATE ocspd_certificates SET revoked_at = %s WHERE issuer_id = %s AND serial = %s",
        LATER_AT,
        ISSUER,
        f"{GOOD_SERIAL:x}",
    )
    assert await row(pg_dsn, GOOD_SERIAL) == before
    await stays(client, db_pki, cert, held)
    assert_ok(await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "certificateHold", LATER_AT, amend=True)))
    await becomes(client, db_pki, cert, revoked(Reason.certificate_hold, LATER_AT))


# -- what is not a revocation ----------------------------------------------------------------------


@pytest.mark.parametrize("via", ["cli", "sql-function", "sql-insert", "sql-update"])
async def test_a_revocation_time_in_the_future_is_refused(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, via: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "good")
    assert await answer(client, db_pki, cert) == GOOD
    future = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=2)
    if via == "cli":
        assert_one_line_error(await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "keyCompromise", future)), "--at")
    elif via == "sql-function":
        await refused_by_database(
            pg_dsn, GOOD_SERIAL, "SELECT ocspd_revoke(%s, %s, 'keyCompromise', %s)", ISSUER, f"{GOOD_SERIAL:x}", future
        )
    elif via == "sql-insert":
        await refused_by_database(
            pg_dsn,
            UNISSUED_SERIAL,
            "INSERT INTO ocspd_certificates (issuer_id, serial, status, revoked_at) VALUES (%s, %s, 'revoked', %s)",
            ISSUER,
            f"{UNISSUED_SERIAL:x}",
            future,
        )
        assert await row(pg_dsn, UNISSUED_SERIAL) is None
    else:
        await refused_by_database(
            pg_dsn,
            GOOD_SERIAL,
            "UPDATE ocspd_certificates SET status = 'revoked', revoked_at = %s WHERE issuer_id = %s AND serial = %s",
            future,
            ISSUER,
            f"{GOOD_SERIAL:x}",
        )
    stored = await row(pg_dsn, GOOD_SERIAL)
    assert stored is not None and stored.status == "good"
    await stays(client, db_pki, cert, GOOD)


@pytest.mark.parametrize("via", ["cli", "sql-function", "sql-update", "index-import"])
async def test_remove_from_crl_is_refused_as_a_revocation_reason(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, tmp_path: Path, via: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "good")
    assert await answer(client, db_pki, cert) == GOOD
    if via == "cli":
        assert_one_line_error(await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "removeFromCRL")), "--reason")
    elif via == "sql-function":
        await refused_by_database(
            pg_dsn, GOOD_SERIAL, "SELECT ocspd_revoke(%s, %s, 'removeFromCRL')", ISSUER, f"{GOOD_SERIAL:x}"
        )
    elif via == "sql-update":
        await refused_by_database(
            pg_dsn,
            GOOD_SERIAL,
            "UPDATE ocspd_certificates SET status = 'revoked', revoked_at = now(), reason = 'removeFromCRL'"
            " WHERE issuer_id = %s AND serial = %s",
            ISSUER,
            f"{GOOD_SERIAL:x}",
        )
    else:
        path = index_file(
            tmp_path / "index.txt",
            pki.index_line(cert, revoked_at=LATER_AT, reason="removeFromCRL"),
            pki.index_line(leaf(db_pki, "unissued"), revoked_at=LATER_AT, reason="removeFromCRL"),
        )
        assert "removeFromCRL" in path.read_text()
        result = await ocspd(db_pki, "cert", "import", "--issuer", ISSUER, str(path))
        assert_ok(result)
        assert "line=1" in result.stderr and "line=2" in result.stderr, result.stderr  # skipped as malformed
        assert await row(pg_dsn, UNISSUED_SERIAL) is None
        await stays(client, db_pki, leaf(db_pki, "unissued"), UNKNOWN)
    stored = await row(pg_dsn, GOOD_SERIAL)
    assert stored is not None and stored.status == "good"
    await stays(client, db_pki, cert, GOOD)


@pytest.mark.parametrize("via", ["cli", "sql-function", "sql-update", "index-import"])
async def test_unspecified_is_stored_as_null_and_served_without_a_reason_code_from_postgres(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, tmp_path: Path, via: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "good")
    assert await answer(client, db_pki, cert) == GOOD
    if via == "cli":
        assert_ok(await ocspd(db_pki, *revoke_args(GOOD_SERIAL, "unspecified", LATER_AT)), "revoked")
    elif via == "sql-function":
        await revoke_sql(pg_dsn, GOOD_SERIAL, "unspecified", LATER_AT)
    elif via == "sql-update":
        await sql(
            pg_dsn,
            "UPDATE ocspd_certificates SET status = 'revoked', revoked_at = %s, reason = 'unspecified'"
            " WHERE issuer_id = %s AND serial = %s",
            LATER_AT,
            ISSUER,
            f"{GOOD_SERIAL:x}",
        )
    else:
        line = pki.index_line(cert, revoked_at=LATER_AT, reason="unspecified")
        assert line.split("\t")[2].endswith(",unspecified")
        assert_ok(
            await ocspd(db_pki, "cert", "import", "--issuer", ISSUER, str(index_file(tmp_path / "index.txt", line)))
        )
    stored = await row(pg_dsn, GOOD_SERIAL)
    assert stored is not None and (stored.status, stored.revoked_at, stored.reason) == ("revoked", LATER_AT, None)
    await becomes(client, db_pki, cert, revoked(None, LATER_AT))
    der = request_der(cert, db_pki.ca.cert)
    resp = await client.post("/", data=der)
    assert ocsp.load_der_ocsp_response(await resp.read()).revocation_reason is None
    # unspecified and no reason are one revocation: saying either again changes nothing.
    for reason in ("unspecified", None):
        result = await ocspd(db_pki, *revoke_args(GOOD_SERIAL, reason, LATER_AT))
        assert_ok(result, "already revoked", "unchanged")
    assert await row(pg_dsn, GOOD_SERIAL) == stored


async def test_unspecified_in_index_txt_is_served_without_a_reason_code(
    ocspd_client: AppClient, test_pki: TestPki
) -> None:
    test_pki.revoke_in_index("good", reason="unspecified")
    assert ",unspecified\t" in test_pki.index_path.read_text()
    client = await ocspd_client(test_pki)
    cert = leaf(test_pki, "good")
    resp = await client.post("/", data=request_der(cert, test_pki.ca.cert))
    response = ocsp.load_der_ocsp_response(await resp.read())
    assert response.certificate_status is Status.REVOKED
    assert response.revocation_reason is None
    live = await answer(client, test_pki, cert, live=True)
    assert live.status is Status.REVOKED and live.reason is None


# -- rows that stay ----------------------------------------------------------------------------------

PAST = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("not_after", [None, NOT_AFTER, PAST], ids=["no-not-after", "unexpired", "expired"])
@pytest.mark.parametrize("reason", ["keyCompromise", "certificateHold"])
async def test_delete_of_a_revoked_row_is_refused_until_the_certificate_expired(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, not_after: dt.datetime | None, reason: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "unissued")
    if not_after is not None:
        assert_ok(
            await ocspd(
                db_pki,
                "cert",
                "add",
                "--issuer",
                ISSUER,
                "--serial",
                f"{UNISSUED_SERIAL:x}",
                "--not-after",
                rfc3339(not_after),
            )
        )
    assert_ok(await ocspd(db_pki, *revoke_args(UNISSUED_SERIAL, reason, LATER_AT)), "revoked")
    expected = revoked(Reason(reason), LATER_AT)
    await becomes(client, db_pki, cert, expected)
    before = await row(pg_dsn, UNISSUED_SERIAL)
    assert before is not None and before.not_after == not_after
    delete = "DELETE FROM ocspd_certificates WHERE issuer_id = %s AND serial = %s"
    if not_after is PAST:
        await sql(pg_dsn, delete, ISSUER, f"{UNISSUED_SERIAL:x}")  # an expired certificate may be pruned
        assert await row(pg_dsn, UNISSUED_SERIAL) is None
        await becomes(client, db_pki, cert, UNKNOWN)
    else:
        await refused_by_database(pg_dsn, UNISSUED_SERIAL, delete, ISSUER, f"{UNISSUED_SERIAL:x}")
        assert await row(pg_dsn, UNISSUED_SERIAL) == before
        await stays(client, db_pki, cert, expected)


async def test_truncate_is_refused_while_the_table_holds_permanent_revocations(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    with pytest.raises(psycopg2.IntegrityError) as info:
        await sql(pg_dsn, "TRUNCATE ocspd_certificates")
    assert info.value.pgcode == RULE_VIOLATION, info.value
    assert (await sql(pg_dsn, "SELECT count(*) FROM ocspd_certificates"))[0][0] == 2
    await stays(client, db_pki, leaf(db_pki, "revoked"), revoked(Reason.key_compromise, REVOKED_AT))
    await stays(client, db_pki, leaf(db_pki, "good"), GOOD)


def test_truncate_of_a_table_without_revocations_is_allowed(pg_dsn: str) -> None:
    query(pg_dsn, "SELECT ocspd_add_certificate(%s, %s)", ISSUER, "abc")
    query(pg_dsn, "TRUNCATE ocspd_certificates")
    assert query(pg_dsn, "SELECT count(*) FROM ocspd_certificates")[0][0] == 0


# -- the exceptions to the rules belong to the functions, not to whoever SETs a flag ----------------------


@pytest.mark.parametrize("exception", ["amendment", "release"])
async def test_a_plain_update_cannot_borrow_the_functions_exceptions_by_setting_a_flag(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, exception: str
) -> None:
    """Only ocspd_revoke(p_amend => true) amends and only ocspd_unhold() releases: a plain UPDATE stays refused,
    whatever the session has set. (ocspd.amend and ocspd.release_hold are the settings those functions use
    today; in an implementation that does not use them, setting them is harmless and the test still holds.)"""
    client = await replica(ocspd_client, db_pki)
    if exception == "amendment":
        name, serial, expected = "revoked", REVOKED_SERIAL, revoked(Reason.key_compromise, REVOKED_AT)
        statement = (
            "SELECT set_config('ocspd.amend', 'on', false);"
            " UPDATE ocspd_certificates SET reason = 'superseded' WHERE issuer_id = %s AND serial = %s"
        )
    else:
        name, serial, expected = "good", GOOD_SERIAL, await _hold_good_leaf(client, db_pki)
        statement = (
            "SELECT set_config('ocspd.release_hold', 'on', false);"
            " UPDATE ocspd_certificates SET status = 'good', revoked_at = NULL, reason = NULL"
            " WHERE issuer_id = %s AND serial = %s"
        )
    before = await row(pg_dsn, serial)
    await refused_by_database(pg_dsn, serial, statement, ISSUER, f"{serial:x}")
    assert await row(pg_dsn, serial) == before
    await stays(client, db_pki, leaf(db_pki, name), expected)


# -- the CLI in-process (what the property test relies on) ------------------------------------------


def test_cli_main_in_process_writes_to_the_current_stdout_and_stderr(db_pki: TestPki) -> None:
    """``ocspd.cli.main`` prints to sys.stdout/sys.stderr as they are at the call (redirect_stdout captures it)."""
    import contextlib
    import io
    import logging

    from ocspd import cli

    def call(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*args, "--config", str(db_pki.config_path)])
        return code, out.getvalue(), err.getvalue()

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code, out, err = call("cert", "add", "--issuer", ISSUER, "--serial", f"{REVOKED_SERIAL:X}")
        assert code == 0 and "already revoked" in out + err and "kept" in out + err, (out, err)
        code, out, err = call(*revoke_args(REVOKED_SERIAL, "keyCompromise"))
        assert code == 0 and "unchanged" in out, (out, err)
        code, out, err = call(*revoke_args(REVOKED_SERIAL, "superseded"))
        assert code == 1 and "--amend" in err, (out, err)
    finally:
        root.handlers[:] = handlers  # cli.main pointed the root logger at our StringIO
        root.setLevel(level)
