"""Device identity and evidence: a P-384 (or P-256) certificate chain, measurements, a signed interface report.

What a guest checks before it accepts a TDI (PCIe §11.3.11/§11.4 TVM acceptance; SPDM DSP0274
GET_CERTIFICATE / GET_MEASUREMENTS with a requester nonce; rules-seed D and A.5):

1. the certificate chain starts at the root the guest trusts and each certificate is signed by the one
   before it (root CA -> device leaf);
2. the evidence -- interface report, nonce and measurements digest -- is signed by the leaf's key;
3. the signature covers *the caller's own fresh nonce*, so evidence from an earlier lock or an earlier
   request cannot be replayed (ARM RMM regenerates its nonce at lock and at each report: rules-seed 64);
4. optionally, the measurements are the expected (reference) ones.

:func:`verify_evidence` raises :class:`EvidenceError` whose ``reason`` names the first check that failed.

The chain is P-384 by default; ``curve="P-256"`` makes one for an SPDM peer that negotiates ECDSA P-256
(its certificates are signed with SHA-256; evidence stays SHA-384 over either curve).

Keys are derived from a seed (``ec.derive_private_key``) and certificates and evidence are signed with
deterministic ECDSA (RFC 6979) where the installed ``cryptography`` offers it, so the same seed gives the
same bytes in every run; building a chain is cached per seed because tests create many devices.
"""

from __future__ import annotations

import datetime
import enum
import functools
import hashlib
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teeio_conformance.contract.errors import ConformanceViolation, InvalidArgument

__all__ = [
    "CURVES",
    "NONCE_LEN",
    "DeviceIdentity",
    "EvidenceError",
    "EvidenceFailure",
    "SignedEvidence",
    "make_evidence",
    "verify_evidence",
]

NONCE_LEN = 32  # SPDM / TDISP nonces are 32 bytes
DIGEST_LEN = 48  # SHA-384
_P384_ORDER = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
)
_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)
CURVES = ("P-384", "P-256")
"""The curves an identity's keys can be on (the SPDM ECDSA ones this suite speaks)."""
_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)  # RFC 5280: no expiry
_EVIDENCE_TAG = b"teeio-evidence-v1"
_DEFAULT_FIRMWARE = (b"firmware v1.0", b"config v1")


class EvidenceFailure(enum.Enum):
    """Which check of :func:`verify_evidence` failed."""

    MALFORMED = "malformed"  # a certificate does not parse / the chain is too short
    WRONG_ROOT = "wrong_root"  # the chain does not start at the trusted root
    BAD_CHAIN = "bad_chain"  # a certificate is not issued / signed by the one before it, or not valid now
    BAD_SIGNATURE = "bad_signature"  # the evidence signature does not verify under the leaf key
    STALE_NONCE = "stale_nonce"  # the evidence answers another challenge (freshness)
    WRONG_MEASUREMENTS = "wrong_measurements"  # the measurements are not the expected ones


class EvidenceError(ConformanceViolation):
    """Evidence that does not verify; ``reason`` says which check failed."""

    def __init__(self, message: str, *, reason: EvidenceFailure) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


# ------------------------------------------------------------------------------------------ key material
def _private_key(seed: int, role: str, curve: str = "P-384") -> ec.EllipticCurvePrivateKey:
    """A key from the seed: SHA-384 of a labelled seed, reduced into [1, n-1]. The P-384 label is the
    original one, so a P-384 identity is the same for a seed as it always was."""
    if curve == "P-384":
        digest = hashlib.sha384(f"teeio-identity/{seed}/{role}".encode()).digest()
        return ec.derive_private_key(int.from_bytes(digest, "big") % (_P384_ORDER - 1) + 1, ec.SECP384R1())
    digest = hashlib.sha384(f"teeio-identity/{seed}/{role}/{curve}".encode()).digest()
    return ec.derive_private_key(int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1())


def _ecdsa(algorithm: hashes.HashAlgorithm | None = None) -> ec.ECDSA:
    algorithm = algorithm or hashes.SHA384()
    try:
        return ec.ECDSA(algorithm, deterministic_signing=True)  # type: ignore[call-arg,unused-ignore]
    except TypeError:  # cryptography < 44: randomised ECDSA, still correct
        return ec.ECDSA(algorithm)


def _sign_certificate(
    builder: x509.CertificateBuilder, signer: ec.EllipticCurvePrivateKey, algorithm: hashes.SHA256 | hashes.SHA384
) -> x509.Certificate:
    try:  # ecdsa_deterministic: cryptography >= 44
        return builder.sign(
            signer,
            algorithm,
            ecdsa_deterministic=True,  # type: ignore[call-arg,unused-ignore]
        )
    except TypeError:
        return builder.sign(signer, algorithm)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "teeio-conformance reference"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    *,
    subject: str,
    issuer: str,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
    serial: int,
    algorithm: hashes.SHA256 | hashes.SHA384,
) -> x509.Certificate:
    usage = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    usage.update(key_cert_sign=ca, crl_sign=ca, digital_signature=not ca)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    return _sign_certificate(builder, signer, algorithm)


@functools.lru_cache(maxsize=64)
def _material(seed: int, curve: str = "P-384") -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    """(leaf private key, root DER, leaf DER) for a seed and curve; cached (key derivation + 2 signatures).
    P-256 certificates are signed with SHA-256, as a P-256 chain usually is; P-384 ones with SHA-384."""
    root_key, leaf_key = _private_key(seed, "root", curve), _private_key(seed, "leaf", curve)
    suffix = "" if curve == "P-384" else f" {curve}"
    root_cn, leaf_cn = f"teeio root CA {seed}{suffix}", f"teeio device {seed}{suffix}"
    serial = int.from_bytes(hashlib.sha256(f"serial/{seed}".encode()).digest()[:16], "big") >> 1 | 1
    alg = hashes.SHA384() if curve == "P-384" else hashes.SHA256()
    root = _certificate(
        subject=root_cn, issuer=root_cn, key=root_key, signer=root_key, ca=True, serial=serial, algorithm=alg
    )
    leaf = _certificate(
        subject=leaf_cn, issuer=root_cn, key=leaf_key, signer=root_key, ca=False, serial=serial + 1, algorithm=alg
    )
    der = serialization.Encoding.DER
    return leaf_key, root.public_bytes(der), leaf.public_bytes(der)


def _digest_measurements(measurements: dict[int, bytes]) -> bytes:
    h = hashlib.sha384()
    for index in sorted(measurements):
        h.update(index.to_bytes(1, "little") + measurements[index])
    return h.digest()


class DeviceIdentity:
    """The device's SPDM identity: a root CA -> device leaf chain (P-384 unless ``curve`` says P-256) and
    measurement digests."""

    def __init__(self, *, seed: int, firmware: tuple[bytes, ...] = _DEFAULT_FIRMWARE, curve: str = "P-384") -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidArgument(f"DeviceIdentity seed: expected an int, got {seed!r}")
        if not 1 <= len(firmware) <= 0xFE or not all(isinstance(b, bytes) for b in firmware):
            raise InvalidArgument(f"DeviceIdentity firmware: expected 1..254 byte blobs, got {firmware!r:.80}")
        if curve not in CURVES:
            raise InvalidArgument(f"DeviceIdentity curve: expected one of {', '.join(CURVES)}, got {curve!r}")
        self.seed = seed
        self.curve = curve
        self._leaf_key, self._root, self._leaf = _material(seed, curve)
        # SPDM measurement indices start at 1 (index 0 means "none", 0xFF "all")
        self._measurements = {i: hashlib.sha384(blob).digest() for i, blob in enumerate(firmware, start=1)}

    def __repr__(self) -> str:
        curve = "" if self.curve == "P-384" else f", curve={self.curve!r}"
        return f"DeviceIdentity(seed={self.seed}{curve})"

    def certificate_chain(self) -> tuple[bytes, ...]:
        """DER certificates, root first (the SPDM certificate-chain order)."""
        return (self._root, self._leaf)

    def root_certificate(self) -> bytes:
        return self._root

    def measurements(self) -> dict[int, bytes]:
        return dict(self._measurements)

    def measurements_digest(self) -> bytes:
        """SHA-384 over (index, digest) pairs in index order: what evidence commits to."""
        return _digest_measurements(self._measurements)

    def sign(self, data: bytes, hash_name: str = "sha384") -> bytes:
        """ECDSA with the leaf key over ``hash_name`` ("sha384", or "sha256" for an SPDM suite that negotiated
        SHA-256); DER-encoded signature."""
        if not isinstance(data, bytes):
            raise InvalidArgument(f"DeviceIdentity.sign data: expected bytes, got {type(data).__name__}")
        algorithm = _HASHES.get(hash_name)
        if algorithm is None:
            raise InvalidArgument(
                f"DeviceIdentity.sign hash_name: expected one of {', '.join(_HASHES)}, got {hash_name!r}"
            )
        return self._leaf_key.sign(data, _ecdsa(algorithm()))


# ------------------------------------------------------------------------------------------ evidence
def _exact(n: int | None) -> Any:
    def check(inst: Any, a: attrs.Attribute[Any], v: Any) -> None:
        if not isinstance(v, bytes) or (n is not None and len(v) != n):
            want = "bytes" if n is None else f"{n} bytes"
            got = f"{len(v)} bytes" if isinstance(v, bytes) else type(v).__name__
            raise InvalidArgument(f"SignedEvidence.{a.name}: expected {want}, got {got}")

    return check


@attrs.frozen(kw_only=True)
class SignedEvidence:
    """A DEVICE_INTERFACE_REPORT bound to a caller's nonce and the device's measurements, signed."""

    report: bytes = attrs.field(validator=_exact(None), repr=False)
    nonce: bytes = attrs.field(validator=_exact(NONCE_LEN))
    measurements_digest: bytes = attrs.field(validator=_exact(DIGEST_LEN), repr=False)
    signature: bytes = attrs.field(validator=_exact(None), repr=False)

    def signed_bytes(self) -> bytes:
        """What the signature covers: a domain tag, the nonce, the measurements and the report's hash."""
        return _EVIDENCE_TAG + self.nonce + self.measurements_digest + hashlib.sha384(self.report).digest()


def make_evidence(identity: DeviceIdentity, report: bytes, nonce: bytes) -> SignedEvidence:
    """Sign ``report`` for the caller's ``nonce`` (32 bytes) with the device's leaf key."""
    unsigned = SignedEvidence(
        report=report, nonce=nonce, measurements_digest=identity.measurements_digest(), signature=b""
    )
    return attrs.evolve(unsigned, signature=identity.sign(unsigned.signed_bytes()))


@functools.lru_cache(maxsize=64)
def _parse(chain: tuple[bytes, ...]) -> tuple[x509.Certificate, ...]:
    """The chain's certificates (kept per chain: a device presents the same chain to every attestation)."""
    try:
        return tuple(x509.load_der_x509_certificate(der) for der in chain)
    except (ValueError, TypeError) as exc:
        raise EvidenceError(f"a certificate does not parse: {exc}", reason=EvidenceFailure.MALFORMED) from None


@functools.lru_cache(maxsize=256)
def _link_signature(issuer_der: bytes, cert_der: bytes) -> str:
    """Why ``cert_der`` is not signed by ``issuer_der``'s key ("" if it is). A pure function of the two
    certificates' bytes, so it is kept: every attestation re-verifies the same device chain, and the ECDSA
    verify is most of what a verification costs."""
    issuer = x509.load_der_x509_certificate(issuer_der)
    cert = x509.load_der_x509_certificate(cert_der)
    key = issuer.public_key()
    algorithm = cert.signature_hash_algorithm
    if not isinstance(key, ec.EllipticCurvePublicKey) or algorithm is None:
        return "its issuer does not hold an ECDSA key"
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except InvalidSignature:
        return "not signed by the certificate before it (swapped or forged)"
    return ""


def _check_link(
    issuer: x509.Certificate, cert: x509.Certificate, ders: tuple[bytes, bytes], depth: int, at: datetime.datetime
) -> None:
    """``cert`` (at ``depth`` in the chain) is issued and signed by ``issuer``, which is a CA."""

    def bad(why: str) -> EvidenceError:
        return EvidenceError(f"certificate {depth}: {why}", reason=EvidenceFailure.BAD_CHAIN)

    try:
        is_ca = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise bad("its issuer is not a CA certificate")
    if cert.issuer != issuer.subject:
        raise bad(f"issuer {cert.issuer.rfc4514_string()} is not {issuer.subject.rfc4514_string()}")
    why = _link_signature(*ders)
    if why:
        raise bad(why)
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise bad(f"not valid at {at.isoformat()}")


def verify_evidence(
    evidence: SignedEvidence,
    *,
    trusted_root: bytes,
    chain: tuple[bytes, ...],
    expected_nonce: bytes,
    expected_measurements_digest: bytes | None = None,
    at: datetime.datetime | None = None,
) -> None:
    """Raise :class:`EvidenceError` naming the first failed check; return None if the evidence holds.

    Order: chain shape, trusted root, each issuer -> subject link, evidence signature under the leaf key,
    freshness (the nonce is the caller's), then the measurements if a reference digest is given.
    """
    if len(chain) < 2:
        raise EvidenceError(
            f"the chain needs the root and a device certificate, got {len(chain)} certificate(s)",
            reason=EvidenceFailure.MALFORMED,
        )
    if chain[0] != trusted_root:
        raise EvidenceError(
            "the chain does not start at the trusted root (foreign root)", reason=EvidenceFailure.WRONG_ROOT
        )
    chain = tuple(chain)
    certs = _parse(chain)
    now = at or datetime.datetime.now(datetime.UTC)
    for depth in range(1, len(certs)):
        _check_link(certs[depth - 1], certs[depth], (chain[depth - 1], chain[depth]), depth, now)
    leaf_key = certs[-1].public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or not isinstance(
        leaf_key.curve, ec.SECP384R1 | ec.SECP256R1
    ):
        raise EvidenceError(
            "the device certificate does not hold a P-384 or P-256 key", reason=EvidenceFailure.BAD_CHAIN
        )
    try:
        leaf_key.verify(evidence.signature, evidence.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError(
            "the signature does not verify under the device key (report, nonce or "
            "measurements altered, or another device signed)",
            reason=EvidenceFailure.BAD_SIGNATURE,
        ) from None
    if evidence.nonce != expected_nonce:
        raise EvidenceError(
            "the evidence answers another nonce (stale: from an earlier lock or request)",
            reason=EvidenceFailure.STALE_NONCE,
        )
    if expected_measurements_digest is not None and evidence.measurements_digest != expected_measurements_digest:
        raise EvidenceError("the measurements are not the expected ones", reason=EvidenceFailure.WRONG_MEASUREMENTS)
