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
* the key schedule (§12.4-§12.7): HKDF-Extract/Expand over SHA-384 with ``BinConcat(Length,
  "spdm1.2 " + Label, Context)`` labels ("derived", "req hs data", "rsp hs data", "req app data",
  "rsp app data", "finished", "key", "iv", "traffic upd");
* secured messages (DSP0277 §6): session ID (4 bytes, the requester's half first), Length (2), then
  AES-256-GCM over ApplicationDataLength (2) || the SPDM message, with the session ID and Length as
  associated data and a per-direction 64-bit sequence number XORed into the IV (PCI DOE sends no
  sequence number on the wire).

One cipher suite only, which the reference device's identity fixes: SHA-384, ECDSA P-384 (raw r||s
signatures), ECDHE secp384r1, AES-256-GCM, the SPDM key schedule. :class:`SpdmRequester` and
:class:`SpdmResponder` are pure state objects (no sockets): bytes in, bytes out. Bad input raises
:class:`SessionError` (a FramingError, so a CodecError, carrying the SPDM error code to answer) and
changes no state.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import hmac
import itertools
import os
import struct
from collections.abc import Callable

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
    "DHE_SECP384R1",
    "IN_SESSION_CODES",
    "KEY_SCHEDULE_SPDM",
    "SESSION_FLAGS",
    "ChainError",
    "Code",
    "ErrorCode",
    "H",
    "KeyUpdateOp",
    "SessionError",
    "SpdmRequester",
    "SpdmResponder",
    "bin_concat",
    "cert_chain_buffer",
    "get_capabilities",
    "offer_algorithms",
    "select_session_algorithms",
    "session_id_of",
    "verify_chain",
]

H = 48  # SHA-384 digest size
DHE_SIZE = 96  # secp384r1 X || Y
SIG_SIZE = 96  # ECDSA P-384 r || s
KEY_SIZE = 32  # AES-256
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
# algorithm structure bits (DSP0274 1.2 NEGOTIATE_ALGORITHMS structure tables)
DHE_SECP384R1 = 0x0010
AEAD_AES_256_GCM = 0x0002
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


# ------------------------------------------------------------------------------------------ primitives
def _hash(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha384).digest()


def bin_concat(length: int, label: bytes, context: bytes = b"") -> bytes:
    """``BinConcat`` (DSP0274 §12.4): the output length (u16 LE), "spdm1.2 " and the label, the context."""
    return struct.pack("<H", length) + _VERSION_LABEL + label + context


def _expand(secret: bytes, label: bytes, length: int, context: bytes = b"") -> bytes:
    return HKDFExpand(hashes.SHA384(), length, bin_concat(length, label, context)).derive(secret)


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return _hmac(salt, ikm)  # HKDF-Extract is HMAC(salt, IKM)


@attrs.frozen
class _Secrets:
    """One session's secrets after the handshake (TH1) and, once FINISH is done, the data phase (TH2)."""

    handshake: bytes
    req_hs: bytes
    rsp_hs: bytes

    @classmethod
    def from_dhe(cls, dhe_secret: bytes, th1: bytes) -> _Secrets:
        hs = _extract(bytes(H), dhe_secret)  # Salt_0 is H zero bytes
        return cls(hs, _expand(hs, b"req hs data", H, th1), _expand(hs, b"rsp hs data", H, th1))

    def data(self, th2: bytes) -> tuple[bytes, bytes]:
        salt1 = _expand(self.handshake, b"derived", H)
        master = _extract(salt1, bytes(H))
        return _expand(master, b"req app data", H, th2), _expand(master, b"rsp app data", H, th2)


def _finished_key(secret: bytes) -> bytes:
    return _expand(secret, b"finished", H)


class _Direction:
    """One direction of a session: AEAD key, IV and the next sequence number (DSP0277 §6.2)."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.aead = AESGCM(_expand(secret, b"key", KEY_SIZE))
        self.iv = _expand(secret, b"iv", IV_SIZE)
        self.seq = 0

    def updated(self) -> _Direction:
        """The next generation (KEY_UPDATE): HKDF-Expand of the current secret with "traffic upd"."""
        return _Direction(_expand(self.secret, b"traffic upd", H))

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
def cert_chain_buffer(chain: tuple[bytes, ...]) -> bytes:
    """The SPDM certificate chain (DSP0274 §10.6.1): Length, reserved, H(root), the DER certificates."""
    if not chain:
        raise InvalidArgument("a certificate chain needs at least the root certificate")
    body = _hash(chain[0]) + b"".join(chain)
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


def verify_chain(buffer: bytes, trusted_root: bytes | None) -> ec.EllipticCurvePublicKey:
    """The leaf's P-384 public key once the chain checks out: its Length and root hash, the root is the
    trusted one (when given), every certificate is signed by the one before it, which is a CA."""
    if len(buffer) < 4 + H or struct.unpack_from("<H", buffer)[0] != len(buffer):
        raise ChainError(f"the certificate chain's Length does not match its {len(buffer)} bytes")
    ders = _split_der(buffer[4 + H :])
    if len(ders) < 2:
        raise ChainError(f"the chain needs a root and a device certificate, got {len(ders)}")
    if buffer[4 : 4 + H] != _hash(ders[0]):
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
    if not isinstance(leaf, ec.EllipticCurvePublicKey) or not isinstance(leaf.curve, ec.SECP384R1):
        raise ChainError("the device certificate does not hold a P-384 key")
    return leaf


def _signed_message(th: bytes) -> bytes:
    """What a 1.2 KEY_EXCHANGE_RSP signature covers (DSP0274 §15): the version prefix four times, zero
    padding and the context to 36 bytes, then the transcript hash."""
    return _SIGN_PREFIX + bytes(36 - len(_KE_CONTEXT)) + _KE_CONTEXT + th


def _raw_signature(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def _ecdh_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    n = key.public_key().public_numbers()
    return n.x.to_bytes(48, "big") + n.y.to_bytes(48, "big")


def _ecdh(key: ec.EllipticCurvePrivateKey, peer: bytes) -> bytes:
    try:
        pub = ec.EllipticCurvePublicNumbers(
            int.from_bytes(peer[:48], "big"), int.from_bytes(peer[48:], "big"), ec.SECP384R1()
        ).public_key()
        return key.exchange(ec.ECDH(), pub)
    except ValueError:
        raise _bad("the ExchangeData is not a point on secp384r1") from None


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


def _algorithms_ok(algs: fr.Algorithms) -> bool:
    chosen = {s.alg_type: s.supported for s in algs.alg_structs}
    return (
        algs.base_hash_sel == fr.HASH_SHA_384
        and algs.base_asym_sel == fr.ASYM_ECDSA_P384
        and chosen.get(fr.AlgType.DHE) == DHE_SECP384R1
        and chosen.get(fr.AlgType.AEAD) == AEAD_AES_256_GCM
        and chosen.get(fr.AlgType.KEY_SCHEDULE) == KEY_SCHEDULE_SPDM
    )


REQUESTER_FLAGS = CAP_ENCRYPT | CAP_MAC | fr.CAP_KEY_EX | CAP_KEY_UPD


def get_capabilities() -> bytes:
    """The requester's GET_CAPABILITIES: encryption, MAC, KEY_EX and KEY_UPD (no certificate of its own)."""
    size = fr.MAX_PAYLOAD - fr.DOE_HEADER.size
    return fr.GetCapabilities(flags=REQUESTER_FLAGS, data_transfer_size=size, max_spdm_msg_size=size).encode()


def offer_algorithms() -> fr.NegotiateAlgorithms:
    """The requester's NEGOTIATE_ALGORITHMS: the one suite sessions use, plus what VCA offered before. No
    ReqBaseAsymAlg table: this requester has no key of its own, and an empty AlgSupported is refused by
    libspdm (InvalidRequest)."""
    return fr.NegotiateAlgorithms(
        measurement_specification=fr.MEAS_SPEC_DMTF,
        other_params_support=OPAQUE_DATA_FMT_1,
        base_asym_algo=fr.ASYM_ECDSA_P256 | fr.ASYM_ECDSA_P384,
        base_hash_algo=fr.HASH_SHA_256 | fr.HASH_SHA_384,
        alg_structs=(
            fr.AlgStruct(alg_type=fr.AlgType.DHE, supported=DHE_SECP384R1),
            fr.AlgStruct(alg_type=fr.AlgType.AEAD, supported=AEAD_AES_256_GCM),
            fr.AlgStruct(alg_type=fr.AlgType.KEY_SCHEDULE, supported=KEY_SCHEDULE_SPDM),
        ),
    )


def select_session_algorithms(req: fr.NegotiateAlgorithms) -> fr.Algorithms | None:
    """The responder's selection when the requester offers the session suite; None when it does not."""
    offered = {s.alg_type: s.supported for s in req.alg_structs}
    if not (
        req.base_hash_algo & fr.HASH_SHA_384
        and req.base_asym_algo & fr.ASYM_ECDSA_P384
        and offered.get(fr.AlgType.DHE, 0) & DHE_SECP384R1
        and offered.get(fr.AlgType.AEAD, 0) & AEAD_AES_256_GCM
        and offered.get(fr.AlgType.KEY_SCHEDULE, 0) & KEY_SCHEDULE_SPDM
    ):
        return None
    pick: dict[int, int] = {
        fr.AlgType.DHE: DHE_SECP384R1,
        fr.AlgType.AEAD: AEAD_AES_256_GCM,
        fr.AlgType.KEY_SCHEDULE: 1,
    }
    return fr.Algorithms(
        other_params_selection=req.other_params_support & OPAQUE_DATA_FMT_1,
        base_hash_sel=fr.HASH_SHA_384,
        base_asym_sel=fr.ASYM_ECDSA_P384,
        alg_structs=tuple(
            fr.AlgStruct(alg_type=s.alg_type, supported=pick.get(s.alg_type, 0)) for s in req.alg_structs
        ),
    )


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
    def decode(cls, data: bytes) -> _KeyExchange:
        _head(data, Code.KEY_EXCHANGE, _KE_FIXED + DHE_SIZE + 2, "KEY_EXCHANGE", exact=False)
        (rsid,) = struct.unpack_from("<H", data, 4)
        _opaque_data, end = _opaque(data, _KE_FIXED + DHE_SIZE, "KEY_EXCHANGE")
        if end != len(data):
            raise _bad(f"KEY_EXCHANGE has {len(data) - end} stray bytes after its opaque data")
        return cls(
            req_session_id=rsid,
            random=bytes(data[8:_KE_FIXED]),
            exchange=bytes(data[_KE_FIXED : _KE_FIXED + DHE_SIZE]),
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

    def to_data_phase(self) -> None:
        req, rsp = self.secrets.data(_hash(self.transcript))
        self.requests, self.responses = _Direction(req), _Direction(rsp)
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
    so the key exchange itself does not. Each key is still used for one exchange only."""

    def __init__(self) -> None:
        self._spare: ec.EllipticCurvePrivateKey | None = None

    def prepare(self) -> None:
        if self._spare is None:
            self._spare = ec.generate_private_key(ec.SECP384R1())

    def take(self) -> ec.EllipticCurvePrivateKey:
        key, self._spare = self._spare, None
        return key if key is not None else ec.generate_private_key(ec.SECP384R1())


class SpdmResponder:
    """The responder's session state for one connection (one DOE mailbox): several sessions at once.

    The caller (the socket server) answers VCA and feeds each VCA request/response pair to :meth:`vca`;
    plain GET_DIGESTS, GET_CERTIFICATE and KEY_EXCHANGE go to :meth:`handle`; a secured message is
    opened with :meth:`open`, a control message inside it answered by :meth:`handle_in_session`, and
    every answer in a session sealed with :meth:`seal`. VENDOR_DEFINED messages are the caller's.
    :meth:`take_events` says which sessions became established or ended since it was last asked.
    """

    def __init__(
        self,
        chain: tuple[bytes, ...],
        sign: Callable[[bytes], bytes],
        *,
        rng: Callable[[int], bytes] = os.urandom,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self._buffer = cert_chain_buffer(chain)
        self._ct = _hash(self._buffer)
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
        self._ephemeral.prepare()

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
        ``algorithms`` (with the ALGORITHMS answer) says whether sessions may now be opened."""
        if request[1:2] == bytes([fr.SpdmCode.GET_VERSION]):
            self.reset()
        self._t.vca(request, response)
        if algorithms is not None:
            self._ready = _algorithms_ok(algorithms)

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
        ke = _KeyExchange.decode(req)
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
        key = self._ephemeral.take()
        shared = _ecdh(key, ke.exchange)
        body = struct.pack("<HBB", half, 0, 0) + self._rng(NONCE_SIZE) + _ecdh_public(key) + struct.pack("<H", 0)
        head = _msg(Code.KEY_EXCHANGE_RSP, 0, 0, body)
        base = self._t.message_a + self._ct + req + head
        signature = _raw_signature(self._sign(_signed_message(_hash(base))))
        th1 = base + signature
        secrets = _Secrets.from_dhe(shared, _hash(th1))
        verify = _hmac(_finished_key(secrets.rsp_hs), _hash(th1))
        response = head + signature + verify
        self._next_half = self._next_half % 0xFFFF + 1
        self._sessions[sid] = _Session(
            session_id=sid,
            secrets=secrets,
            transcript=th1 + verify,
            requests=_Direction(secrets.req_hs),
            responses=_Direction(secrets.rsp_hs),
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
        _head(req, Code.FINISH, 4 + H, "FINISH")
        if req[2] & 1:
            raise _bad("FINISH carries a signature; mutual authentication was not requested")
        want = _hmac(_finished_key(s.secrets.req_hs), _hash(s.transcript + req[:4]))
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
    checks it (SessionError or ChainError) before changing anything.
    """

    def __init__(self, *, trusted_root: bytes | None = None, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.trusted_root = trusted_root
        self._rng = rng
        self._t = _Transcript()
        self._chain = b""
        self._leaf: ec.EllipticCurvePublicKey | None = None
        self._ct: bytes | None = None
        self._sessions: dict[int, _Session] = {}
        self._pending: dict[int, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}  # req half -> (key, request)
        self._next_half = 1
        self.digest: bytes | None = None
        self._ephemeral = _Ephemeral()

    def prepare_key_exchange(self) -> None:
        """Make the next KEY_EXCHANGE's ephemeral key now: for a caller to do while it waits for an answer."""
        self._ephemeral.prepare()

    @property
    def sessions(self) -> dict[int, str]:
        return {sid: s.phase.value for sid, s in self._sessions.items()}

    @property
    def has_chain(self) -> bool:
        return self._leaf is not None

    def vca(self, request: bytes, response: bytes) -> None:
        if request[1:2] == bytes([fr.SpdmCode.GET_VERSION]):
            self._sessions.clear()
            self._pending.clear()
        self._t.vca(request, response)

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
        if not rsp[3] & 1:
            raise _bad("DIGESTS lists no certificate in slot 0")
        _head(rsp, Code.DIGESTS, 4 + H * bin(rsp[3]).count("1"), "DIGESTS")
        self.digest = bytes(rsp[4 : 4 + H])
        return self.digest

    def get_certificate(self) -> bytes:
        """The next portion's request (from where the chain read so far ends)."""
        return _msg(Code.GET_CERTIFICATE, 0, 0, struct.pack("<HH", len(self._chain), CERT_PORTION))

    def on_certificate(self, rsp: bytes) -> bool:
        """Take one portion; True when the whole chain is in (and verified against the trusted root and
        the digest, if DIGESTS came first)."""
        self._check(rsp, Code.CERTIFICATE, "GET_CERTIFICATE")
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
        if self.digest is not None and _hash(chain) != self.digest:
            raise ChainError("the certificate chain's hash is not the digest DIGESTS gave")
        leaf = verify_chain(chain, self.trusted_root)
        self._chain, self._leaf, self._ct = chain, leaf, _hash(chain)
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
        just read names it: no GET_CERTIFICATE and no second verification needed (DSP0274 §10.6)."""
        if self.digest is None or _hash(chain) != self.digest:
            raise ChainError("a cached chain is adopted only when DIGESTS names it")
        self._chain, self._leaf, self._ct = chain, leaf, _hash(chain)

    # -- key exchange
    def key_exchange(self) -> bytes:
        if self._leaf is None:
            raise InvalidArgument("read and verify the certificate chain before KEY_EXCHANGE")
        half = self._next_half
        self._next_half = self._next_half % 0xFFFF + 1
        key = self._ephemeral.take()
        req = _msg(
            Code.KEY_EXCHANGE,
            0,
            0,
            struct.pack("<HBB", half, 0, 0) + self._rng(NONCE_SIZE) + _ecdh_public(key) + struct.pack("<H", 0),
        )
        self._pending[half] = (key, req)
        return req

    def on_key_exchange_rsp(self, rsp: bytes) -> int:
        """The new session's ID once the signature and ResponderVerifyData check out."""
        self._check(rsp, Code.KEY_EXCHANGE_RSP, "KEY_EXCHANGE")
        _head(rsp, Code.KEY_EXCHANGE_RSP, _KER_FIXED + DHE_SIZE + 2 + SIG_SIZE + H, "KEY_EXCHANGE_RSP", exact=False)
        if len(self._pending) != 1 or self._leaf is None or self._ct is None:
            raise _bad("KEY_EXCHANGE_RSP without one KEY_EXCHANGE outstanding", ErrorCode.UNEXPECTED_REQUEST)
        ((half, (key, req)),) = self._pending.items()
        (rsp_half,) = struct.unpack_from("<H", rsp, 4)
        if rsp[6] or rsp[7]:
            raise _bad("the responder asks for mutual authentication, which this requester does not offer")
        _opaque_data, end = _opaque(rsp, _KER_FIXED + DHE_SIZE, "KEY_EXCHANGE_RSP")
        if len(rsp) != end + SIG_SIZE + H:
            raise _bad(f"KEY_EXCHANGE_RSP is {len(rsp)} bytes, its fields need {end + SIG_SIZE + H}")
        head, signature, verify = rsp[:end], rsp[end : end + SIG_SIZE], rsp[end + SIG_SIZE :]
        base = self._t.message_a + self._ct + req + head
        r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
        try:
            self._leaf.verify(encode_dss_signature(r, s), _signed_message(_hash(base)), ec.ECDSA(hashes.SHA384()))
        except InvalidSignature:
            raise _bad("KEY_EXCHANGE_RSP signature does not verify under the device key", 0x05) from None
        shared = _ecdh(key, bytes(rsp[_KER_FIXED : _KER_FIXED + DHE_SIZE]))
        th1 = base + signature
        secrets = _Secrets.from_dhe(shared, _hash(th1))
        if not hmac.compare_digest(_hmac(_finished_key(secrets.rsp_hs), _hash(th1)), verify):
            raise _bad("KEY_EXCHANGE_RSP ResponderVerifyData does not verify", ErrorCode.DECRYPT_ERROR)
        sid = half | rsp_half << 16
        if sid in self._sessions:
            raise _bad(f"the responder reused session ID {sid:#010x}")
        del self._pending[half]
        self._sessions[sid] = _Session(
            session_id=sid,
            secrets=secrets,
            transcript=th1 + verify,
            requests=_Direction(secrets.req_hs),
            responses=_Direction(secrets.rsp_hs),
        )
        return sid

    def abandon_key_exchange(self) -> None:
        """Forget an outstanding KEY_EXCHANGE (its answer was an ERROR or never came)."""
        self._pending.clear()

    def finish(self, session_id: int) -> bytes:
        s = self._session(session_id, _Phase.HANDSHAKE)
        head = _msg(Code.FINISH)
        return head + _hmac(_finished_key(s.secrets.req_hs), _hash(s.transcript + head))

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
