"""The one status vocabulary (ocspd/status.py) and the schema agree, without a database."""

from __future__ import annotations

import re

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from ocspd.status import (
    HOLD,
    REASON_BY_FLAG,
    REASON_BY_LOWER_NAME,
    REASON_BY_NAME,
    REASONS,
    SERVED,
    SERVED_BY_VALUE,
    STATUS_BY_VALUE,
    Reason,
    Served,
    Status,
    revocation_reason,
    served_reason,
)
from ocspd.store.queries import migrations
from ocspd.store.values import reason_flag, reason_name

_CHECK = re.compile(r"CHECK \((\w+) IN \(([^)]*)\)\)")


def latest_check(column: str) -> set[str]:
    """The values the newest migration that constrains ``column`` of a table allows."""
    found: set[str] | None = None
    for migration in migrations():
        for name, values in _CHECK.findall(migration.sql):
            if name == column:
                found = set(re.findall(r"'([^']*)'", values))
    assert found is not None, f"no CHECK ({column} IN ...) in the migrations"
    return found


def test_the_database_stores_exactly_the_reasons_answers_carry() -> None:
    # unspecified is stored as no reason (answers leave it out), removeFromCRL is no revocation reason.
    carried = {r.name for r in REASONS if r.revocation and served_reason(r.flag) is not None}
    assert latest_check("reason") == carried
    assert {reason_name(r.flag) for r in REASONS if r.revocation} == carried | {None}
    assert all(reason_flag(name) is REASON_BY_NAME[name].flag for name in carried)


def test_the_database_stores_the_statuses_a_listed_certificate_can_have() -> None:
    assert latest_check("status") == {Status.GOOD.value, Status.REVOKED.value}


def test_the_reason_table_is_rfc_5280s_crlreason() -> None:
    assert {r.flag for r in REASONS} == set(x509.ReasonFlags)
    codes = {r.code: r.flag for r in REASONS}
    assert len(codes) == len(REASONS) and 7 not in codes
    assert HOLD.flag is x509.ReasonFlags.certificate_hold
    assert revocation_reason(" KEYCOMPROMISE ") is REASON_BY_FLAG[x509.ReasonFlags.key_compromise]
    assert revocation_reason("removeFromCRL") is None


@pytest.mark.parametrize("reason", REASONS, ids=[r.name for r in REASONS])
def test_each_reason_is_found_by_its_flag_and_name_and_encodes_as_its_code(reason: Reason) -> None:
    # The code of each flag is what cryptography encodes for it.
    assert x509.CRLReason(reason.flag).public_bytes() == b"\x0a\x01" + bytes((reason.code,))
    assert REASON_BY_FLAG[reason.flag] is reason
    assert REASON_BY_LOWER_NAME[reason.name.lower()] is reason
    if reason.openssl:
        assert reason.openssl.lower() == reason.name.lower()  # OpenSSL differs in case only


def test_openssl_reasons_with_an_argument_name_three_reasons() -> None:
    with_argument = {r.openssl_with_argument: r.flag for r in REASONS if r.openssl_with_argument}
    assert with_argument == {
        "keyTime": x509.ReasonFlags.key_compromise,
        "CAkeyTime": x509.ReasonFlags.ca_compromise,
        "holdInstruction": x509.ReasonFlags.certificate_hold,
    }


@pytest.mark.parametrize("status", list(Status))
def test_each_status_is_served_under_its_own_name(status: Status) -> None:
    assert SERVED[status].value == status.value
    assert ocsp.OCSPCertStatus[status.name]  # the three CertStatus choices of RFC 6960


def test_served_spellings_are_those_of_logs_and_the_responses_table() -> None:
    assert [s.value for s in Served] == ["good", "revoked", "unknown", "mixed"]
    assert set(SERVED.values()) == set(Served) - {Served.MIXED}
    assert all(STATUS_BY_VALUE[s.value] is s for s in Status) and len(STATUS_BY_VALUE) == len(Status)
    assert all(SERVED_BY_VALUE[s.value] is s for s in Served) and len(SERVED_BY_VALUE) == len(Served)
