"""Imports merge and never downgrade; one source of truth per issuer (issue 10, SPEC §3 invariant 9).

``cert add`` and ``cert import`` (PEM, DER, index.txt) against what the table
already says, checked in the table and as served by a running replica; the
duplicates an import can hold; and the commands an issuer served from
index.txt refuses. Helpers (shared with ``tests/test_revocation_rules.py``) are in ``tests/helpers.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

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
    UNISSUED_SERIAL,
    UNKNOWN,
    Reason,
    ServedAnswer,
    Status,
    TestPki,
    answer,
    assert_ok,
    assert_one_line_error,
    becomes,
    eventually,
    import_summary,
    index_file,
    leaf,
    ocspd,
    replica,
    revoke_args,
    revoked,
    row,
    sql,
    stays,
    unhold_args,
)

# -- imports: merged, never downgraded --------------------------------------------------------------


def _leaves(test_pki: TestPki, directory: Path, n: int, first: int) -> list[tuple[x509.Certificate, Path]]:
    out = []
    for i in range(n):
        cert = pki.make_leaf(test_pki.ca, first + i, f"dup{i}.example.test").cert
        path = directory / f"{first + i:X}.pem"
        pki.write_cert(path, cert)
        out.append((cert, path))
    return out


@pytest.mark.parametrize(
    "layout", ["same-pem-twice", "easy-rsa-issued-and-certs-by-serial", "bundle-plus-member", "index-v-then-r-plus-pem"]
)
async def test_an_import_of_duplicated_inputs_imports_each_serial_once(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, tmp_path: Path, layout: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    (a, a_pem), (b, b_pem) = _leaves(db_pki, tmp_path, 2, 0x6000)
    expected: dict[int, ServedAnswer] = {}
    if layout == "same-pem-twice":
        files, serials, merged = [a_pem, a_pem], [a], 1
    elif layout == "easy-rsa-issued-and-certs-by-serial":
        (tmp_path / "issued").mkdir()
        (tmp_path / "certs_by_serial").mkdir()
        issued = tmp_path / "issued" / "dup0.example.test.crt"
        by_serial = tmp_path / "certs_by_serial" / f"{a.serial_number:X}.pem"
        issued.write_bytes(a_pem.read_bytes())
        by_serial.write_bytes(a_pem.read_bytes())
        files, serials, merged = [issued, by_serial], [a], 1
    elif layout == "bundle-plus-member":
        bundle = tmp_path / "bundle.pem"
        pki.write_cert(bundle, a, b)
        files, serials, merged = [bundle, b_pem], [a, b], 1
    else:
        index = index_file(
            tmp_path / "index.txt",
            pki.index_line(a),
            pki.index_line(a, revoked_at=LATER_AT, reason="superseded"),
        )
        files, serials, merged = [index, a_pem], [a], 1
        expected[a.serial_number] = revoked(Reason.superseded, LATER_AT)
    result = await ocspd(db_pki, "cert", "import", "--issuer", ISSUER, *map(str, files))
    assert_ok(result)
    summary = import_summary(result.stderr)
    assert summary.total == len(serials), summary.line
    assert summary.merged >= merged, summary.line
    if layout != "index-v-then-r-plus-pem":
        assert (summary.new, summary.merged) == (len(serials), merged), summary.line
    for cert in serials:
        stored = await row(pg_dsn, cert.serial_number)
        assert stored is not None and stored.not_after == cert.not_valid_after_utc
        want = expected.get(cert.serial_number, GOOD)
        if want == GOOD:
            assert stored.status == "good"
        else:
            assert (stored.status, stored.revoked_at, stored.reason) == ("revoked", LATER_AT, "superseded")
        await becomes(client, db_pki, cert, want)


@pytest.mark.parametrize("line_status", ["V", "R"])
async def test_an_index_import_stores_not_after(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, tmp_path: Path, line_status: str
) -> None:
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "unissued")
    revocation: dict[str, Any] = {"revoked_at": LATER_AT, "reason": "keyCompromise"} if line_status == "R" else {}
    line = pki.index_line(cert, not_after=NOT_AFTER, **revocation)
    assert line.split("\t")[1] == "310203040506Z"
    result = await ocspd(db_pki, "cert", "import", "--issuer", ISSUER, str(index_file(tmp_path / "index.txt", line)))
    assert_ok(result)
    stored = await row(pg_dsn, UNISSUED_SERIAL)
    assert stored is not None and stored.not_after == NOT_AFTER
    await becomes(client, db_pki, cert, revoked(Reason.key_compromise, LATER_AT) if line_status == "R" else GOOD)


# (initial state of the good leaf, index.txt line about it, expected stored (status, reason, time), kept count)
INDEX_MERGES: dict[
    str, tuple[str, tuple[str | None, dt.datetime | None], tuple[str, str | None, dt.datetime | None], int]
] = {
    "unlisted+R-is-revoked": ("unlisted", ("superseded", LATER_AT), ("revoked", "superseded", LATER_AT), 0),
    "good+R-is-revoked": ("good", ("superseded", LATER_AT), ("revoked", "superseded", LATER_AT), 0),
    "good+V-stays-good": ("good", (None, None), ("good", None, None), 0),
    "hold+V-is-kept": ("hold", (None, None), ("revoked", "certificateHold", HOLD_AT), 1),
    "hold+R-keyCompromise-is-re-revoked": (
        "hold",
        ("keyCompromise", LATER_AT),
        ("revoked", "keyCompromise", LATER_AT),
        0,
    ),
    "hold+R-hold-other-time-is-kept": (
        "hold",
        ("certificateHold", LATER_AT),
        ("revoked", "certificateHold", HOLD_AT),
        1,
    ),
    "permanent+R-other-reason-is-kept": (
        "permanent",
        ("superseded", REVOKED_AT),
        ("revoked", "keyCompromise", REVOKED_AT),
        1,
    ),
    "permanent+R-other-time-is-kept": (
        "permanent",
        ("keyCompromise", LATER_AT),
        ("revoked", "keyCompromise", REVOKED_AT),
        1,
    ),
    "permanent+R-hold-is-kept": (
        "permanent",
        ("certificateHold", LATER_AT),
        ("revoked", "keyCompromise", REVOKED_AT),
        1,
    ),
}


@pytest.mark.parametrize("case", list(INDEX_MERGES))
async def test_an_index_import_merges_and_never_downgrades(
    ocspd_client: AppClient, db_pki: TestPki, pg_dsn: str, tmp_path: Path, case: str
) -> None:
    initial, (reason, at), (status, stored_reason, stored_at), kept = INDEX_MERGES[case]
    client = await replica(ocspd_client, db_pki)
    cert = leaf(db_pki, "unissued")
    serial = UNISSUED_SERIAL
    if initial == "good":
        assert_ok(await ocspd(db_pki, "cert", "add", "--issuer", ISSUER, "--serial", f"{serial:X}"))
    elif initial == "hold":
        assert_ok(await ocspd(db_pki, *revoke_args(serial, "certificateHold", HOLD_AT)))
    elif initial == "permanent":
        assert_ok(await ocspd(db_pki, *revoke_args(serial, "keyCompromise", REVOKED_AT)))
    before = await row(pg_dsn, serial)
    line = pki.index_line(cert, revoked_at=at, reason=reason) if at else pki.index_line(cert)
    result = await ocspd(db_pki, "cert", "import", "--issuer", ISSUER, str(index_file(tmp_path / "index.txt", line)))
    assert_ok(result)  # a kept revocation is counted, not an error
    summary = import_summary(result.stderr)
    assert summary.kept == kept, summary.line
    assert summary.new == (1 if initial == "unlisted" else 0), summary.line
    stored = await row(pg_dsn, serial)
    assert stored is not None and (stored.status, stored.reason, stored.revoked_at) == (
        status,
        stored_reason,
        stored_at,
    )
    if kept:
        assert before is not None and stored.revocation == before.revocation
    want = revoked(Reason(stored_reason) if stored_reason else None, stored_at) if stored_at else GOOD
    await becomes(client, db_pki, cert, want)


# -- one source of truth: an index.txt issuer takes no writes in the database -------------------------

INDEX_WRITES: dict[str, tuple[str, ...]] = {
    "revoke": revoke_args(GOOD_SERIAL, "keyCompromise"),
    "unhold": unhold_args(REVOKED_SERIAL),
    "cert-add": ("cert", "add", "--issuer", ISSUER, "--serial", f"{UNISSUED_SERIAL:X}"),
    "cert-import": ("cert", "import", "--issuer", ISSUER),  # + the leaf PEM
}


@pytest.mark.parametrize("command", list(INDEX_WRITES))
async def test_an_index_issuer_refuses_database_writes_even_with_a_database(
    ocspd_client: AppClient, test_pki: TestPki, pg_dsn: str, command: str
) -> None:
    env = {"OCSPD_DATABASE_DSN": pg_dsn}
    client = await ocspd_client(test_pki, env=env)
    args: Sequence[str] = INDEX_WRITES[command]
    if command == "cert-import":
        args = (*args, str(test_pki.leaf_paths["unissued"]))
    result = await ocspd(test_pki, *args, env=env)
    assert_one_line_error(result, "index", "openssl ca -revoke")
    assert (await sql(pg_dsn, "SELECT count(*) FROM ocspd_certificates"))[0][0] == 0
    await stays(client, test_pki, leaf(test_pki, "good"), GOOD)
    await stays(client, test_pki, leaf(test_pki, "revoked"), revoked(Reason.key_compromise, REVOKED_AT))
    await stays(client, test_pki, leaf(test_pki, "unissued"), UNKNOWN)


@pytest.mark.parametrize("with_database", [True, False], ids=["with-database", "without-database"])
async def test_status_of_an_index_issuer_is_what_index_txt_says(
    ocspd_client: AppClient, test_pki: TestPki, pg_dsn: str, with_database: bool
) -> None:
    env = {"OCSPD_DATABASE_DSN": pg_dsn} if with_database else {}
    if with_database:  # rows that contradict index.txt: not what the responder serves
        await sql(pg_dsn, "SELECT ocspd_add_certificate(%s, %s)", ISSUER, f"{REVOKED_SERIAL:x}")
        await sql(pg_dsn, "SELECT ocspd_revoke(%s, %s, 'superseded', %s)", ISSUER, f"{GOOD_SERIAL:x}", LATER_AT)
        await sql(pg_dsn, "SELECT ocspd_add_certificate(%s, %s)", ISSUER, f"{UNISSUED_SERIAL:x}")
    client = await ocspd_client(test_pki, env=env)

    async def status(serial: int) -> str:
        result = await ocspd(test_pki, "status", "--issuer", ISSUER, "--serial", f"{serial:X}", env=env)
        assert_ok(result)
        return result.stdout

    assert "status: revoked" in await status(REVOKED_SERIAL)
    assert "status: good" in await status(GOOD_SERIAL)
    assert "status: unknown" in await status(UNISSUED_SERIAL)
    await stays(client, test_pki, leaf(test_pki, "revoked"), revoked(Reason.key_compromise, REVOKED_AT))
    await stays(client, test_pki, leaf(test_pki, "good"), GOOD)
    await stays(client, test_pki, leaf(test_pki, "unissued"), UNKNOWN)
    # The CA revokes with openssl: status follows the file, as the responder does.
    test_pki.revoke_in_index("good", reason="cessationOfOperation")
    text = await status(GOOD_SERIAL)
    assert "status: revoked" in text and "cessationOfOperation" in text, text
    good = leaf(test_pki, "good")

    async def revoked_in_index() -> bool:
        served = await answer(client, test_pki, good)
        return (served.status, served.reason) == (Status.REVOKED, Reason.cessation_of_operation)

    await eventually(revoked_in_index, what="the index.txt revocation served")
