"""CRLs as a status source, the trust rules and the status they give (ocspd/crl.py; issue 15).

Every check of ``crl.verify`` refuses a CRL that fails it, by name; the status a
base and a delta CRL give follows RFC 5280 and never undoes a revocation.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from ocspd import crl, pki
from ocspd.status import Status
from tests.crls import T0, Revoked, crl_signer, make_crl

F = x509.ReasonFlags


@pytest.fixture(scope="module")
def ca() -> pki.Identity:
    return pki.make_ca("ocspd CRL test CA")


def trusted(ca: pki.Identity, entries: list[Revoked], **kwargs: object) -> crl.TrustedCrl:
    return crl.verify(make_crl(ca, entries, **kwargs), ca.cert)  # type: ignore[arg-type]


def test_a_base_crl_gives_revoked_with_its_date_and_reason_and_nothing_for_unlisted(ca: pki.Identity) -> None:
    at = T0 - dt.timedelta(hours=5)
    base = trusted(ca, [Revoked(0x10, F.key_compromise, at), Revoked(0x11, None)], number=7)
    assert (base.number, base.this_update, base.next_update, base.is_delta) == (7, T0, T0 + dt.timedelta(days=7), False)
    revoked = crl.status(base, None, 0x10)
    assert revoked is not None and revoked.status is Status.REVOKED
    assert (revoked.revoked_at, revoked.reason, revoked.version) == (at, F.key_compromise, 7)
    no_reason = crl.status(base, None, 0x11)
    assert no_reason is not None and no_reason.status is Status.REVOKED and no_reason.reason is None
    assert crl.status(base, None, 0x12) is None  # not listed: not proof of issuance, the caller decides


def test_pem_and_der_load_and_garbage_is_refused(ca: pki.Identity) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    made = make_crl(ca, [Revoked(1)])
    for encoding in (Encoding.DER, Encoding.PEM):
        assert crl.load(made.public_bytes(encoding)).fingerprint(made.signature_hash_algorithm) == made.fingerprint(  # type: ignore[arg-type]
            made.signature_hash_algorithm  # type: ignore[arg-type]
        )
    with pytest.raises(crl.CrlRefused, match="not a readable CRL"):
        crl.load(b"\x30\x03garbage")


def _other_name() -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "somebody else")])


@pytest.mark.parametrize(
    ("case", "refusal"),
    [
        pytest.param("signed by another key", "signature does not verify", id="bad-signature"),
        pytest.param("another issuer name", "is not the CA's", id="issuer-name"),
        pytest.param("no CRL number", "no CRL number", id="no-number"),
        pytest.param("onlySomeReasons", "partitioned CRL", id="partitioned"),
        pytest.param("indirectCRL", "indirect CRL", id="indirect"),
        pytest.param("only CA certificates", "does not cover end-entity", id="ca-certs-only"),
        pytest.param("an entry of another issuer", "names another certificate issuer", id="certificate-issuer"),
    ],
)
def test_a_crl_failing_a_check_is_refused_naming_it(ca: pki.Identity, case: str, refusal: str) -> None:
    other = pki.make_ca("another CA")
    kwargs: dict[str, object] = {}
    entries = [Revoked(5)]
    if case == "signed by another key":
        kwargs["signer"] = other
    elif case == "another issuer name":
        kwargs["issuer"] = _other_name()
    elif case == "no CRL number":
        kwargs["number"] = None
    elif case == "an entry of another issuer":
        entries = [Revoked(5, certificate_issuer=_other_name())]
    else:
        points: dict[str, dict[str, object]] = {
            "onlySomeReasons": {"only_some_reasons": frozenset({F.key_compromise})},
            "indirectCRL": {"indirect_crl": True},
            "only CA certificates": {"only_contains_ca_certs": True},
        }
        point = points[case]
        base: dict[str, object] = dict(
            full_name=None,
            relative_name=None,
            only_contains_user_certs=False,
            only_contains_ca_certs=False,
            only_some_reasons=None,
            indirect_crl=False,
            only_contains_attribute_certs=False,
        )
        kwargs["distribution_point"] = x509.IssuingDistributionPoint(**{**base, **point})  # type: ignore[arg-type]
    with pytest.raises(crl.CrlRefused, match=refusal):
        crl.verify(make_crl(ca, entries, **kwargs), ca.cert)  # type: ignore[arg-type]


def test_a_crl_number_lower_than_the_one_in_use_is_refused_and_the_same_one_is_accepted(ca: pki.Identity) -> None:
    in_use = trusted(ca, [Revoked(1)], number=5)
    with pytest.raises(crl.CrlRefused, match="lower than the one in use"):
        crl.verify(make_crl(ca, [], number=4), ca.cert, in_use=in_use)
    assert crl.verify(make_crl(ca, [Revoked(1)], number=5), ca.cert, in_use=in_use).number == 5
    assert crl.verify(make_crl(ca, [], number=6), ca.cert, in_use=in_use).number == 6


@pytest.mark.parametrize(
    ("crl_sign", "accepted"), [pytest.param(True, True, id="with-crl-sign"), pytest.param(False, False, id="without")]
)
def test_a_separate_crl_signer_of_the_ca_needs_crl_sign(ca: pki.Identity, crl_sign: bool, accepted: bool) -> None:
    signer = crl_signer(ca, crl_sign=crl_sign)
    made = make_crl(ca, [Revoked(9)], signer=signer)
    if accepted:
        assert crl.verify(made, ca.cert, signer=signer.cert).entries.keys() == {9}
    else:
        with pytest.raises(crl.CrlRefused, match="does not include cRLSign"):
            crl.verify(made, ca.cert, signer=signer.cert)
    with pytest.raises(crl.CrlRefused, match="signature does not verify"):
        crl.verify(made, ca.cert)  # the CA's own key did not sign it


def test_a_crl_signer_not_issued_by_the_ca_is_refused(ca: pki.Identity) -> None:
    impostor_ca = pki.make_ca(str(ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value))  # same name
    signer = crl_signer(impostor_ca)
    with pytest.raises(crl.CrlRefused, match="not issued by the CA"):
        crl.verify(make_crl(ca, [], signer=signer), ca.cert, signer=signer.cert)


@pytest.mark.parametrize(
    ("delta_of", "delta_number", "refusal"),
    [
        pytest.param(10, 11, None, id="delta-of-the-base-in-use"),
        pytest.param(8, 11, None, id="delta-of-an-older-base"),
        pytest.param(12, 13, "for base CRL 12, the base in use is 10", id="delta-of-a-newer-base"),
        pytest.param(10, 10, "not newer than the base in use", id="delta-not-newer"),
    ],
)
def test_a_delta_applies_only_over_a_base_it_was_made_for(
    ca: pki.Identity, delta_of: int, delta_number: int, refusal: str | None
) -> None:
    base = trusted(ca, [Revoked(1)], number=10)
    made = make_crl(ca, [Revoked(2)], number=delta_number, delta_of=delta_of)
    if refusal is None:
        delta = crl.verify(made, ca.cert, base=base)
        assert delta.is_delta and delta.base_number == delta_of
    else:
        with pytest.raises(crl.CrlRefused, match=refusal):
            crl.verify(made, ca.cert, base=base)


def test_a_delta_without_a_base_in_use_is_refused(ca: pki.Identity) -> None:
    with pytest.raises(crl.CrlRefused, match="no base CRL in use"):
        crl.verify(make_crl(ca, [], number=3, delta_of=2), ca.cert)


@pytest.mark.parametrize(
    ("in_base", "in_delta", "expected"),
    [
        pytest.param(F.certificate_hold, F.remove_from_crl, (Status.GOOD, None), id="hold-released-by-the-delta"),
        pytest.param(F.certificate_hold, F.key_compromise, (Status.REVOKED, F.key_compromise), id="hold-to-revoked"),
        pytest.param(None, F.superseded, (Status.REVOKED, F.superseded), id="revoked-in-the-delta-only"),
        pytest.param(F.key_compromise, F.remove_from_crl, (Status.REVOKED, F.key_compromise), id="never-undone"),
        pytest.param(F.key_compromise, F.certificate_hold, (Status.REVOKED, F.key_compromise), id="no-downgrade"),
        pytest.param(F.certificate_hold, None, (Status.REVOKED, F.certificate_hold), id="hold-kept-if-not-in-delta"),
        pytest.param(None, F.remove_from_crl, (Status.GOOD, None), id="removed-after-an-earlier-delta"),
    ],
)
def test_delta_entries_overlay_the_base(
    ca: pki.Identity,
    in_base: x509.ReasonFlags | None,
    in_delta: x509.ReasonFlags | None,
    expected: tuple[Status, x509.ReasonFlags | None],
) -> None:
    serial = 0x42
    base = trusted(ca, [Revoked(serial, in_base)] if in_base else [Revoked(1)], number=20)
    delta = crl.verify(
        make_crl(ca, [Revoked(serial, in_delta)] if in_delta else [Revoked(2)], number=21, delta_of=20),
        ca.cert,
        base=base,
    )
    answer = crl.status(base, delta, serial)
    assert answer is not None
    assert (answer.status, answer.reason) == expected
    assert answer.version == (21 if in_delta else 20)
