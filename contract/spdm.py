"""SPDM 1.2 secure sessions: messages, transcript, key schedule and secured messages, both ends.

What the suite and the reference responder speak after VCA (DSP0274 1.2; secured messages per DSP0277;
carried in PCI DOE data object type 2, "secured SPDM", PCIe 6.x §6.31.4):

* GET_DIGESTS / DIGESTS and GET_CERTIFICATE / CERTIFICATE (read in portions: Offset, Length,
  PortionLength, RemainderLength) over the SPDM certificate chain format -- Length (2), reserved
  (2), the root certificate's hash, then the DER certificates, root first (DSP0274 §10.6-§10.7);
* KEY_EXCHANGE / KEY_EXCHANGE_RSP with ephemeral ECDH, the responder's signature over the transcript
  and its ResponderVerifyData HMAC (§10.13); FINISH / FINISH_RSP inside the session under the
  handshake keys (§10.14; HANDSHAKE_IN_THE_CLEAR is not used, so FINISH_RSP carries no HMAC);
* END_SESSION / END_SESSION_ACK (§10.19) and KEY_UPDATE / KEY_UPDATE_ACK (§10.17);
* the key schedule (§12.4-§12.7): HKDF-Extract/Expand over the negotiated hash with
  ``BinConcat(Length, "spdm1.2 " + Label, Context)`` labels ("derived", "req hs data", "rsp hs data",
  "req app data", "rsp app data", "finished", "key" -- as long as the AEAD's key --, "iv", "traffic upd");
* secured messages (DSP0277 §6): session ID (4 bytes, the requester's half first), Length (2), then
  AES-GCM over ApplicationDataLength (2) || the SPDM message, with the session ID and Length as
  associated data and a per-direction 64-bit sequence number XORed into the IV (PCI DOE sends no
  sequence number on the wire).

Cipher suites (:class:`CipherSuite`): SHA-256 or SHA-384; ECDSA P-256 or P-384 (raw r||s signatures);
ECDHE secp256r1 or secp384r1; AES-128-GCM or AES-256-GCM; always the SPDM key schedule and opaque data
format 1. The requester offers all of them (:func:`offer_algorithms`) and follows whatever ALGORITHMS
selects, refusing a selection it did not offer or of more than one bit (:func:`negotiated_suite`), and a
leaf certificate whose key is not on the selected curve. A responder serves one suite, by default
:data:`DEFAULT_SUITE` (SHA-384, P-384, secp384r1, AES-256-GCM: what the reference device's P-384
identity signs with); another is chosen with ``SpdmResponder(..., suite=...)`` and a chain on its curve.

:class:`SpdmRequester` and :class:`SpdmResponder` are pure state objects (no sockets): bytes in, bytes
out. Bad input raises :class:`SessionError` (a FramingError, so a CodecError, carrying the SPDM error
code to answer) and changes no state.
"""

from __future__ import annotations

import datetime
import enum
import functools
import hashlib
import hmac
import itertools
import operator
import os
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from teeio_conformance.contract import framing as fr
from teeio_conformance.contract.errors import InvalidArgument

__all__ = [
    "AEAD_AES_256_GCM",
    "CAP_ENCRYPT",
    "CAP_KEY_UPD",
    "CAP_MAC",
    "CERT_PORTION",
    "DEFAULT_SUITE",
    "DHE_SECP384R1",
    "IN_SESSION_CODES",
    "KEY_SCHEDULE_SPDM",
    "SESSION_FLAGS",
    "Aead",
    "BaseAsym",
    "BaseHash",
    "ChainError",
    "CipherSuite",
    "Code",
    "Dhe",
    "ErrorCode",
    "H",
    "KeyUpdateOp",
    "SessionError",
    "SpdmRequester",
    "SpdmResponder",
    "bin_concat",
    "cert_chain_buffer",
    "get_capabilities",
    "negotiated_suite",
    "offer_algorithms",
    "select_session_algorithms",
    "session_id_of",
    "verify_chain",
]

IV_SIZE = 12
TAG_SIZE = 16
NONCE_SIZE = 32
CERT_PORTION = 0x400
"""How much of the certificate chain the requester asks for per GET_CERTIFICATE (the reference chain
is about 1.1 KiB, so it is read in two portions as a real requester would)."""
MAX_SESSIONS = 16
_VERSION_LABEL = b"spdm1.2 "
_SIGN_PREFIX = b"dmtf-spdm-v1.2.*" * 4
_KE_CONTEXT = b"responder-key_exchange_rsp signing"

# capability flags beyond framing's (DSP0274 1.2 CAPABILITIES Flags)
CAP_CERT = 0x0000_0002
CAP_ENCRYPT = 0x0000_0040
CAP_MAC = 0x0000_0080
CAP_KEY_UPD = 0x0000_4000
SESSION_FLAGS = CAP_CERT | CAP_ENCRYPT | CAP_MAC | fr.CAP_KEY_EX | CAP_KEY_UPD
KEY_SCHEDULE_SPDM = 0x0001
OPAQUE_DATA_FMT_1 = 0x02
"""OtherParamsSupport: opaque data in the general format 1 (DSP0274 1.2); libspdm refuses KEY_EXCHANGE
in SPDM 1.2 unless this format was negotiated."""


class Code(enum.IntEnum):
    DIGESTS = 0x01
    CERTIFICATE = 0x02
    KEY_EXCHANGE_RSP = 0x64
    FINISH_RSP = 0x65
    KEY_UPDATE_ACK = 0x69
    END_SESSION_ACK = 0x6C
    GET_DIGESTS = 0x81
    GET_CERTIFICATE = 0x82
    KEY_EXCHANGE = 0xE4
    FINISH = 0xE5
    KEY_UPDATE = 0xE9
    END_SESSION = 0xEC


IN_SESSION_CODES = (Code.FINISH, Code.END_SESSION, Code.KEY_UPDATE)
"""Requests that exist only inside a session; in the clear they get ERROR SessionRequired."""


class ErrorCode(enum.IntEnum):
    """The SPDM 1.2 ERROR codes a session can meet (DSP0274 §10.10 Table 'Error code and data')."""

    INVALID_REQUEST = 0x01
    UNEXPECTED_REQUEST = 0x04
    UNSPECIFIED = 0x05
    DECRYPT_ERROR = 0x06
    UNSUPPORTED_REQUEST = 0x07
    SESSION_LIMIT_EXCEEDED = 0x0A
    SESSION_REQUIRED = 0x0B


class KeyUpdateOp(enum.IntEnum):
    UPDATE_KEY = 1
    UPDATE_ALL_KEYS = 2
    VERIFY_NEW_KEY = 3


class SessionError(fr.FramingError):
    """A session message that cannot be accepted: malformed, out of order, failing its MAC or signature."""


class ChainError(SessionError):
    """The responder's certificate chain does not verify against the trusted root."""


def _bad(why: str, code: int = ErrorCode.INVALID_REQUEST) -> SessionError:
    return SessionError(why, code=code)


# ------------------------------------------------------------------------------------------ cipher suites
class BaseHash(enum.IntEnum):
    """BaseHashAlgo / BaseHashSel bits this stack speaks (DSP0274 1.2 NEGOTIATE_ALGORITHMS); the names are
    spdm-emu's ``--hash`` values."""

    SHA_256 = fr.HASH_SHA_256
    SHA_384 = fr.HASH_SHA_384


class BaseAsym(enum.IntEnum):
    """BaseAsymAlgo / BaseAsymSel bits this stack speaks (spdm-emu's ``--asym`` names)."""

    ECDSA_P256 = fr.ASYM_ECDSA_P256
    ECDSA_P384 = fr.ASYM_ECDSA_P384


class Dhe(enum.IntEnum):
    """DHE structure table bits this stack speaks (DSP0274 1.2 Table 'DHE'; spdm-emu's ``--dhe`` names)."""

    SECP_256_R1 = 0x0008
    SECP_384_R1 = 0x0010


class Aead(enum.IntEnum):
    """AEAD structure table bits this stack speaks (DSP0274 1.2 Table 'AEAD'; spdm-emu's ``--aead`` names)."""

    AES_128_GCM = 0x0001
    AES_256_GCM = 0x0002


DHE_SECP384R1 = Dhe.SECP_384_R1
AEAD_AES_256_GCM = Aead.AES_256_GCM

_HASHES: dict[BaseHash, tuple[int, Callable[[], hashes.HashAlgorithm], Callable[..., Any]]] = {
    BaseHash.SHA_256: (32, hashes.SHA256, hashlib.sha256),
    BaseHash.SHA_384: (48, hashes.SHA384, hashlib.sha384),
}
_CURVES: dict[int, tuple[int, type[ec.EllipticCurve], str]] = {  # coordinate size, curve, name
    BaseAsym.ECDSA_P256: (32, ec.SECP256R1, "P-256"),
    BaseAsym.ECDSA_P384: (48, ec.SECP384R1, "P-384"),
}
_GROUPS: dict[Dhe, tuple[int, type[ec.EllipticCurve]]] = {
    Dhe.SECP_256_R1: (32, ec.SECP256R1),
    Dhe.SECP_384_R1: (48, ec.SECP384R1),
}
_AEAD_KEY_SIZE = {Aead.AES_128_GCM: 16, Aead.AES_256_GCM: 32}


_E = TypeVar("_E", bound=enum.IntEnum)


def _member(kind: type[_E], field: str, value: object) -> _E:
    try:
        return kind(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        names = ", ".join(m.name for m in kind)
        raise InvalidArgument(f"CipherSuite.{field}: {value!r} is not one of {names}") from None


def _to_hash(value: object) -> BaseHash:
    return _member(BaseHash, "hash", value)


def _to_asym(value: object) -> BaseAsym:
    return _member(BaseAsym, "asym", value)


def _to_dhe(value: object) -> Dhe:
    return _member(Dhe, "dhe", value)


def _to_aead(value: object) -> Aead:
    return _member(Aead, "aead", value)


@attrs.frozen
class CipherSuite:
    """The algorithms one SPDM connection negotiated for its sessions (DSP0274 1.2 §10.4 ALGORITHMS): the
    hash of the transcript, HKDF and HMAC; the responder's signature; the ephemeral ECDHE group; the AEAD of
    secured messages (DSP0277). The key schedule is always SPDM's. Every size a message or key derives
    from comes from here, so nothing else names a digest or a curve."""

    hash: BaseHash = attrs.field(default=BaseHash.SHA_384, converter=_to_hash)
    asym: BaseAsym = attrs.field(default=BaseAsym.ECDSA_P384, converter=_to_asym)
    dhe: Dhe = attrs.field(default=Dhe.SECP_384_R1, converter=_to_dhe)
    aead: Aead = attrs.field(default=Aead.AES_256_GCM, converter=_to_aead)
    hash_size: int = attrs.field(init=False, eq=False, repr=False)
    """H: digest size, and the size of every secret, finished key and verify data (§12.4)."""
    sig_size: int = attrs.field(init=False, eq=False, repr=False)
    """ECDSA signatures travel as raw r || s, each the curve's coordinate size (§10.13)."""
    dhe_size: int = attrs.field(init=False, eq=False, repr=False)
    """ExchangeData: the ephemeral public point X || Y (§10.13)."""
    key_size: int = attrs.field(init=False, eq=False, repr=False)
    """The AEAD key length asked of HKDF-Expand with "key" (§12.7)."""
    session_sizes: fr.SessionSizes = attrs.field(init=False, eq=False, repr=False)
    """The sizes a session message's length in the clear takes from the suite (DOE padding is stripped by it)."""
    hash_algorithm: hashes.HashAlgorithm = attrs.field(init=False, eq=False, repr=False)
    _hashlib: Callable[..., Any] = attrs.field(init=False, eq=False, repr=False)

    @hash_size.default
    def _hash_size(self) -> int:
        return _HASHES[self.hash][0]

    @sig_size.default
    def _sig_size(self) -> int:
        return 2 * _CURVES[self.asym][0]

    @dhe_size.default
    def _dhe_size(self) -> int:
        return 2 * _GROUPS[self.dhe][0]

    @key_size.default
    def _key_size(self) -> int:
        return _AEAD_KEY_SIZE[self.aead]

    @session_sizes.default
    def _session_sizes(self) -> fr.SessionSizes:
        return fr.SessionSizes(hash=self.hash_size, dhe=self.dhe_size, sig=self.sig_size)

    @hash_algorithm.default
    def _hash_algorithm(self) -> hashes.HashAlgorithm:
        return _HASHES[self.hash][1]()

    @_hashlib.default
    def _hashlib_default(self) -> Callable[..., Any]:
        return _HASHES[self.hash][2]

    @classmethod
    def all(cls) -> tuple[CipherSuite, ...]:
        """Every suite this stack speaks (2 x 2 x 2 x 2)."""
        return tuple(cls(*c) for c in itertools.product(BaseHash, BaseAsym, Dhe, Aead))

    @property
    def curve_name(self) -> str:
        """The curve the responder's leaf key must be on ("P-256" or "P-384")."""
        return _CURVES[self.asym][2]

    def __str__(self) -> str:
        return f"{self.hash.name}/{self.asym.name}/{self.dhe.name}/{self.aead.name}"

    # -- primitives
    def digest(self, data: bytes) -> bytes:
        return bytes(self._hashlib(data).digest())

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self._hashlib).digest()

    def expand(self, secret: bytes, label: bytes, length: int, context: bytes = b"") -> bytes:
        return HKDFExpand(self.hash_algorithm, length, bin_concat(length, label, context)).derive(secret)

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        return self.hmac(salt, ikm)  # HKDF-Extract is HMAC(salt, IKM)

    def raw_signature(self, der: bytes) -> bytes:
        """A DER ECDSA signature as SPDM sends it: r || s, each the coordinate size (DSP0274 §10.13)."""
        r, s = decode_dss_signature(der)
        n = self.sig_size // 2
        return r.to_bytes(n, "big") + s.to_bytes(n, "big")

    def verify(self, key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> None:
        """Raises InvalidSignature unless ``signature`` (r || s) signs ``message`` under the suite's hash."""
        n = self.sig_size // 2
        r, s = int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big")
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(self.hash_algorithm))

    def new_dhe_key(self) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(_GROUPS[self.dhe][1]())

    def dhe_public(self, key: ec.EllipticCurvePrivateKey) -> bytes:
        n, pub = self.dhe_size // 2, key.public_key().public_numbers()
        return pub.x.to_bytes(n, "big") + pub.y.to_bytes(n, "big")

    def dhe_shared(self, key: ec.EllipticCurvePrivateKey, peer: bytes) -> bytes:
        n, curve = self.dhe_size // 2, _GROUPS[self.dhe][1]()
        try:
            pub = ec.EllipticCurvePublicNumbers(
                int.from_bytes(peer[:n], "big"), int.from_bytes(peer[n:], "big"), curve
            ).public_key()
            return key.exchange(ec.ECDH(), pub)
        except ValueError:
            raise _bad(f"the ExchangeData is not a point on {curve.name}") from None

    def holds(self, key: object) -> bool:
        """Is ``key`` an EC public key on the curve BaseAsymSel names?"""
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES[self.asym][1])


DEFAULT_SUITE = CipherSuite()
"""What the reference responder selects unless configured otherwise, and what its identity (P-384) signs
with: SHA-384, ECDSA P-384, secp384r1, AES-256-GCM."""
H = DEFAULT_SUITE.hash_size
DHE_SIZE = DEFAULT_SUITE.dhe_size
SIG_SIZE = DEFAULT_SUITE.sig_size
KEY_SIZE = DEFAULT_SUITE.key_size


def bin_concat(length: int, label: bytes, context: bytes = b"") -> bytes:
    """``BinConcat`` (DSP0274 §12.4): the output length (u16 LE), "spdm1.2 " and the label, the context."""
    return struct.pack("<H", length) + _VERSION_LABEL + label + context


@attrs.frozen
class _Secrets:
    """One session's secrets after the handshake (TH1) and, once FINISH is done, the data phase (TH2)."""

    suite: CipherSuite
    handshake: bytes
    req_hs: bytes
    rsp_hs: bytes

    @classmethod
    def from_dhe(cls, suite: CipherSuite, dhe_secret: bytes, th1: bytes) -> _Secrets:
        h = suite.hash_size
        hs = suite.extract(bytes(h), dhe_secret)  # Salt_0 is H zero bytes
        return cls(suite, hs, suite.expand(hs, b"req hs data", h, th1), suite.expand(hs, b"rsp hs data", h, th1))

    def data(self, th2: bytes) -> tuple[bytes, bytes]:
        suite, h = self.suite, self.suite.hash_size
        salt1 = suite.expand(self.handshake, b"derived", h)
        master = suite.extract(salt1, bytes(h))
        return suite.expand(master, b"req app data", h, th2), suite.expand(master, b"rsp app data", h, th2)

    def finished_key(self, secret: bytes) -> bytes:
        return self.suite.expand(secret, b"finished", self.suite.hash_size)


class _Direction:
    """One direction of a session: AEAD key, IV and the next sequence number (DSP0277 §6.2)."""

    def __init__(self, suite: CipherSuite, secret: bytes) -> None:
        self.suite = suite
        self.secret = secret
        self.aead = AESGCM(suite.expand(secret, b"key", suite.key_size))
        self.iv = suite.expand(secret, b"iv", IV_SIZE)
        self.seq = 0

    def updated(self) -> _Direction:
        """The next generation (KEY_UPDATE): HKDF-Expand of the current secret with "traffic upd"."""
        return _Direction(self.suite, self.suite.expand(self.secret, b"traffic upd", self.suite.hash_size))

    def nonce(self, seq: int) -> bytes:
        low = int.from_bytes(self.iv[:8], "little") ^ seq
        return low.to_bytes(8, "little") + self.iv[8:]


_REC = struct.Struct("<IH")  # session ID, Length (of what follows: ciphertext and MAC)


def session_id_of(record: bytes) -> int:
    """The session ID a secured message names (before it can be opened)."""
    if len(record) < _REC.size:
        raise _bad(f"a secured message is at least {_REC.size} bytes, got {len(record)}")
    return int(_REC.unpack_from(record)[0])


def _seal(d: _Direction, session_id: int, message: bytes) -> bytes:
    if d.seq >= (1 << 64) - 1:
        raise _bad("the sequence number is exhausted; the session needs a key update", ErrorCode.UNSPECIFIED)
    plain = struct.pack("<H", len(message)) + message
    aad = _REC.pack(session_id, len(plain) + TAG_SIZE)
    out = aad + d.aead.encrypt(d.nonce(d.seq), plain, aad)
    d.seq += 1
    return out


def _open(d: _Direction, record: bytes) -> bytes:
    """The SPDM message inside ``record`` (DOE padding after the record is ignored); the sequence number
    moves on only when the record authenticates."""
    sid = session_id_of(record)
    length = _REC.unpack_from(record)[1]
    if length < TAG_SIZE + 2 or len(record) < _REC.size + length or len(record) > _REC.size + length + 3:
        raise _bad(f"secured message Length {length} does not fit its {len(record)} bytes", ErrorCode.DECRYPT_ERROR)
    aad = record[: _REC.size]
    try:
        plain = d.aead.decrypt(d.nonce(d.seq), record[_REC.size : _REC.size + length], aad)
    except InvalidTag:
        raise _bad(f"secured message for session {sid:#010x} fails its MAC", ErrorCode.DECRYPT_ERROR) from None
    d.seq += 1  # it authenticated: the peer has moved on, whatever it holds
    (app_len,) = struct.unpack_from("<H", plain)
    if app_len + 2 > len(plain) or app_len < 4:
        raise _bad(f"ApplicationDataLength {app_len} does not fit the {len(plain) - 2} bytes decrypted")
    return plain[2 : 2 + app_len]


# ------------------------------------------------------------------------------------------ certificates
def cert_chain_buffer(chain: tuple[bytes, ...], suite: CipherSuite = DEFAULT_SUITE) -> bytes:
    """The SPDM certificate chain (DSP0274 §10.6.1): Length, reserved, H(root) under the negotiated hash,
    the DER certificates."""
    if not chain:
        raise InvalidArgument("a certificate chain needs at least the root certificate")
    body = suite.digest(chain[0]) + b"".join(chain)
    return struct.pack("<HH", 4 + len(body), 0) + body


def _split_der(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        if data[at] != 0x30 or at + 2 > len(data):
            raise ChainError("the certificate chain holds something that is not a DER certificate")
        n = data[at + 1]
        head = 2
        if n & 0x80:
            k = n & 0x7F
            if not 1 <= k <= 3 or at + 2 + k > len(data):
                raise ChainError("a certificate's DER length is malformed")
            n, head = int.from_bytes(data[at + 2 : at + 2 + k], "big"), 2 + k
        if at + head + n > len(data):
            raise ChainError("a certificate runs past the end of the chain")
        out.append(data[at : at + head + n])
        at += head + n
    return out


def verify_chain(
    buffer: bytes, trusted_root: bytes | None, suite: CipherSuite = DEFAULT_SUITE
) -> ec.EllipticCurvePublicKey:
    """The leaf's public key once the chain checks out: its Length and root hash (under the suite's hash),
    the root is the trusted one (when given), every certificate is signed by the one before it, which is a
    CA, and the leaf's key is on the curve ALGORITHMS selected (BaseAsymSel: DSP0274 §10.4, the KEY_EXCHANGE_RSP
    signature is made with it)."""
    h = suite.hash_size
    if len(buffer) < 4 + h or struct.unpack_from("<H", buffer)[0] != len(buffer):
        raise ChainError(f"the certificate chain's Length does not match its {len(buffer)} bytes")
    ders = _split_der(buffer[4 + h :])
    if len(ders) < 2:
        raise ChainError(f"the chain needs a root and a device certificate, got {len(ders)}")
    if buffer[4 : 4 + h] != suite.digest(ders[0]):
        raise ChainError("the chain's RootHash is not the hash of its first certificate")
    if trusted_root is not None and ders[0] != trusted_root:
        raise ChainError("the chain does not start at the trusted root")
    try:
        certs = [x509.load_der_x509_certificate(d) for d in ders]
    except ValueError as exc:
        raise ChainError(f"a certificate does not parse: {exc}") from None
    now = datetime.datetime.now(datetime.UTC)
    for issuer, cert in itertools.pairwise(certs):
        try:
            ca = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        key, alg = issuer.public_key(), cert.signature_hash_algorithm
        if not ca or cert.issuer != issuer.subject or not isinstance(key, ec.EllipticCurvePublicKey) or alg is None:
            raise ChainError(f"{cert.subject.rfc4514_string()} is not issued by a CA before it in the chain")
        try:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(alg))
        except InvalidSignature:
            raise ChainError(f"{cert.subject.rfc4514_string()} is not signed by its issuer") from None
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ChainError(f"{cert.subject.rfc4514_string()} is not valid now")
    leaf = certs[-1].public_key()
    if not isinstance(leaf, ec.EllipticCurvePublicKey) or not suite.holds(leaf):
        held = leaf.curve.name if isinstance(leaf, ec.EllipticCurvePublicKey) else type(leaf).__name__
        raise ChainError(
            f"the device certificate holds a {held} key; ALGORITHMS selected BaseAsymSel {suite.asym.name}, "
            f"which needs a {suite.curve_name} key"
        )
    return leaf


@functools.lru_cache(maxsize=64)
def _leaf_curve(der: bytes) -> str:
    """The curve of a DER certificate's EC key ("P-256", "P-384", or what else it holds); kept per
    certificate, as every connection of a served device constructs a responder over the same chain."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError as exc:
        raise InvalidArgument(f"the chain's leaf certificate does not parse: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return type(key).__name__
    names = {curve().name: name for _size, curve, name in _CURVES.values()}
    return names.get(key.curve.name, key.curve.name)


def _signed_message(th: bytes) -> bytes:
    """What a 1.2 KEY_EXCHANGE_RSP signature covers (DSP0274 §15): the version prefix four times, zero
    padding and the context to 36 bytes, then the transcript hash."""
    return _SIGN_PREFIX + bytes(36 - len(_KE_CONTEXT)) + _KE_CONTEXT + th


# ------------------------------------------------------------------------------------------ messages
def _head(data: bytes, code: int, size: int, what: str, *, exact: bool = True) -> None:
    if len(data) < 4 or data[1] != code:
        raise _bad(f"not an SPDM {what}")
    if data[0] != fr.SPDM_VERSION:
        raise _bad(f"{what} in SPDM version {data[0]:#04x}, 1.2 negotiated", fr.SpdmErrorCode.VERSION_MISMATCH)
    if len(data) < size or (exact and len(data) != size):
        raise _bad(f"{what} must be {'' if exact else 'at least '}{size} bytes, got {len(data)}")


def _msg(code: int, p1: int = 0, p2: int = 0, body: bytes = b"") -> bytes:
    return bytes([fr.SPDM_VERSION, code, p1, p2]) + body


REQUESTER_FLAGS = CAP_ENCRYPT | CAP_MAC | fr.CAP_KEY_EX | CAP_KEY_UPD


def get_capabilities() -> bytes:
    """The requester's GET_CAPABILITIES: encryption, MAC, KEY_EX and KEY_UPD (no certificate of its own)."""
    size = fr.MAX_PAYLOAD - fr.DOE_HEADER.size
    return fr.GetCapabilities(flags=REQUESTER_FLAGS, data_transfer_size=size, max_spdm_msg_size=size).encode()


def offer_algorithms() -> fr.NegotiateAlgorithms:
    """The requester's NEGOTIATE_ALGORITHMS: every suite it speaks (each of hash, signature, DHE group and
    AEAD in both sizes), the SPDM key schedule and opaque data format 1. No ReqBaseAsymAlg table: this
    requester has no key of its own, and an empty AlgSupported is refused by libspdm (InvalidRequest)."""
    return fr.NegotiateAlgorithms(
        measurement_specification=fr.MEAS_SPEC_DMTF,
        other_params_support=OPAQUE_DATA_FMT_1,
        base_asym_algo=_all_bits(BaseAsym),
        base_hash_algo=_all_bits(BaseHash),
        alg_structs=(
            fr.AlgStruct(alg_type=fr.AlgType.DHE, supported=_all_bits(Dhe)),
            fr.AlgStruct(alg_type=fr.AlgType.AEAD, supported=_all_bits(Aead)),
            fr.AlgStruct(alg_type=fr.AlgType.KEY_SCHEDULE, supported=KEY_SCHEDULE_SPDM),
        ),
    )


def _all_bits(kind: type[enum.IntEnum]) -> int:
    return functools.reduce(operator.or_, (int(m) for m in kind), 0)


def select_session_algorithms(req: fr.NegotiateAlgorithms, suite: CipherSuite = DEFAULT_SUITE) -> fr.Algorithms | None:
    """The responder's selection of ``suite`` (its one suite) when the requester offers all of it; None when
    it does not. Every requested structure table gets a response table (DSP0274 1.2 ALGORITHMS)."""
    offered = {s.alg_type: s.supported for s in req.alg_structs}
    if not (
        req.base_hash_algo & suite.hash
        and req.base_asym_algo & suite.asym
        and offered.get(fr.AlgType.DHE, 0) & suite.dhe
        and offered.get(fr.AlgType.AEAD, 0) & suite.aead
        and offered.get(fr.AlgType.KEY_SCHEDULE, 0) & KEY_SCHEDULE_SPDM
    ):
        return None
    pick: dict[int, int] = {
        fr.AlgType.DHE: suite.dhe,
        fr.AlgType.AEAD: suite.aead,
        fr.AlgType.KEY_SCHEDULE: KEY_SCHEDULE_SPDM,
    }
    return fr.Algorithms(
        other_params_selection=req.other_params_support & OPAQUE_DATA_FMT_1,
        base_hash_sel=suite.hash,
        base_asym_sel=suite.asym,
        alg_structs=tuple(
            fr.AlgStruct(alg_type=s.alg_type, supported=pick.get(s.alg_type, 0)) for s in req.alg_structs
        ),
    )


def _selected_suite(algs: fr.Algorithms) -> CipherSuite | None:
    """The suite an ALGORITHMS answer selects, or None when it leaves a session algorithm unselected (a
    responder without KEY_EX selects no DHE group or AEAD) or selects one this stack does not speak."""
    chosen = {s.alg_type: s.supported for s in algs.alg_structs}
    if chosen.get(fr.AlgType.KEY_SCHEDULE) != KEY_SCHEDULE_SPDM:
        return None
    try:
        return CipherSuite(
            algs.base_hash_sel, algs.base_asym_sel, chosen.get(fr.AlgType.DHE), chosen.get(fr.AlgType.AEAD)
        )
    except InvalidArgument:
        return None


def negotiated_suite(offer: fr.NegotiateAlgorithms, algs: fr.Algorithms) -> CipherSuite | None:
    """What a requester that sent ``offer`` takes from the answer ``algs``: the selected suite, or None when
    the responder selected no session suite (sessions then cannot be opened, VCA still stands).

    Each selection must be one bit (or none) of what was offered (DSP0274 1.2 §10.4: the responder selects
    one of the requester's algorithms); anything else is a SessionError naming the field."""

    def one_of(field: str, selected: int, offered: int) -> None:
        if selected & ~offered:
            raise _bad(
                f"ALGORITHMS {field} {selected:#x} selects what NEGOTIATE_ALGORITHMS did not offer ({offered:#x})"
            )
        if selected & (selected - 1):
            raise _bad(f"ALGORITHMS {field} {selected:#x} selects more than one algorithm")

    one_of("MeasurementSpecificationSel", algs.measurement_specification_sel, offer.measurement_specification)
    one_of("OtherParamsSelection", algs.other_params_selection & 0x0F, offer.other_params_support & 0x0F)
    one_of("BaseHashSel", algs.base_hash_sel, offer.base_hash_algo)
    one_of("BaseAsymSel", algs.base_asym_sel, offer.base_asym_algo)
    if algs.ext_asym_sel and not offer.ext_asym:
        raise _bad("ALGORITHMS selects an extended asymmetric algorithm; none was offered")
    if algs.ext_hash_sel and not offer.ext_hash:
        raise _bad("ALGORITHMS selects an extended hash algorithm; none was offered")
    offered = {s.alg_type: s.supported for s in offer.alg_structs}
    for table in algs.alg_structs:
        name = fr.AlgType(table.alg_type).name
        one_of(f"{name} AlgSupported", table.supported, offered.get(table.alg_type, 0))
    return _selected_suite(algs)


_KE_FIXED = 4 + 2 + 1 + 1 + NONCE_SIZE  # header, ReqSessionID, SessionPolicy, reserved, RandomData
_KER_FIXED = 4 + 2 + 1 + 1 + NONCE_SIZE  # header, RspSessionID, MutAuthRequested, ReqSlotIDParam, RandomData


def _opaque(data: bytes, at: int, what: str) -> tuple[bytes, int]:
    if len(data) < at + 2:
        raise _bad(f"{what} ends before its OpaqueDataLength")
    (n,) = struct.unpack_from("<H", data, at)
    if n > 1024 or len(data) < at + 2 + n:
        raise _bad(f"{what} OpaqueDataLength {n} runs past its end (or over 1024)")
    return bytes(data[at + 2 : at + 2 + n]), at + 2 + n


@attrs.frozen
class _KeyExchange:
    req_session_id: int
    random: bytes
    exchange: bytes
    slot: int
    meas_hash_type: int

    @classmethod
    def decode(cls, data: bytes, suite: CipherSuite) -> _KeyExchange:
        dhe_size = suite.dhe_size
        _head(data, Code.KEY_EXCHANGE, _KE_FIXED + dhe_size + 2, "KEY_EXCHANGE", exact=False)
        (rsid,) = struct.unpack_from("<H", data, 4)
        _opaque_data, end = _opaque(data, _KE_FIXED + dhe_size, "KEY_EXCHANGE")
        if end != len(data):
            raise _bad(f"KEY_EXCHANGE has {len(data) - end} stray bytes after its opaque data")
        return cls(
            req_session_id=rsid,
            random=bytes(data[8:_KE_FIXED]),
            exchange=bytes(data[_KE_FIXED : _KE_FIXED + dhe_size]),
            slot=data[3],
            meas_hash_type=data[2],
        )


# ------------------------------------------------------------------------------------------ sessions
class _Phase(enum.Enum):
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"


@attrs.define
class _Session:
    """One session's keys and transcript at either end."""

    session_id: int
    secrets: _Secrets
    transcript: bytes  # message_a || Ct || message_k, then || message_f
    requests: _Direction  # requester -> responder
    responses: _Direction
    phase: _Phase = _Phase.HANDSHAKE
    after_seal: Callable[[], None] | None = None  # the change once a message is sealed
    fallback: _Direction | None = None  # the requester's old response key while an UPDATE_ALL_KEYS is answered

    @property
    def suite(self) -> CipherSuite:
        return self.secrets.suite

    def to_data_phase(self) -> None:
        req, rsp = self.secrets.data(self.suite.digest(self.transcript))
        self.requests, self.responses = _Direction(self.suite, req), _Direction(self.suite, rsp)
        self.phase = _Phase.ESTABLISHED


class _Transcript:
    """message_a (VCA requests and responses, in order) and the certificate chain both ends hash in."""

    def __init__(self) -> None:
        self.message_a = b""

    def vca(self, request: bytes, response: bytes) -> None:
        if request[1:2] == bytes([fr.SpdmCode.GET_VERSION]):
            self.message_a = b""
        self.message_a += request + response


class _Ephemeral:
    """The next KEY_EXCHANGE's ephemeral ECDHE key, made ahead of time by :meth:`prepare`.

    A caller that is about to wait anyway (for the peer's answer, or for the next request) makes it then,
    so the key exchange itself does not. Each key is still used for one exchange only, and only in the
    DHE group it was made for."""

    def __init__(self) -> None:
        self._spare: tuple[Dhe, ec.EllipticCurvePrivateKey] | None = None

    def prepare(self, suite: CipherSuite) -> None:
        if self._spare is None or self._spare[0] is not suite.dhe:
            self._spare = (suite.dhe, suite.new_dhe_key())

    def take(self, suite: CipherSuite) -> ec.EllipticCurvePrivateKey:
        spare, self._spare = self._spare, None
        return spare[1] if spare is not None and spare[0] is suite.dhe else suite.new_dhe_key()


class SpdmResponder:
    """The responder's session state for one connection (one DOE mailbox): several sessions at once.

    The caller (the socket server) answers VCA and feeds each VCA request/response pair to :meth:`vca`;
    plain GET_DIGESTS, GET_CERTIFICATE and KEY_EXCHANGE go to :meth:`handle`; a secured message is
    opened with :meth:`open`, a control message inside it answered by :meth:`handle_in_session`, and
    every answer in a session sealed with :meth:`seal`. VENDOR_DEFINED messages are the caller's.
    :meth:`take_events` says which sessions became established or ended since it was last asked.

    It speaks one cipher suite, ``suite`` (the reference's P-384 one by default): ALGORITHMS must select
    exactly it before sessions open. ``sign`` signs with the leaf key of ``chain``, which must be on the
    suite's curve, over the suite's hash (DER ECDSA).
    """

    def __init__(
        self,
        chain: tuple[bytes, ...],
        sign: Callable[[bytes], bytes],
        *,
        suite: CipherSuite = DEFAULT_SUITE,
        rng: Callable[[int], bytes] = os.urandom,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        if not chain:
            raise InvalidArgument("a certificate chain needs at least the root certificate")
        leaf_curve = _leaf_curve(chain[-1])
        if leaf_curve != suite.curve_name:
            raise InvalidArgument(f"the chain's leaf key is {leaf_curve}; suite {suite} signs with {suite.curve_name}")
        self.suite = suite
        self._buffer = cert_chain_buffer(chain, suite)
        self._ct = suite.digest(self._buffer)
        self._sign = sign
        self._rng = rng
        self._max = max_sessions
        self._t = _Transcript()
        self._ready = False
        self._sessions: dict[int, _Session] = {}
        self._next_half = 1
        self._events: list[tuple[str, int]] = []
        self._ephemeral = _Ephemeral()

    def prepare_key_exchange(self) -> None:
        """Make the next KEY_EXCHANGE_RSP's ephemeral key now: for a server to call while it waits for a request."""
        self._ephemeral.prepare(self.suite)

    @property
    def sessions(self) -> dict[int, str]:
        """Session ID -> phase, for every session this connection holds."""
        return {sid: s.phase.value for sid, s in self._sessions.items()}

    def established(self, session_id: int) -> bool:
        s = self._sessions.get(session_id)
        return s is not None and s.phase is _Phase.ESTABLISHED

    def take_events(self) -> list[tuple[str, int]]:
        out, self._events = self._events, []
        return out

    def vca(self, request: bytes, response: bytes, *, algorithms: fr.Algorithms | None = None) -> None:
        """Record one VCA exchange. GET_VERSION resets the connection and ends every session (§10.3);
        ``algorithms`` (with the ALGORITHMS answer) says whether sessions may now be opened: they may when it
        selects this responder's suite."""
        if request[1:2] == bytes([fr.SpdmCode.GET_VERSION]):
            self.reset()
        self._t.vca(request, response)
        if algorithms is not None:
            self._ready = _selected_suite(algorithms) == self.suite

    def reset(self) -> None:
        for sid in list(self._sessions):
            self._end(sid)
        self._t = _Transcript()
        self._ready = False

    def _end(self, sid: int) -> None:
        if self._sessions.pop(sid, None) is not None:
            self._events.append(("ended", sid))

    def drop(self, session_id: int) -> None:
        """End a session without a message (its secured message failed to decrypt, DSP0277 §6)."""
        self._end(session_id)

    def _error(self, code: int, data: int = 0) -> bytes:
        return fr.spdm_error(code, fr.SPDM_VERSION, data)

    # -- outside a session
    def handle(self, request: bytes) -> bytes:
        """GET_DIGESTS, GET_CERTIFICATE or KEY_EXCHANGE in the clear; an SPDM ERROR for anything wrong."""
        code = request[1] if len(request) >= 2 else -1
        try:
            if code == Code.GET_DIGESTS:
                return self._digests(request)
            if code == Code.GET_CERTIFICATE:
                return self._certificate(request)
            if code == Code.KEY_EXCHANGE:
                return self._key_exchange(request)
        except fr.FramingError as exc:
            return self._error(exc.code or ErrorCode.INVALID_REQUEST)
        if code in (Code.FINISH, Code.END_SESSION, Code.KEY_UPDATE):
            return self._error(ErrorCode.SESSION_REQUIRED)  # these exist only inside a session
        return self._error(ErrorCode.UNSUPPORTED_REQUEST, max(code, 0))

    def _require_ready(self) -> None:
        if not self._ready:
            raise _bad("VCA with the session algorithms must come first", ErrorCode.UNEXPECTED_REQUEST)

    def _digests(self, req: bytes) -> bytes:
        _head(req, Code.GET_DIGESTS, 4, "GET_DIGESTS")
        self._require_ready()
        return _msg(Code.DIGESTS, 0, 0x01, self._ct)  # slot 0 only

    def _certificate(self, req: bytes) -> bytes:
        _head(req, Code.GET_CERTIFICATE, 8, "GET_CERTIFICATE")
        self._require_ready()
        slot = req[2] & 0x0F
        offset, length = struct.unpack_from("<HH", req, 4)
        if slot != 0:
            raise _bad(f"certificate slot {slot} is empty")
        if offset >= len(self._buffer):
            raise _bad(f"certificate Offset {offset} is past the {len(self._buffer)}-byte chain")
        portion = self._buffer[offset : offset + min(length, CERT_PORTION)]
        remainder = len(self._buffer) - offset - len(portion)
        return _msg(Code.CERTIFICATE, slot, 0, struct.pack("<HH", len(portion), remainder) + portion)

    def _key_exchange(self, req: bytes) -> bytes:
        suite = self.suite
        ke = _KeyExchange.decode(req, suite)
        self._require_ready()
        if ke.slot != 0:
            raise _bad(f"KEY_EXCHANGE names slot {ke.slot}; only slot 0 holds a chain")
        if ke.meas_hash_type not in (0,):
            raise _bad("a measurement summary hash was asked for; this responder has no MEAS capability")
        if len(self._sessions) >= self._max:
            raise _bad(f"{self._max} sessions are open", ErrorCode.SESSION_LIMIT_EXCEEDED)
        half = self._next_half
        sid = ke.req_session_id | half << 16
        if sid in self._sessions:
            raise _bad(f"session {sid:#010x} exists")
        key = self._ephemeral.take(suite)
        shared = suite.dhe_shared(key, ke.exchange)
        body = struct.pack("<HBB", half, 0, 0) + self._rng(NONCE_SIZE) + suite.dhe_public(key) + struct.pack("<H", 0)
        head = _msg(Code.KEY_EXCHANGE_RSP, 0, 0, body)
        base = self._t.message_a + self._ct + req + head
        signature = suite.raw_signature(self._sign(_signed_message(suite.digest(base))))
        th1 = base + signature
        th1_hash = suite.digest(th1)
        secrets = _Secrets.from_dhe(suite, shared, th1_hash)
        verify = suite.hmac(secrets.finished_key(secrets.rsp_hs), th1_hash)
        response = head + signature + verify
        self._next_half = self._next_half % 0xFFFF + 1
        self._sessions[sid] = _Session(
            session_id=sid,
            secrets=secrets,
            transcript=th1 + verify,
            requests=_Direction(secrets.suite, secrets.req_hs),
            responses=_Direction(secrets.suite, secrets.rsp_hs),
        )
        return response

    # -- inside a session
    def open(self, record: bytes) -> tuple[int, bytes]:
        """(session ID, SPDM request) of a secured message; SessionError (InvalidRequest for an unknown
        session, DecryptError for a failed MAC) otherwise -- the caller then :meth:`drop`\\ s it."""
        sid = session_id_of(record)
        s = self._sessions.get(sid)
        if s is None:
            raise _bad(f"no session {sid:#010x}", ErrorCode.INVALID_REQUEST)
        return sid, _open(s.requests, record)

    def handle_in_session(self, session_id: int, request: bytes) -> bytes:
        """FINISH in the handshake phase; END_SESSION and KEY_UPDATE once established."""
        s = self._sessions.get(session_id)
        if s is None:
            return self._error(ErrorCode.INVALID_REQUEST)
        code = request[1] if len(request) >= 2 else -1
        try:
            if s.phase is _Phase.HANDSHAKE:
                if code != Code.FINISH:
                    return self._error(ErrorCode.UNEXPECTED_REQUEST)
                return self._finish(s, request)
            if code == Code.END_SESSION:
                _head(request, Code.END_SESSION, 4, "END_SESSION")
                s.after_seal = lambda: self._end(session_id)
                return _msg(Code.END_SESSION_ACK)
            if code == Code.KEY_UPDATE:
                return self._key_update(s, request)
        except fr.FramingError as exc:
            return self._error(exc.code or ErrorCode.INVALID_REQUEST)
        if code == Code.FINISH:
            return self._error(ErrorCode.UNEXPECTED_REQUEST)
        return self._error(ErrorCode.UNSUPPORTED_REQUEST, max(code, 0))

    def _finish(self, s: _Session, req: bytes) -> bytes:
        suite = s.suite
        _head(req, Code.FINISH, 4 + suite.hash_size, "FINISH")
        if req[2] & 1:
            raise _bad("FINISH carries a signature; mutual authentication was not requested")
        want = suite.hmac(s.secrets.finished_key(s.secrets.req_hs), suite.digest(s.transcript + req[:4]))
        if not hmac.compare_digest(want, req[4:]):
            raise _bad("FINISH RequesterVerifyData does not verify", ErrorCode.DECRYPT_ERROR)
        response = _msg(Code.FINISH_RSP)
        s.transcript += req + response

        def established() -> None:
            s.to_data_phase()
            self._events.append(("established", s.session_id))

        s.after_seal = established
        return response

    def _key_update(self, s: _Session, req: bytes) -> bytes:
        _head(req, Code.KEY_UPDATE, 4, "KEY_UPDATE")
        op, tag = req[2], req[3]
        if op == KeyUpdateOp.UPDATE_KEY:
            s.requests = s.requests.updated()
        elif op == KeyUpdateOp.UPDATE_ALL_KEYS:
            # both directions move on, and the ACK already goes under the new response key (as libspdm,
            # DMTF's reference, commits the responder key before answering)
            s.requests, s.responses = s.requests.updated(), s.responses.updated()
        elif op != KeyUpdateOp.VERIFY_NEW_KEY:
            raise _bad(f"KEY_UPDATE operation {op} is reserved")
        return _msg(Code.KEY_UPDATE_ACK, op, tag)

    def seal(self, session_id: int, response: bytes) -> bytes:
        """``response`` as a secured message of the session, then the change it announced (data keys
        after FINISH_RSP, the session gone after END_SESSION_ACK)."""
        s = self._sessions.get(session_id)
        if s is None:
            raise _bad(f"no session {session_id:#010x} to answer in")
        record = _seal(s.responses, session_id, response)
        change, s.after_seal = s.after_seal, None
        if change is not None:
            change()
        return record


class SpdmRequester:
    """The requester's session state for one connection: the TSM side, several sessions on one mailbox.

    Each request is built by a method and its answer given to the matching ``on_`` method, which
    checks it (SessionError or ChainError) before changing anything. Sessions use the suite the ALGORITHMS
    answer given to :meth:`vca` selected (:attr:`suite`) out of everything :func:`offer_algorithms` offers.
    """

    def __init__(self, *, trusted_root: bytes | None = None, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.trusted_root = trusted_root
        self._rng = rng
        self._t = _Transcript()
        self._chain = b""
        self._leaf: ec.EllipticCurvePublicKey | None = None
        self._ct: bytes | None = None
        self._sessions: dict[int, _Session] = {}
        # req half -> (key, request, suite)
        self._pending: dict[int, tuple[ec.EllipticCurvePrivateKey, bytes, CipherSuite]] = {}
        self._next_half = 1
        self.digest: bytes | None = None
        self._ephemeral = _Ephemeral()
        self.suite: CipherSuite | None = None
        """The suite ALGORITHMS selected; None until then, or when it selected none."""
        self._no_suite = "VCA has not negotiated algorithms yet"

    def prepare_key_exchange(self) -> None:
        """Make the next KEY_EXCHANGE's ephemeral key now: for a caller to do while it waits for an answer."""
        if self.suite is not None:
            self._ephemeral.prepare(self.suite)

    @property
    def sessions(self) -> dict[int, str]:
        return {sid: s.phase.value for sid, s in self._sessions.items()}

    @property
    def has_chain(self) -> bool:
        return self._leaf is not None

    def vca(self, request: bytes, response: bytes) -> None:
        """Record one VCA exchange. For NEGOTIATE_ALGORITHMS, take the suite ALGORITHMS selected -- or raise
        SessionError naming the field, changing nothing, when a selection is not one of the offered
        algorithms (:func:`negotiated_suite`)."""
        if request[1:2] == bytes([fr.SpdmCode.NEGOTIATE_ALGORITHMS]):
            suite = negotiated_suite(fr.NegotiateAlgorithms.decode(request), fr.Algorithms.decode(response))
            if suite != self.suite:  # a chain read earlier was hashed and checked under the old suite
                self._chain, self._leaf, self._ct, self.digest = b"", None, None, None
            self.suite = suite
            self._no_suite = "" if suite is not None else "ALGORITHMS selected no complete session cipher suite"
        elif request[1:2] == bytes([fr.SpdmCode.GET_VERSION]):
            self._sessions.clear()
            self._pending.clear()
            self.suite, self._no_suite = None, "VCA has not negotiated algorithms yet"
        self._t.vca(request, response)

    def _require_suite(self) -> CipherSuite:
        if self.suite is None:
            raise _bad(f"no secure session without a cipher suite: {self._no_suite}", ErrorCode.UNEXPECTED_REQUEST)
        return self.suite

    @staticmethod
    def _check(rsp: bytes, code: int, what: str) -> None:
        if len(rsp) >= 4 and rsp[1] == fr.SpdmCode.ERROR:
            err = fr.SpdmError.decode(rsp)
            raise SessionError(f"{what} answered with SPDM ERROR {err.code:#04x} ({err.name})", code=err.code)
        _head(rsp, code, 4, Code(code).name, exact=False)

    # -- certificates
    @staticmethod
    def get_digests() -> bytes:
        return _msg(Code.GET_DIGESTS)

    def on_digests(self, rsp: bytes) -> bytes:
        self._check(rsp, Code.DIGESTS, "GET_DIGESTS")
        h = self._require_suite().hash_size
        if not rsp[3] & 1:
            raise _bad("DIGESTS lists no certificate in slot 0")
        _head(rsp, Code.DIGESTS, 4 + h * bin(rsp[3]).count("1"), "DIGESTS")
        self.digest = bytes(rsp[4 : 4 + h])
        return self.digest

    def get_certificate(self) -> bytes:
        """The next portion's request (from where the chain read so far ends)."""
        return _msg(Code.GET_CERTIFICATE, 0, 0, struct.pack("<HH", len(self._chain), CERT_PORTION))

    def on_certificate(self, rsp: bytes) -> bool:
        """Take one portion; True when the whole chain is in (and verified against the trusted root and
        the digest, if DIGESTS came first)."""
        self._check(rsp, Code.CERTIFICATE, "GET_CERTIFICATE")
        suite = self._require_suite()
        _head(rsp, Code.CERTIFICATE, 8, "CERTIFICATE", exact=False)
        portion_len, remainder = struct.unpack_from("<HH", rsp, 4)
        if len(rsp) != 8 + portion_len or portion_len == 0 or portion_len > CERT_PORTION:
            raise _bad(f"CERTIFICATE PortionLength {portion_len} does not match its {len(rsp) - 8} bytes")
        chain = self._chain + rsp[8:]
        if remainder:
            if len(chain) + remainder > 0xFFFF:
                raise _bad("CERTIFICATE RemainderLength runs past a 64 KiB chain")
            self._chain = chain
            return False
        ct = suite.digest(chain)
        if self.digest is not None and ct != self.digest:
            raise ChainError("the certificate chain's hash is not the digest DIGESTS gave")
        leaf = verify_chain(chain, self.trusted_root, suite)
        self._chain, self._leaf, self._ct = chain, leaf, ct
        return True

    @property
    def chain(self) -> bytes:
        """The verified certificate chain (empty until one is)."""
        return self._chain if self._leaf is not None else b""

    @property
    def leaf_key(self) -> ec.EllipticCurvePublicKey | None:
        return self._leaf

    def adopt_chain(self, chain: bytes, leaf: ec.EllipticCurvePublicKey) -> None:
        """Take a chain this TSM verified earlier against the same trusted root (its cache), when the DIGESTS
        just read names it: no GET_CERTIFICATE and no second verification needed (DSP0274 §10.6). Its leaf
        must still be on the curve this connection's ALGORITHMS selected."""
        suite = self._require_suite()
        ct = suite.digest(chain)
        if self.digest is None or ct != self.digest:
            raise ChainError("a cached chain is adopted only when DIGESTS names it")
        if not suite.holds(leaf):
            raise ChainError(f"the cached chain's device key is not the {suite.curve_name} key {suite.asym.name} needs")
        self._chain, self._leaf, self._ct = chain, leaf, ct

    # -- key exchange
    def key_exchange(self) -> bytes:
        if self._leaf is None or self.suite is None:
            raise InvalidArgument("read and verify the certificate chain before KEY_EXCHANGE")
        suite = self.suite
        half = self._next_half
        self._next_half = self._next_half % 0xFFFF + 1
        key = self._ephemeral.take(suite)
        req = _msg(
            Code.KEY_EXCHANGE,
            0,
            0,
            struct.pack("<HBB", half, 0, 0) + self._rng(NONCE_SIZE) + suite.dhe_public(key) + struct.pack("<H", 0),
        )
        self._pending[half] = (key, req, suite)
        return req

    def on_key_exchange_rsp(self, rsp: bytes) -> int:
        """The new session's ID once the signature and ResponderVerifyData check out."""
        self._check(rsp, Code.KEY_EXCHANGE_RSP, "KEY_EXCHANGE")
        if len(self._pending) != 1 or self._leaf is None or self._ct is None:
            raise _bad("KEY_EXCHANGE_RSP without one KEY_EXCHANGE outstanding", ErrorCode.UNEXPECTED_REQUEST)
        ((half, (key, req, suite)),) = self._pending.items()
        dhe, sig, h = suite.dhe_size, suite.sig_size, suite.hash_size
        _head(rsp, Code.KEY_EXCHANGE_RSP, _KER_FIXED + dhe + 2 + sig + h, "KEY_EXCHANGE_RSP", exact=False)
        (rsp_half,) = struct.unpack_from("<H", rsp, 4)
        if rsp[6] or rsp[7]:
            raise _bad("the responder asks for mutual authentication, which this requester does not offer")
        _opaque_data, end = _opaque(rsp, _KER_FIXED + dhe, "KEY_EXCHANGE_RSP")
        if len(rsp) != end + sig + h:
            raise _bad(f"KEY_EXCHANGE_RSP is {len(rsp)} bytes, its fields need {end + sig + h}")
        head, signature, verify = rsp[:end], rsp[end : end + sig], rsp[end + sig :]
        base = self._t.message_a + self._ct + req + head
        try:
            suite.verify(self._leaf, signature, _signed_message(suite.digest(base)))
        except InvalidSignature:
            raise _bad("KEY_EXCHANGE_RSP signature does not verify under the device key", 0x05) from None
        shared = suite.dhe_shared(key, bytes(rsp[_KER_FIXED : _KER_FIXED + dhe]))
        th1 = base + signature
        th1_hash = suite.digest(th1)
        secrets = _Secrets.from_dhe(suite, shared, th1_hash)
        if not hmac.compare_digest(suite.hmac(secrets.finished_key(secrets.rsp_hs), th1_hash), verify):
            raise _bad("KEY_EXCHANGE_RSP ResponderVerifyData does not verify", ErrorCode.DECRYPT_ERROR)
        sid = half | rsp_half << 16
        if sid in self._sessions:
            raise _bad(f"the responder reused session ID {sid:#010x}")
        del self._pending[half]
        self._sessions[sid] = _Session(
            session_id=sid,
            secrets=secrets,
            transcript=th1 + verify,
            requests=_Direction(secrets.suite, secrets.req_hs),
            responses=_Direction(secrets.suite, secrets.rsp_hs),
        )
        return sid

    def abandon_key_exchange(self) -> None:
        """Forget an outstanding KEY_EXCHANGE (its answer was an ERROR or never came)."""
        self._pending.clear()

    def finish(self, session_id: int) -> bytes:
        s = self._session(session_id, _Phase.HANDSHAKE)
        head = _msg(Code.FINISH)
        return head + s.suite.hmac(s.secrets.finished_key(s.secrets.req_hs), s.suite.digest(s.transcript + head))

    def on_finish_rsp(self, session_id: int, finish: bytes, rsp: bytes) -> None:
        s = self._session(session_id, _Phase.HANDSHAKE)
        self._check(rsp, Code.FINISH_RSP, "FINISH")
        _head(rsp, Code.FINISH_RSP, 4, "FINISH_RSP")
        s.transcript += finish + rsp
        s.to_data_phase()

    # -- inside a session
    def _session(self, session_id: int, phase: _Phase | None = None) -> _Session:
        s = self._sessions.get(session_id)
        if s is None:
            raise InvalidArgument(f"no SPDM session {session_id:#010x}")
        if phase is not None and s.phase is not phase:
            raise InvalidArgument(f"SPDM session {session_id:#010x} is in its {s.phase.value} phase")
        return s

    def seal(self, session_id: int, message: bytes) -> bytes:
        s = self._session(session_id)
        record = _seal(s.requests, session_id, message)
        change, s.after_seal = s.after_seal, None
        if change is not None:
            change()
        return record

    def open(self, session_id: int, record: bytes) -> bytes:
        """The response inside a secured message of ``session_id``."""
        if session_id_of(record) != session_id:
            raise _bad(f"answer for session {session_id_of(record):#010x}, asked in {session_id:#010x}")
        s = self._session(session_id)
        try:
            return _open(s.responses, record)
        except SessionError:
            if s.fallback is None:
                raise
            answer = _open(s.fallback, record)  # the UPDATE_ALL_KEYS was refused under the old key
            s.responses, s.fallback = s.fallback, None
            return answer

    def end_session(self, session_id: int) -> bytes:
        self._session(session_id, _Phase.ESTABLISHED)
        return _msg(Code.END_SESSION)

    def on_end_session_ack(self, session_id: int, rsp: bytes) -> None:
        self._check(rsp, Code.END_SESSION_ACK, "END_SESSION")
        self._sessions.pop(session_id, None)

    def forget(self, session_id: int) -> None:
        """Drop a session's keys without a message (the connection went away)."""
        self._sessions.pop(session_id, None)

    def key_update(self, session_id: int, op: KeyUpdateOp, tag: int) -> bytes:
        """KEY_UPDATE; for UPDATE_ALL_KEYS the ACK comes under the new response key, so that key is taken
        as soon as the request is sealed."""
        s = self._session(session_id, _Phase.ESTABLISHED)
        if op == KeyUpdateOp.UPDATE_ALL_KEYS:

            def responses() -> None:
                s.fallback, s.responses = s.responses, s.responses.updated()

            s.after_seal = responses
        return _msg(Code.KEY_UPDATE, int(op), tag & 0xFF)

    def on_key_update_ack(self, session_id: int, request: bytes, rsp: bytes) -> None:
        """Move to the new keys the request announced once the ACK echoes it (DSP0274 §10.17)."""
        s = self._session(session_id, _Phase.ESTABLISHED)
        s.fallback = None
        self._check(rsp, Code.KEY_UPDATE_ACK, "KEY_UPDATE")
        _head(rsp, Code.KEY_UPDATE_ACK, 4, "KEY_UPDATE_ACK")
        if rsp[2:4] != request[2:4]:
            raise _bad(f"KEY_UPDATE_ACK echoes {rsp[2:4].hex()}, the request said {request[2:4].hex()}")
        if request[2] in (KeyUpdateOp.UPDATE_KEY, KeyUpdateOp.UPDATE_ALL_KEYS):
            s.requests = s.requests.updated()
