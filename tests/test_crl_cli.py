"""`ocspd crl show` and `ocspd crl sync`, and the CRL settings' one-line errors (issue 15)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from tests.crls import CrlServer, Revoked, make_crl
from tests.helpers import TestPki, assert_ok, assert_one_line_error, build_pki, ocspd, row, run, sql

F = x509.ReasonFlags
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def with_crl(test_pki: TestPki, lines: str, *, drop_index: bool = False) -> TestPki:
    text = test_pki.config_path.read_text()
    if drop_index:
        text = text.replace('index = "index.txt"\n', "")
    test_pki.config_path.write_text(text + lines)
    return test_pki


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        pytest.param('crl = "http://127.0.0.1:9/ca.crl"\n', ("crl_unlisted", "issuance list"), id="no-issuance-list"),
        pytest.param('crl = "ldap://dc1/CN=CA?certificateRevocationList"\n', ("unsupported location",), id="ldap"),
        pytest.param('crl_unlisted = "good"\n', ("needs crl",), id="policy-without-crl"),
        pytest.param('crl = "x.crl"\ncrl_unlisted = "maybe"\n', ("must be one of",), id="bad-policy"),
        pytest.param("crl = 5\n", ("expected a URL or path",), id="not-a-location"),
    ],
)
def test_crl_settings_refuse_in_one_line(tmp_path: Path, lines: str, fragments: tuple[str, ...]) -> None:
    test_pki = with_crl(build_pki(tmp_path / "pki"), lines, drop_index=True)
    assert_one_line_error(run("check-config", "--config", str(test_pki.config_path)), *fragments)


async def test_crl_sync_with_a_database_merges_the_crl_and_show_prints_it(
    tmp_path: Path, pg_dsn: str, crl_server: CrlServer
) -> None:
    test_pki = with_crl(build_pki(tmp_path / "pki", database=pg_dsn), f'crl = "{crl_server.url("ca.crl")}"\n')
    crl = make_crl(test_pki.ca, [Revoked(0x77, F.key_compromise, NOW - dt.timedelta(days=1))], number=42,
                   this_update=NOW, next_update=NOW + dt.timedelta(days=1))  # fmt: skip
    crl_server.publish("ca.crl", crl)
    shown = await ocspd(test_pki, "crl", "show")
    assert shown.returncode == 1 and "no CRL in force yet" in shown.stdout, shown.stdout + shown.stderr
    assert_ok(await ocspd(test_pki, "crl", "sync"), "CRL number 42, 1 entries")
    stored = await row(pg_dsn, 0x77)
    assert stored is not None and (stored.status, stored.reason) == ("revoked", "keyCompromise")
    assert_ok(await ocspd(test_pki, "crl", "show", "--issuer", "test-ca"), "CRL number 42", crl_server.url("ca.crl"))


async def test_crl_sync_without_a_database_checks_and_says_what_is_wrong(tmp_path: Path, crl_server: CrlServer) -> None:
    test_pki = with_crl(build_pki(tmp_path / "pki"), f'crl = "{crl_server.url("ca.crl")}"\n')
    result = await ocspd(test_pki, "crl", "sync")
    assert result.returncode == 1 and "HTTP 404" in result.stdout, result.stdout + result.stderr
    crl_server.publish("ca.crl", make_crl(test_pki.ca, [], number=3, this_update=NOW))
    assert_ok(await ocspd(test_pki, "crl", "sync"), "CRL number 3, 0 entries", "nothing changed")


async def test_presign_for_a_crl_issuer_signs_within_the_crls_next_update(
    tmp_path: Path, pg_dsn: str, crl_server: CrlServer
) -> None:
    test_pki = with_crl(build_pki(tmp_path / "pki", database=pg_dsn), f'crl = "{crl_server.url("ca.crl")}"\n')
    next_update = NOW + dt.timedelta(hours=2)  # sooner than thisUpdate + validity (24h)
    crl = make_crl(test_pki.ca, [Revoked(0x77, F.key_compromise, NOW - dt.timedelta(days=1))], number=7,
                   this_update=NOW, next_update=next_update)  # fmt: skip
    crl_server.publish("ca.crl", crl)
    result = await ocspd(test_pki, "presign")
    assert result.returncode == 2 and "no CRL in force yet" in result.stderr, result.stderr
    assert_ok(await ocspd(test_pki, "crl", "sync"))
    assert_ok(await ocspd(test_pki, "presign"), "stored=1")
    [(latest,)] = await sql(pg_dsn, "SELECT max(next_update) FROM ocspd_responses")
    assert latest <= next_update
