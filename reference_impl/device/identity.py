"""Device identity and evidence: a P-384 certificate chain, measurements, signed interface reports.

What the guest verifies before it accepts a TDI (PCIe §11 TVM acceptance; rules-seed C.56): the
leaf certificate chains to the root it trusts, the evidence is signed by the leaf's key, the
measurements are the device's, and the signature covers *the guest's own fresh nonce* -- so a report
from an earlier lock cannot be replayed.

Keys are derived from a seed so runs are reproducible; generating them is cached per seed.
"""

from __future__ import annotations

import datetime
import functools
import hashlib

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from reference_impl.errors import ConformanceViolation

__all__ = ["DeviceIdentity", "EvidenceError", "SignedEvidence", "make_evidence", "verify_evidence"]

_NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(2045, 1, 1, tzinfo=datetime.UTC)


class EvidenceError(ConformanceViolation):
    """Evidence that does not verify: bad chain, bad signature, stale nonce, foreign measurements."""


def _key(seed: int, role: int) -> ec.EllipticCurvePrivateKey:
    secret = int.from_bytes(hashlib.sha384(f"teeio-identity/{seed}/{role}".encode()).digest(), "big")
    return ec.derive_private_key(secret % (2**383) + 1, ec.SECP384R1())


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
          *, ca: bool, serial: int) -> x509.Certificate:
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(serial)
         .not_valid_before(_NOT_BEFORE).not_valid_after(_NOT_AFTER)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return b.sign(signer, hashes.SHA384())


@functools.lru_cache(maxsize=16)
def _material(seed: int) -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    root_key, leaf_key = _key(seed, 0), _key(seed, 1)
    root = _cert(f"teeio reference root CA {seed}", f"teeio reference root CA {seed}", root_key, root_key,
                 ca=True, serial=1)
    leaf = _cert(f"teeio reference device {seed}", f"teeio reference root CA {seed}", leaf_key, root_key,
                 ca=False, serial=2)
    enc = serialization.Encoding.DER
    return leaf_key, root.public_bytes(enc), leaf.public_bytes(enc)


class DeviceIdentity:
    def __init__(self, *, seed: int, firmware: tuple[bytes, ...] = (b"firmware v1.0", b"config v1")) -> None:
        self.seed = seed
        self._leaf_key, self._root, self._leaf = _material(seed)
        self._measurements = {i: hashlib.sha384(blob).digest() for i, blob in enumerate(firmware, start=1)}

    def certificate_chain(self) -> tuple[bytes, ...]:
        return (self._root, self._leaf)

    def root_certificate(self) -> bytes:
        return self._root

    def measurements(self) -> dict[int, bytes]:
        return dict(self._measurements)

    def measurements_digest(self) -> bytes:
        h = hashlib.sha384()
        for i in sorted(self._measurements):
            h.update(i.to_bytes(1, "little") + self._measurements[i])
        return h.digest()

    def sign(self, data: bytes) -> bytes:
        return self._leaf_key.sign(data, ec.ECDSA(hashes.SHA384()))


@attrs.frozen(kw_only=True)
class SignedEvidence:
    report: bytes
    nonce: bytes
    measurements_digest: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        return b"teeio-evidence-v1" + self.nonce + self.measurements_digest + hashlib.sha384(self.report).digest()


def make_evidence(identity: DeviceIdentity, report: bytes, nonce: bytes) -> SignedEvidence:
    unsigned = SignedEvidence(report=report, nonce=nonce, measurements_digest=identity.measurements_digest(),
                              signature=b"")
    return attrs.evolve(unsigned, signature=identity.sign(unsigned.signed_bytes()))


def verify_evidence(evidence: SignedEvidence, *, trusted_root: bytes, chain: tuple[bytes, ...],
                    expected_nonce: bytes) -> None:
    """Raise :class:`EvidenceError` naming the first check that fails."""
    if len(chain) != 2 or chain[0] != trusted_root:
        raise EvidenceError("certificate chain does not start at the trusted root")
    try:
        root = x509.load_der_x509_certificate(chain[0])
        leaf = x509.load_der_x509_certificate(chain[1])
    except ValueError as exc:
        raise EvidenceError(f"certificate does not parse: {exc}") from None
    root_pub = root.public_key()
    leaf_pub = leaf.public_key()
    if not isinstance(root_pub, ec.EllipticCurvePublicKey) or not isinstance(leaf_pub, ec.EllipticCurvePublicKey):
        raise EvidenceError("certificates must carry ECDSA P-384 keys")
    try:
        root_pub.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError("device certificate is not signed by the trusted root") from None
    if evidence.nonce != expected_nonce:
        raise EvidenceError("evidence is not for this request's nonce (stale or replayed)")
    try:
        leaf_pub.verify(evidence.signature, evidence.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError("evidence signature does not verify (report or measurements altered)") from None
