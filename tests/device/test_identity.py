"""Device identity and evidence: the chain, measurements, signatures and freshness a guest relies on.

Every failing case must fail for *its* reason (pyca-style: check the exact reason, not just the type).
"""

from __future__ import annotations

import datetime
import hashlib

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from teeio_conformance.contract.errors import ConformanceViolation, InvalidArgument
from teeio_conformance.reference_impl.device.identity import (
    DeviceIdentity,
    EvidenceError,
    EvidenceFailure,
    SignedEvidence,
    make_evidence,
    verify_evidence,
)

REPORT = bytes(range(64)) * 3  # stands in for a DEVICE_INTERFACE_REPORT
NONCE = b"\x5a" * 32


def _identity(seed: int = 1) -> DeviceIdentity:
    return DeviceIdentity(seed=seed)


def _verify(evidence: SignedEvidence, identity: DeviceIdentity, **kw) -> None:
    args = {
        "trusted_root": identity.root_certificate(),
        "chain": identity.certificate_chain(),
        "expected_nonce": NONCE,
        **kw,
    }
    verify_evidence(evidence, **args)


def _fails(reason: EvidenceFailure, evidence: SignedEvidence, identity: DeviceIdentity, **kw) -> EvidenceError:
    with pytest.raises(EvidenceError) as caught:
        _verify(evidence, identity, **kw)
    assert caught.value.reason is reason, str(caught.value)
    assert isinstance(caught.value, ConformanceViolation)
    return caught.value


def _ec_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


# ------------------------------------------------------------------------------------------ identity
def test_the_chain_is_root_then_device_leaf_on_p384_with_sha384():
    root_der, leaf_der = _identity().certificate_chain()
    root, leaf = x509.load_der_x509_certificate(root_der), x509.load_der_x509_certificate(leaf_der)
    assert _identity().root_certificate() == root_der
    assert root.subject == root.issuer == leaf.issuer
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for cert in (root, leaf):
        assert isinstance(_ec_key(cert).curve, ec.SECP384R1)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    _ec_key(root).verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    _ec_key(root).verify(root.signature, root.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))


def test_the_same_seed_gives_the_same_identity_and_another_seed_another():
    assert _identity(7).certificate_chain() == _identity(7).certificate_chain()
    assert _identity(7).root_certificate() != _identity(8).root_certificate()
    leaf7 = x509.load_der_x509_certificate(_identity(7).certificate_chain()[1])
    leaf8 = x509.load_der_x509_certificate(_identity(8).certificate_chain()[1])
    assert _ec_key(leaf7).public_numbers() != _ec_key(leaf8).public_numbers()


def test_measurements_are_sha384_digests_of_the_blobs_from_index_1():
    blobs = (b"rom", b"firmware 2.1", b"config")
    identity = DeviceIdentity(seed=3, firmware=blobs)
    assert identity.measurements() == {i + 1: hashlib.sha384(b).digest() for i, b in enumerate(blobs)}
    identity.measurements()[1] = b"x"  # a copy: the device's own values cannot be changed from outside
    assert identity.measurements()[1] == hashlib.sha384(b"rom").digest()
    assert (
        DeviceIdentity(seed=3, firmware=(b"rom", b"firmware 2.2", b"config")).measurements_digest()
        != identity.measurements_digest()
    )


def test_sign_is_ecdsa_p384_sha384_under_the_leaf_key():
    identity = _identity()
    leaf = x509.load_der_x509_certificate(identity.certificate_chain()[1])
    _ec_key(leaf).verify(identity.sign(b"data"), b"data", ec.ECDSA(hashes.SHA384()))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"seed": "1"}, "seed"),
        ({"seed": 1, "firmware": ()}, "firmware"),
        ({"seed": 1, "firmware": ("text",)}, "firmware"),
    ],
)
def test_a_bad_identity_configuration_is_refused(kw, match):
    with pytest.raises(InvalidArgument, match=match):
        DeviceIdentity(**kw)


def test_repr_shows_no_key_material():
    identity = _identity()
    assert repr(identity) == "DeviceIdentity(seed=1)"


# ------------------------------------------------------------------------------------------ evidence
def test_good_evidence_verifies():
    identity = _identity()
    evidence = make_evidence(identity, REPORT, NONCE)
    _verify(evidence, identity)
    _verify(evidence, identity, expected_measurements_digest=identity.measurements_digest())
    assert evidence.measurements_digest == identity.measurements_digest()


@settings(max_examples=25, deadline=None)
@given(report=st.binary(max_size=256), nonce=st.binary(min_size=32, max_size=32), data=st.data())
def test_a_flipped_report_byte_fails_the_signature(report, nonce, data):
    identity = _identity()
    evidence = make_evidence(identity, report + b"\0", nonce)  # at least one byte to flip
    index = data.draw(st.integers(0, len(evidence.report) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    flipped = bytearray(evidence.report)
    flipped[index] ^= 1 << bit
    _fails(
        EvidenceFailure.BAD_SIGNATURE,
        attrs.evolve(evidence, report=bytes(flipped)),
        identity,
        expected_nonce=nonce,
    )


def test_a_report_from_an_earlier_lock_fails_freshness():
    identity = _identity()
    earlier = make_evidence(identity, REPORT, b"\x01" * 32)  # signed, but for the previous challenge
    error = _fails(EvidenceFailure.STALE_NONCE, earlier, identity)
    assert "stale" in str(error)


def test_a_nonce_field_rewritten_to_the_fresh_one_fails_the_signature():
    identity = _identity()
    earlier = make_evidence(identity, REPORT, b"\x01" * 32)
    _fails(EvidenceFailure.BAD_SIGNATURE, attrs.evolve(earlier, nonce=NONCE), identity)


def test_a_foreign_root_fails():
    identity, other = _identity(1), _identity(2)
    evidence = make_evidence(identity, REPORT, NONCE)
    _fails(EvidenceFailure.WRONG_ROOT, evidence, identity, trusted_root=other.root_certificate())


def test_a_foreign_device_presenting_its_own_chain_fails_on_the_root():
    identity, impostor = _identity(1), _identity(2)
    evidence = make_evidence(impostor, REPORT, NONCE)
    _fails(EvidenceFailure.WRONG_ROOT, evidence, identity, chain=impostor.certificate_chain())


def test_a_swapped_leaf_fails_the_chain():
    """The trusted root followed by another device's leaf: not signed by the root."""
    identity, other = _identity(1), _identity(2)
    evidence = make_evidence(other, REPORT, NONCE)
    chain = (identity.root_certificate(), other.certificate_chain()[1])
    error = _fails(EvidenceFailure.BAD_CHAIN, evidence, identity, chain=chain)
    assert "certificate 1" in str(error)


def test_evidence_signed_by_another_key_fails_the_signature():
    identity, other = _identity(1), _identity(2)
    _fails(EvidenceFailure.BAD_SIGNATURE, make_evidence(other, REPORT, NONCE), identity)


def test_a_root_only_chain_is_malformed():
    identity = _identity()
    evidence = make_evidence(identity, REPORT, NONCE)
    _fails(EvidenceFailure.MALFORMED, evidence, identity, chain=(identity.root_certificate(),))


def test_an_unparsable_leaf_is_malformed():
    identity = _identity()
    evidence = make_evidence(identity, REPORT, NONCE)
    _fails(EvidenceFailure.MALFORMED, evidence, identity, chain=(identity.root_certificate(), b"\x30\x03junk"))


def test_a_leaf_used_as_issuer_fails_the_chain():
    """Root -> leaf -> leaf: the middle certificate is not a CA."""
    identity = _identity()
    evidence = make_evidence(identity, REPORT, NONCE)
    root, leaf = identity.certificate_chain()
    _fails(EvidenceFailure.BAD_CHAIN, evidence, identity, chain=(root, leaf, leaf))


def test_a_certificate_outside_its_validity_fails_the_chain():
    identity = _identity()
    evidence = make_evidence(identity, REPORT, NONCE)
    _fails(EvidenceFailure.BAD_CHAIN, evidence, identity, at=datetime.datetime(1999, 1, 1, tzinfo=datetime.UTC))


def test_unexpected_measurements_fail():
    identity = _identity(1)
    updated = DeviceIdentity(seed=1, firmware=(b"firmware v9.9", b"config v1"))
    evidence = make_evidence(updated, REPORT, NONCE)
    _fails(
        EvidenceFailure.WRONG_MEASUREMENTS,
        evidence,
        identity,
        expected_measurements_digest=identity.measurements_digest(),
    )


def test_altered_measurements_fail_the_signature():
    identity = _identity()
    evidence = make_evidence(identity, REPORT, NONCE)
    _fails(EvidenceFailure.BAD_SIGNATURE, attrs.evolve(evidence, measurements_digest=b"\0" * 48), identity)


@pytest.mark.parametrize(
    ("field", "value"),
    [("nonce", b"short"), ("measurements_digest", b"\0" * 32), ("report", "text"), ("signature", None)],
)
def test_evidence_fields_are_validated(field, value):
    evidence = make_evidence(_identity(), REPORT, NONCE)
    with pytest.raises(InvalidArgument, match=f"SignedEvidence.{field}"):
        attrs.evolve(evidence, **{field: value})


def test_evidence_is_deterministic_per_seed():
    """RFC 6979 signing where available: the same inputs give the same evidence (reproducible traces)."""
    first, second = make_evidence(_identity(), REPORT, NONCE), make_evidence(_identity(), REPORT, NONCE)
    _verify(second, _identity())
    if first.signature != second.signature:
        pytest.skip("this cryptography build signs with random k; evidence still verifies")
