"""Properties of the CRL rules (issue 15), against brute force over a small serial space:
a newly applied CRL invalidates exactly the serials whose answer changed, a delta never
undoes a revocation, and pairing with an issuance list never answers good for a revocation."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from ocspd import crl
from ocspd.sources import paired
from ocspd.status import CertStatus, Status

F = x509.ReasonFlags
SERIALS = range(8)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
REVOCATION_REASONS = [None, F.key_compromise, F.superseded, F.certificate_hold]
times = st.integers(0, 3).map(lambda d: T0 + dt.timedelta(days=d))
base_entries = st.dictionaries(st.sampled_from(SERIALS), st.tuples(st.sampled_from(REVOCATION_REASONS), times))
delta_entries = st.dictionaries(
    st.sampled_from(SERIALS), st.tuples(st.sampled_from([*REVOCATION_REASONS, F.remove_from_crl]), times)
)


def trusted(entries: dict[int, tuple[F | None, dt.datetime]], number: int, base: int | None) -> crl.TrustedCrl:
    packed = {serial: crl.pack(at, reason) for serial, (reason, at) in entries.items()}
    return crl.TrustedCrl(number, T0, None, base, packed)


pairs = st.tuples(base_entries, st.one_of(st.none(), delta_entries)).map(
    lambda p: (trusted(p[0], 10, None), None if p[1] is None else trusted(p[1], 11, 10))
)


def answer(pair: tuple[crl.TrustedCrl, crl.TrustedCrl | None], serial: int) -> tuple[object, ...] | None:
    status = crl.status(pair[0], pair[1], serial)
    return None if status is None else (status.status, status.revoked_at, status.reason)


@settings(max_examples=400, deadline=None)
@given(old=st.one_of(st.none(), pairs), new=pairs)
def test_a_new_crl_invalidates_exactly_the_serials_whose_answer_changed(
    old: tuple[crl.TrustedCrl, crl.TrustedCrl | None] | None, new: tuple[crl.TrustedCrl, crl.TrustedCrl | None]
) -> None:
    changed = crl.changed_serials(old, new)
    if old is None:
        assert changed == {s for s in SERIALS if answer(new, s) is not None or s in (new[1] or new[0]).entries}
    else:
        assert changed == {s for s in SERIALS if answer(old, s) != answer(new, s)}


@settings(max_examples=400, deadline=None)
@given(base=base_entries, delta=delta_entries)
def test_a_delta_never_undoes_a_revocation_and_releases_only_holds(
    base: dict[int, tuple[F | None, dt.datetime]], delta: dict[int, tuple[F | None, dt.datetime]]
) -> None:
    pair = (trusted(base, 10, None), trusted(delta, 11, 10))
    for serial in SERIALS:
        status = crl.status(*pair, serial)
        in_base = base.get(serial)
        if in_base is not None and in_base[0] is not F.certificate_hold:
            assert status is not None and status.status is Status.REVOKED
            assert status.reason is not F.certificate_hold  # not downgraded to a hold (a new reason may come)
        if status is not None and status.status is Status.GOOD:
            assert delta.get(serial, (None,))[0] is F.remove_from_crl


statuses = st.one_of(
    st.none(),
    st.just(CertStatus(Status.GOOD)),
    st.sampled_from(REVOCATION_REASONS).map(lambda r: CertStatus(Status.REVOKED, T0, r)),
)


@settings(max_examples=300, deadline=None)
@given(listed=statuses, issued=statuses, unlisted_good=st.booleans())
def test_pairing_with_an_issuance_list_never_answers_good_for_a_revocation(
    listed: CertStatus | None, issued: CertStatus | None, unlisted_good: bool
) -> None:
    result = paired(listed, issued, unlisted_good)
    if any(s is not None and s.status is Status.REVOKED for s in (listed, issued)):
        assert result.status is Status.REVOKED
        if any(
            s is not None and s.status is Status.REVOKED and s.reason is not F.certificate_hold
            for s in (listed, issued)
        ):
            assert result.reason is not F.certificate_hold  # a permanent revocation wins over a hold
    if listed is None and issued is None:
        assert result.status is (Status.GOOD if unlisted_good else Status.UNKNOWN)
