"""Serve a TDISP / IDE_KM responder over the spdm-emu socket protocol (``teeio-conformance serve-device``).

What a connection sees, as spdm-emu's ``spdm_responder_emu`` would show it:

* NORMAL frames carry one PCI DOE object each and get one back (SPDM, or DOE discovery).
* SHUTDOWN is echoed and the whole server stops; CONTINUE is echoed and that connection closes (its
  requester is done, the server waits for the next); TEST answers ``"Server Hello!"``; any other
  command -- or a NORMAL frame for another transport than PCI DOE -- is answered with spdm-emu's
  UNKNOWN command (0xFFFF) and an empty payload.
* A frame whose size is over :data:`~.framing.MAX_PAYLOAD` closes that connection (not the server):
  the stream cannot be resynchronised.
* Malformed DOE objects and SPDM messages are answered with SPDM ERROR (InvalidRequest, or
  UnsupportedRequest for what this responder does not implement); requests out of VCA order with
  UnexpectedRequest; a request in another SPDM version than the one negotiated with VersionMismatch.
* A message the responder drops (``handle_vendor_message`` returned None) is answered with an
  **empty NORMAL frame**: no DOE object at all. The client reports that as "no response". (spdm-emu's
  requester would instead wait and time out; the empty frame keeps the stream in step.)

Sessions (``secure``, the default): SPDM 1.2 secure sessions as :mod:`~teeio_conformance.contract.spdm`
speaks them -- GET_DIGESTS, GET_CERTIFICATE, KEY_EXCHANGE in the clear; FINISH, END_SESSION, KEY_UPDATE
and VENDOR_DEFINED inside secured messages (DOE type 2). One connection (one DOE mailbox) holds any
number of sessions. Each session, once FINISH completes, is opened on the responder (its own
``spdm_connect`` when it has one, see :class:`~reference_impl.transport.SessionOpener`, else the
server's counter) and that ID goes with every vendor message inside the session; END_SESSION, a
secured message that fails to decrypt, a GET_VERSION or the connection closing ends it
(``end_session``). A VENDOR_DEFINED message in the clear reaches the responder with no session
(``session_id=None``): TDISP and IDE_KM belong inside a session (PCIe 6.x §11.2.2, §6.33.3), and
whether the device refuses them is what the suite checks. Sessions use one cipher suite (``suite``,
``serve-device --hash/--asym/--dhe/--aead``; SHA-384 / ECDSA P-384 / secp384r1 / AES-256-GCM by default),
selected when the requester offers it; the responder's identity must be on its curve.

Plaintext (``secure=False``, ``serve-device --plaintext``), for requesters without sessions: each
connection that completes VCA is one session, numbered as above, used for every vendor message of that
connection and ended when it closes or a new GET_VERSION resets it. Connections are served
concurrently; the responder sees one call at a time.

Reset (:meth:`EmuServer.reset`, in-process only): the server drops every open connection and serves
a fresh responder from then on. Each connection stays bound to the responder it was accepted under,
so a late frame or session end from before the reset can never reach the fresh device. This is how
the suite reuses one server per worker and still starts every example on a power-on device.

Limits (constructor options, ``serve-device`` flags), so stalled or hostile requesters cannot hold the
server's threads or memory: a connection idle for ``idle_timeout`` seconds -- or one that does not finish
a frame within that time of starting it -- is closed; at most ``max_open`` connections are served at once
(more are closed as they arrive); the payloads being read across all connections are bounded by
``max_buffered`` bytes (a frame that would pass it closes its connection before its payload is read).

:class:`Channel` turns a plain DOE body into an SPDM request (:class:`PlaintextChannel`, which refuses
secured messages when sessions are off); secured messages go to the connection's
:class:`~teeio_conformance.contract.spdm.SpdmResponder`.
"""

from __future__ import annotations

import argparse
import enum
import functools
import ipaddress
import json
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from teeio_conformance.contract import framing as fr
from teeio_conformance.contract import spdm as sp
from teeio_conformance.contract.errors import InvalidArgument
from teeio_conformance.reference_impl.transport import (
    PROTOCOL_IDE_KM,
    PROTOCOL_TDISP,
    SessionOpener,
    SpdmIdentity,
    VendorResponder,
)

__all__ = [
    "TEST_REPLY",
    "Channel",
    "EmuServer",
    "PlaintextChannel",
    "ServerHandle",
    "VendorResponder",
    "add_arguments",
    "responder_capabilities",
    "run",
    "select_algorithms",
    "serve",
    "start_in_thread",
    "suite_from_args",
]

TEST_REPLY = b"Server Hello!\0"
"""What spdm-emu's responder answers to a TEST frame."""
_MAX_HELD = 64 * 1024
"""Answers held back for pipelined frames are sent at the latest once they reach this size."""
IDLE_TIMEOUT = 60.0
"""Default seconds a connection may wait between frames, or take over one frame, before it is closed."""
MAX_OPEN = 64
"""Default connections served at once (a requester holds a few: one per SPDM session)."""
MAX_BUFFERED = 8 << 20
"""Default bytes of frame payloads being read across all connections (8 maximal DOE objects)."""


class _Budget:
    """Bytes of payload the server is reading, across connections; a reservation beyond the cap fails."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.cap:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class _DeadlineReader(fr.StreamReader):
    """A StreamReader whose reads end by a deadline: the socket's timeout is set to what is left before
    every receive, so a requester dripping one byte at a time cannot hold the connection either."""

    def __init__(self, sock: socket.socket, idle_timeout: float | None) -> None:
        super().__init__(sock)
        self._idle = idle_timeout

    def read_exact(self, n: int) -> bytes | None:
        if self._idle is None:
            return super().read_exact(n)
        deadline = time.monotonic() + self._idle
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole read of {n} bytes within {self._idle:g} s")
            self._sock.settimeout(left)
            if self._QUICKACK is not None:
                self._sock.setsockopt(socket.IPPROTO_TCP, self._QUICKACK, 1)
            chunk = self._sock.recv(min(max(65536, n - len(self._buf)), 1 << 20))
            if not chunk:
                return None
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


RESPONDER_FLAGS = 0
"""CAPABILITIES flags without sessions: none. The server then answers VCA and VENDOR_DEFINED only, so
it claims no CERT, CHAL, MEAS or KEY_EX capability (a requester would otherwise ask for certificates)."""
SECURE_FLAGS = sp.SESSION_FLAGS
"""CAPABILITIES flags with sessions: CERT, ENCRYPT, MAC, KEY_EX and KEY_UPD (DSP0274 1.2 Table 'Flag fields')."""


def responder_capabilities(flags: int = RESPONDER_FLAGS) -> fr.Capabilities:
    """The fixed CAPABILITIES answer: it can receive one full DOE object's worth of SPDM."""
    size = fr.MAX_PAYLOAD - fr.DOE_HEADER.size
    return fr.Capabilities(ct_exponent=0, flags=flags, data_transfer_size=size, max_spdm_msg_size=size)


def select_algorithms(
    req: fr.NegotiateAlgorithms, flags: int = RESPONDER_FLAGS, suite: sp.CipherSuite = sp.DEFAULT_SUITE
) -> fr.Algorithms:
    """The selection when no session suite is agreed (DSP0274 1.2 ALGORITHMS): the suite's hash and
    signature (SHA-384 and ECDSA P-384 by default) when the capabilities need a hash and a signature (CHAL,
    MEAS with signature, KEY_EX) and the requester offers them; otherwise nothing, as the spec asks of a
    responder without such capabilities. One response structure table per requested one, each selecting
    nothing (no session can be opened)."""
    signs = bool(flags & (fr.CAP_CHAL | fr.CAP_MEAS_SIG | fr.CAP_KEY_EX))
    return fr.Algorithms(
        base_hash_sel=suite.hash if signs and req.base_hash_algo & suite.hash else 0,
        base_asym_sel=suite.asym if signs and req.base_asym_algo & suite.asym else 0,
        alg_structs=tuple(fr.AlgStruct(alg_type=s.alg_type) for s in req.alg_structs),
    )


_SESSION_CODES = (sp.Code.GET_DIGESTS, sp.Code.GET_CERTIFICATE, sp.Code.KEY_EXCHANGE, *sp.IN_SESSION_CODES)


def _identity(
    responder: VendorResponder, suite: sp.CipherSuite = sp.DEFAULT_SUITE
) -> tuple[tuple[bytes, ...], Callable[[bytes], bytes]]:
    """The certificate chain and signer (over the suite's hash) a responder offers
    (:class:`~reference_impl.transport.SpdmIdentity`), or a fixed reference identity (seed 0, on the
    suite's curve) for one that has none, such as a test double."""
    if isinstance(responder, SpdmIdentity):
        chain, sign = tuple(responder.certificate_chain()), responder.spdm_sign
    else:
        from teeio_conformance.reference_impl.device.identity import DeviceIdentity

        fallback = DeviceIdentity(seed=0, curve=suite.curve_name)
        chain, sign = fallback.certificate_chain(), fallback.sign
    if suite.hash is sp.BaseHash.SHA_384:
        return chain, sign  # as an identity that signs SHA-384 only expects to be called
    return chain, functools.partial(sign, hash_name=suite.hash_algorithm.name)


def suite_from_args(args: argparse.Namespace) -> sp.CipherSuite:
    """The cipher suite ``--hash``/``--asym``/``--dhe``/``--aead`` name, the reference's for any left out."""
    d = sp.DEFAULT_SUITE
    return sp.CipherSuite(
        sp.BaseHash[getattr(args, "hash", None) or d.hash.name],
        sp.BaseAsym[getattr(args, "asym", None) or d.asym.name],
        sp.Dhe[getattr(args, "dhe", None) or d.dhe.name],
        sp.Aead[getattr(args, "aead", None) or d.aead.name],
    )


class Channel(Protocol):
    """Seam for SPDM secure sessions: how a DOE body becomes an SPDM request and an answer a DOE body.

    ``open`` raises FramingError (with the SPDM error code to answer) for what it cannot accept.
    """

    def open(self, doe_type: int, body: bytes) -> bytes: ...

    def seal(self, message: bytes) -> tuple[int, bytes]: ...


class PlaintextChannel:
    """Plain SPDM in DOE type 1; secured messages (type 2) are refused (the server opens them itself when it
    serves sessions). ``sizes`` are the session suite's, which the length of KEY_EXCHANGE depends on."""

    def __init__(self, sizes: fr.SessionSizes = fr.DEFAULT_SESSION_SIZES) -> None:
        self.sizes = sizes

    def open(self, doe_type: int, body: bytes) -> bytes:
        if doe_type == fr.DoeType.SPDM:
            return fr.strip_doe_padding(body, self.sizes)
        if doe_type == fr.DoeType.SECURED_SPDM:
            raise fr.FramingError(
                "secured SPDM messages need a secure session; none is supported yet",
                code=fr.SpdmErrorCode.UNSUPPORTED_REQUEST,
            )
        raise fr.FramingError(f"DOE data object type {doe_type} is not SPDM", code=fr.SpdmErrorCode.INVALID_REQUEST)

    def seal(self, message: bytes) -> tuple[int, bytes]:
        return fr.DoeType.SPDM, message


class _Stage(enum.IntEnum):
    NONE = 0
    VERSION = 1
    CAPABILITIES = 2
    READY = 3


@attrs.define
class _ConnState:
    """One connection's SPDM state: the responder it is bound to, how far VCA got, the session it opened
    (plaintext), or its secure sessions and the responder's session for each (``secure``)."""

    channel: Channel
    responder: _Locked
    stage: _Stage = _Stage.NONE
    session_id: int | None = None
    spdm: sp.SpdmResponder | None = None
    device_sessions: dict[int, int] = attrs.Factory(dict)  # SPDM session ID -> the responder's session

    @property
    def version(self) -> int:
        return fr.SPDM_VERSION if self.stage >= _Stage.VERSION else fr.SPDM_VERSION_10


class _Locked:
    """One responder (one reset generation): serialises every call into it across connection threads,
    and numbers its sessions when it does not number them itself (so a fresh responder starts at 1)."""

    def __init__(self, inner: VendorResponder) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._next_session = 1
        self.function_ids = tuple(inner.function_ids)
        self.inner = inner

    def open_session(self) -> int:
        with self._lock:
            if isinstance(self._inner, SessionOpener):
                return int(self._inner.spdm_connect())
            sid = self._next_session
            self._next_session += 1
            return sid

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        with self._lock:
            return self._inner.handle_vendor_message(protocol_id, message, session_id=session_id)

    def end_session(self, session_id: int) -> None:
        with self._lock:
            self._inner.end_session(session_id)


class EmuServer:
    """A responder behind a listening socket. ``serve_forever`` runs until :meth:`stop` or SHUTDOWN."""

    def __init__(
        self,
        listener: socket.socket,
        responder: VendorResponder,
        *,
        max_connections: int | None = None,
        channel_factory: Callable[[], Channel] | None = None,
        idle_timeout: float | None = IDLE_TIMEOUT,
        max_open: int = MAX_OPEN,
        max_buffered: int = MAX_BUFFERED,
        secure: bool = True,
        suite: sp.CipherSuite = sp.DEFAULT_SUITE,
    ) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise InvalidArgument(f"idle_timeout must be positive seconds (or None), got {idle_timeout!r}")
        if max_open < 1 or max_buffered < fr.FRAME_HEADER.size:
            raise InvalidArgument(f"max_open must be >= 1 and max_buffered >= 12, got {max_open}, {max_buffered}")
        self.idle_timeout = idle_timeout
        self.max_open = max_open
        self.buffered = _Budget(max_buffered)
        self.refused_connections = 0  # closed on arrival: max_open were open
        self.dropped_connections = 0  # closed for idling or for a frame over the buffer budget
        self._listener = listener
        self.secure = secure
        self.suite = suite
        """The one cipher suite sessions use (what ALGORITHMS selects when the requester offers it)."""
        if secure:
            sp.SpdmResponder(*_identity(responder, suite), suite=suite)  # InvalidArgument: wrong curve, now
        self._responder = _Locked(responder)
        self._max_connections = max_connections
        self._channel_factory = channel_factory or functools.partial(PlaintextChannel, suite.session_sizes)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: dict[socket.socket, threading.Event] = {}  # connection -> set once it is closed
        self._workers: list[threading.Thread] = []
        self._jobs: queue.SimpleQueue[tuple[socket.socket, _Locked] | None] = queue.SimpleQueue()
        self._idle = 0  # workers waiting for a connection
        self.host, self.port = listener.getsockname()[:2]
        self.function_ids = self._responder.function_ids
        self.responder_errors = 0  # unexpected exceptions (answered with ERROR Unspecified)

    def ready_info(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "function_ids": list(self.function_ids),
            "transport": "PCI_DOE",
            "spdm_version": "1.2",
            "sessions": self.secure,
            "cipher_suite": str(self.suite),
            "pipelining": True,  # a connection's frames are answered in order, so requests may be pipelined
        }

    # ---------------------------------------------------------------------------------- lifecycle
    def serve_forever(self) -> None:
        accepted = 0
        self._listener.settimeout(0.5)  # a fallback: stop() also wakes accept() by shutting the listener down
        try:
            while not self._stopping.is_set() and (self._max_connections is None or accepted < self._max_connections):
                try:
                    conn, _peer = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stopping.is_set():
                        break
                    time.sleep(0.05)  # transient (ECONNABORTED, EMFILE): keep serving
                    continue
                accepted += 1
                with self._lock:
                    if self._stopping.is_set():
                        conn.close()
                        break
                    if len(self._open) >= self.max_open:
                        self.refused_connections += 1
                        conn.close()
                        continue
                    self._open[conn] = threading.Event()
                    self._jobs.put((conn, self._responder))
                    if self._idle:
                        self._idle -= 1
                        continue
                    worker = threading.Thread(target=self._work, daemon=True, name=f"emu-conn-{len(self._workers)}")
                    self._workers.append(worker)
                worker.start()
        finally:
            self._listener.close()
            with self._lock:
                workers = list(self._workers)
            for _ in workers:
                self._jobs.put(None)
            for t in workers:
                t.join()

    def _work(self) -> None:
        """A pooled connection worker: serves one connection after another until the server stops.

        A thread per connection made the first answer on every connection slow (thread start, then a
        new thread's wait for a CPU): connect + VCA took ~1.2 ms inside the device machine on a busy
        2-core host, ~0.3 ms with a pooled worker. The device machine opens 2-3 connections an example."""
        while (job := self._jobs.get()) is not None:
            try:
                self._serve_connection(*job)  # counts this worker idle again as the connection closes
            except Exception:  # a server bug costs that connection, never the worker (already counted idle)
                self.responder_errors += 1

    def stop(self) -> None:
        """Stop accepting and close every open connection (each ends its session). Idempotent."""
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
        except OSError:
            pass
        with self._lock:
            conns = list(self._open)
        self._drop(conns)

    def reset(self, responder: VendorResponder, *, timeout: float = 5.0) -> None:
        """Serve ``responder`` from now on and drop every connection open before the call.

        Dropped connections end their sessions on the responder they were accepted under, never on the
        new one, so no state crosses a reset even when a requester left a connection half-used. Returns
        once those connections are closed (at most ``timeout`` seconds for a stuck responder call)."""
        fresh = _Locked(responder)
        with self._lock:
            self._responder = fresh
            self.function_ids = fresh.function_ids
            old = dict(self._open)
        self._drop(list(old))
        deadline = time.monotonic() + timeout
        for closed in old.values():
            closed.wait(max(0.0, deadline - time.monotonic()))

    @staticmethod
    def _drop(conns: list[socket.socket]) -> None:
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---------------------------------------------------------------------------------- one connection
    def _serve_connection(self, conn: socket.socket, responder: _Locked) -> None:
        state = _ConnState(channel=self._channel_factory(), responder=responder)
        if self.secure:
            chain, sign = _identity(responder.inner, self.suite)
            state.spdm = sp.SpdmResponder(chain, sign, suite=self.suite)
        reader = _DeadlineReader(conn, self.idle_timeout)
        out = bytearray()

        def reply(command: int, payload: bytes, *, last: bool = False) -> None:
            """Answers to pipelined frames go out together, once no whole frame is left to read: one
            wake-up of the requester instead of one per answer."""
            out.extend(fr.encode_frame(command, fr.Transport.PCI_DOE, payload))
            if last or len(out) > _MAX_HELD or not reader.frame_waiting():
                conn.settimeout(self.idle_timeout)  # a requester that never reads cannot hold the worker
                conn.sendall(out)
                out.clear()

        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while not self._stopping.is_set():
                head = reader.read_exact(fr.FRAME_HEADER.size)
                if head is None:
                    return
                try:
                    command, transport, size = fr.decode_frame_header(head)
                except fr.FramingError:
                    return  # absurd size: the stream cannot be trusted; drop this connection only
                if not self.buffered.take(size):
                    self.dropped_connections += 1
                    return  # the server holds its budget of partial frames already: this one waits elsewhere
                try:
                    payload = reader.read_exact(size) if size else b""
                finally:
                    self.buffered.give(size)
                if payload is None:
                    return
                if command == fr.Command.SHUTDOWN:
                    reply(fr.Command.SHUTDOWN, b"", last=True)
                    self.stop()
                    return
                if command == fr.Command.CONTINUE:
                    reply(fr.Command.CONTINUE, b"", last=True)
                    return
                if command == fr.Command.TEST:
                    reply(fr.Command.TEST, TEST_REPLY)
                    continue
                if command != fr.Command.NORMAL or transport != fr.Transport.PCI_DOE:
                    reply(fr.Command.UNKNOWN, b"")
                    continue
                try:
                    answer = self._normal(state, payload)
                except Exception:  # a bug here must cost one answer, not the connection
                    self.responder_errors += 1
                    answer = fr.encode_doe(self._error(state, fr.SpdmErrorCode.UNSPECIFIED))
                reply(fr.Command.NORMAL, answer)
                if state.spdm is not None and not out:  # answered and idle: the next KEY_EXCHANGE's key, now
                    state.spdm.prepare_key_exchange()
        except TimeoutError:
            self.dropped_connections += 1
            return
        except OSError:
            return
        finally:
            self._end(state)
            with self._lock:
                closed = self._open.pop(conn, None)
                self._idle += 1  # free for the next connection before the requester sees this one close
            conn.close()
            if closed is not None:
                closed.set()

    def _normal(self, state: _ConnState, payload: bytes) -> bytes:
        """The DOE object answering one NORMAL frame, or b"" when the responder dropped the message."""
        answer: bytes | None
        try:
            doe_type, body = fr.decode_doe(payload)
            if doe_type == fr.DoeType.DISCOVERY:
                return fr.encode_doe(self._discovery(body), fr.DoeType.DISCOVERY)
            if doe_type == fr.DoeType.SECURED_SPDM and state.spdm is not None:
                return self._secured(state, state.spdm, body)
            request = state.channel.open(doe_type, body)
        except fr.FramingError as exc:
            answer = self._error(state, exc.code or fr.SpdmErrorCode.INVALID_REQUEST)
        else:
            answer = self._answer(state, request)
        if answer is None:
            return b""
        doe_type, sealed = state.channel.seal(answer)
        return fr.encode_doe(sealed, doe_type)

    def _secured(self, state: _ConnState, spdm: sp.SpdmResponder, record: bytes) -> bytes:
        """One secured message (DSP0277) in, its secured answer out. A record that does not open is
        answered in the clear with ERROR (DecryptError ends that session: DSP0277 §6, the keys can no
        longer be trusted to be in step); a dropped vendor message with an empty frame."""
        try:
            sid, request = spdm.open(record)
        except fr.FramingError as exc:
            if exc.code == sp.ErrorCode.DECRYPT_ERROR:
                spdm.drop(sp.session_id_of(record))
                self._sync(state, spdm)
            return fr.encode_doe(self._error(state, exc.code or fr.SpdmErrorCode.INVALID_REQUEST))
        answer: bytes | None
        if request[1] == fr.SpdmCode.VENDOR_DEFINED_REQUEST:
            device_sid = state.device_sessions.get(sid)
            if not spdm.established(sid) or device_sid is None:
                answer = self._error(state, fr.SpdmErrorCode.UNEXPECTED_REQUEST)
            else:
                try:
                    answer = self._vendor(state, request, device_sid)
                except fr.FramingError as exc:
                    answer = self._error(state, exc.code or fr.SpdmErrorCode.INVALID_REQUEST)
            if answer is None:
                return b""
        elif request[1] in (fr.SpdmCode.GET_VERSION, fr.SpdmCode.GET_CAPABILITIES, fr.SpdmCode.NEGOTIATE_ALGORITHMS):
            answer = self._error(state, fr.SpdmErrorCode.UNEXPECTED_REQUEST)  # VCA is never inside a session
        else:
            answer = spdm.handle_in_session(sid, request)
        sealed = spdm.seal(sid, answer)
        self._sync(state, spdm)
        return fr.encode_doe(sealed, fr.DoeType.SECURED_SPDM)

    def _sync(self, state: _ConnState, spdm: sp.SpdmResponder) -> None:
        """Open or end the responder's session for every SPDM session established or ended since last time."""
        for event, sid in spdm.take_events():
            if event == "established":
                try:
                    state.device_sessions[sid] = state.responder.open_session()
                except Exception:  # a responder bug must not take the server down: that session is unusable
                    self.responder_errors += 1
                    spdm.drop(sid)
                    spdm.take_events()
            else:
                device_sid = state.device_sessions.pop(sid, None)
                if device_sid is not None:
                    try:
                        state.responder.end_session(device_sid)
                    except Exception:
                        self.responder_errors += 1

    @staticmethod
    def _discovery(body: bytes) -> bytes:
        """DOE discovery (PCIe 6.x §6.30.1.1): index 0 is discovery itself, 1 is SPDM (the last)."""
        req = fr.DoeDiscoveryRequest.decode(body)
        if req.index == 0:
            return fr.DoeDiscoveryResponse(data_object_type=fr.DoeType.DISCOVERY, next_index=1).encode()
        return fr.DoeDiscoveryResponse(data_object_type=fr.DoeType.SPDM, next_index=0).encode()

    @staticmethod
    def _error(state: _ConnState, code: int, data: int = 0) -> bytes:
        return fr.spdm_error(code, state.version, data)

    def _answer(self, state: _ConnState, req: bytes) -> bytes | None:
        """One SPDM request in, its response out (DSP0274 1.2 §10: VCA order, then vendor-defined)."""
        if len(req) < 4:
            return self._error(state, fr.SpdmErrorCode.INVALID_REQUEST)
        version, code = req[0], req[1]
        if code == fr.SpdmCode.GET_VERSION:
            if version != fr.SPDM_VERSION_10:
                return fr.spdm_error(fr.SpdmErrorCode.VERSION_MISMATCH, fr.SPDM_VERSION_10)
            try:
                fr.GetVersion.decode(req)
            except fr.FramingError:
                return fr.spdm_error(fr.SpdmErrorCode.INVALID_REQUEST, fr.SPDM_VERSION_10)
            self._end(state)  # GET_VERSION resets the connection: every session open on it ends
            state.stage = _Stage.VERSION
            answer = fr.Version(entries=(fr.SPDM_VERSION << 8,)).encode()
            if state.spdm is not None:
                state.spdm.vca(req, answer)
            return answer
        session_codes = _SESSION_CODES if state.spdm is not None else ()
        if code not in (
            fr.SpdmCode.GET_CAPABILITIES,
            fr.SpdmCode.NEGOTIATE_ALGORITHMS,
            fr.SpdmCode.VENDOR_DEFINED_REQUEST,
            *session_codes,
        ):
            return self._error(state, fr.SpdmErrorCode.UNSUPPORTED_REQUEST, code)
        if state.stage is _Stage.NONE:
            return self._error(state, fr.SpdmErrorCode.UNEXPECTED_REQUEST)
        if version != fr.SPDM_VERSION:
            return self._error(state, fr.SpdmErrorCode.VERSION_MISMATCH)
        try:
            if code == fr.SpdmCode.GET_CAPABILITIES:
                return self._capabilities(state, req)
            if code == fr.SpdmCode.NEGOTIATE_ALGORITHMS:
                return self._algorithms(state, req)
            if code in session_codes and state.spdm is not None:
                if state.stage is not _Stage.READY:
                    return self._error(state, fr.SpdmErrorCode.UNEXPECTED_REQUEST)
                return state.spdm.handle(req)
            return self._vendor(state, req, state.session_id)
        except fr.FramingError as exc:
            data = code if exc.code == fr.SpdmErrorCode.UNSUPPORTED_REQUEST else 0
            return self._error(state, exc.code or fr.SpdmErrorCode.INVALID_REQUEST, data)

    def _capabilities(self, state: _ConnState, req: bytes) -> bytes:
        if state.stage is not _Stage.VERSION:
            return self._error(state, fr.SpdmErrorCode.UNEXPECTED_REQUEST)
        caps = fr.GetCapabilities.decode(req)
        if caps.data_transfer_size < fr.MIN_DATA_TRANSFER_SIZE_12 or caps.max_spdm_msg_size < caps.data_transfer_size:
            return self._error(state, fr.SpdmErrorCode.INVALID_REQUEST)  # DSP0274 1.2 GET_CAPABILITIES sizes
        state.stage = _Stage.CAPABILITIES
        answer = responder_capabilities(SECURE_FLAGS if state.spdm is not None else RESPONDER_FLAGS).encode()
        if state.spdm is not None:
            state.spdm.vca(req, answer)
        return answer

    def _algorithms(self, state: _ConnState, req: bytes) -> bytes:
        if state.stage is not _Stage.CAPABILITIES:
            return self._error(state, fr.SpdmErrorCode.UNEXPECTED_REQUEST)
        offer = fr.NegotiateAlgorithms.decode(req)
        if state.spdm is not None:
            # sessions: the session suite when offered, else what a responder without it would select
            algs = sp.select_session_algorithms(offer, self.suite) or select_algorithms(offer, SECURE_FLAGS, self.suite)
            answer = algs.encode()
            state.spdm.vca(req, answer, algorithms=algs)
            state.stage = _Stage.READY
            return answer
        answer = select_algorithms(offer, suite=self.suite).encode()
        try:
            state.session_id = state.responder.open_session()
        except Exception:  # a responder bug must not take the server down
            self.responder_errors += 1
            return self._error(state, fr.SpdmErrorCode.UNSPECIFIED)
        state.stage = _Stage.READY
        return answer

    def _vendor(self, state: _ConnState, req: bytes, session_id: int | None) -> bytes | None:
        if state.stage is not _Stage.READY:
            return self._error(state, fr.SpdmErrorCode.UNEXPECTED_REQUEST)
        vm = fr.VendorMessage.decode(req, request=True)
        if vm.protocol_id not in (PROTOCOL_IDE_KM, PROTOCOL_TDISP):
            return self._error(state, fr.SpdmErrorCode.UNSUPPORTED_REQUEST, fr.SpdmCode.VENDOR_DEFINED_REQUEST)
        try:
            answer = state.responder.handle_vendor_message(vm.protocol_id, vm.message, session_id=session_id)
            if answer is None:
                return None
            return fr.VendorMessage(request=False, protocol_id=vm.protocol_id, message=bytes(answer)).encode()
        except Exception:  # a responder bug (or an unencodable answer) must not stop the server
            self.responder_errors += 1
            return self._error(state, fr.SpdmErrorCode.UNSPECIFIED)

    def _end(self, state: _ConnState) -> None:
        """Tell the responder the connection's sessions are over (close, or a GET_VERSION reset)."""
        if state.spdm is not None:
            state.spdm.reset()
            self._sync(state, state.spdm)
        sid, state.session_id, state.stage = state.session_id, None, _Stage.NONE
        if sid is not None:
            try:
                state.responder.end_session(sid)
            except Exception:  # ending a session must not take the server down
                self.responder_errors += 1


# --- entry points
def _listen(host: str, port: int, allow_remote: bool) -> socket.socket:
    """A listening socket on ``host``; refuses any non-loopback address unless ``allow_remote``."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidArgument(f"cannot resolve listen address {host!r}: {exc}") from None
    loopback = bool(host) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)
    if not loopback and not allow_remote:
        raise InvalidArgument(f"refusing to listen on non-loopback address {host!r} without --allow-remote")
    infos.sort(key=lambda i: i[0] != socket.AF_INET)  # IPv4 first: "localhost" may list ::1 first
    family, _type, _proto, _canon, addr = infos[0]
    return socket.create_server((addr[0], port), family=family)


def serve(
    host: str,
    port: int,
    responder_factory: Callable[[], VendorResponder],
    *,
    allow_remote: bool = False,
    on_ready: Callable[[dict[str, object]], None] | None = None,
    max_connections: int | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    max_open: int = MAX_OPEN,
    max_buffered: int = MAX_BUFFERED,
    secure: bool = True,
    suite: sp.CipherSuite = sp.DEFAULT_SUITE,
) -> None:
    """Serve one responder until a SHUTDOWN frame (or ``max_connections`` connections have come and gone).

    ``port`` 0 picks a free port; ``on_ready`` gets host, port and function_ids once listening.
    """
    listener = _listen(host, port, allow_remote)
    try:
        server = EmuServer(
            listener,
            responder_factory(),
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            max_open=max_open,
            max_buffered=max_buffered,
            secure=secure,
            suite=suite,
        )
    except BaseException:
        listener.close()
        raise
    if on_ready is not None:
        on_ready(server.ready_info())
    server.serve_forever()


@attrs.define
class ServerHandle:
    """A server running in a daemon thread (tests, benchmarks, per-example servers)."""

    host: str
    port: int
    function_ids: tuple[int, ...]
    thread: threading.Thread
    server: EmuServer
    responder_factory: Callable[[], VendorResponder] | None = None

    @property
    def alive(self) -> bool:
        """Still serving (not stopped, not shut down by a SHUTDOWN frame)."""
        return self.thread.is_alive()

    def reset(self) -> None:
        """A fresh responder from the factory the server was started with; see :meth:`EmuServer.reset`."""
        if self.responder_factory is None:
            raise InvalidArgument("this server was started without a responder factory to reset from")
        self.server.reset(self.responder_factory())
        self.function_ids = self.server.function_ids

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=5)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(
    responder_factory: Callable[[], VendorResponder],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_connections: int | None = None,
    idle_timeout: float | None = IDLE_TIMEOUT,
    max_open: int = MAX_OPEN,
    max_buffered: int = MAX_BUFFERED,
    secure: bool = True,
    suite: sp.CipherSuite = sp.DEFAULT_SUITE,
) -> ServerHandle:
    """A server on a loopback port (a free one by default), listening before this returns."""
    listener = _listen(host, port, allow_remote=False)
    try:
        server = EmuServer(
            listener,
            responder_factory(),
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            max_open=max_open,
            max_buffered=max_buffered,
            secure=secure,
            suite=suite,
        )
    except BaseException:
        listener.close()
        raise
    thread = threading.Thread(target=server.serve_forever, daemon=True, name=f"emu-server-{server.port}")
    thread.start()
    return ServerHandle(
        host=str(server.host),
        port=int(server.port),
        function_ids=server.function_ids,
        thread=thread,
        server=server,
        responder_factory=responder_factory,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback unless --allow-remote)")
    parser.add_argument("--port", type=int, default=2323, help="TCP port (0 picks a free one; spdm-emu uses 2323)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"close a connection idle this long, or this slow to finish a frame (default {IDLE_TIMEOUT:g}; 0: never)",
    )
    parser.add_argument(
        "--max-open",
        type=int,
        default=MAX_OPEN,
        metavar="N",
        help=f"connections served at once; more are closed as they arrive (default {MAX_OPEN})",
    )
    parser.add_argument(
        "--max-buffered",
        type=int,
        default=MAX_BUFFERED,
        metavar="BYTES",
        help=f"frame payload bytes read at once across connections (default {MAX_BUFFERED})",
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        help="no SPDM secure sessions: each connection is one session and TDISP / IDE_KM travel in the clear",
    )
    default = sp.DEFAULT_SUITE
    for flag, kind, value in (
        ("--hash", sp.BaseHash, default.hash),
        ("--asym", sp.BaseAsym, default.asym),
        ("--dhe", sp.Dhe, default.dhe),
        ("--aead", sp.Aead, default.aead),
    ):
        parser.add_argument(
            flag,
            choices=[m.name for m in kind],
            default=None,
            help=f"the cipher suite's {flag[2:]} the sessions use, as spdm-emu names it (default {value.name}); "
            "--asym ECDSA_P256 needs a device identity on P-256",
        )


def run(args: argparse.Namespace, responder_factory: Callable[[], VendorResponder]) -> int:
    """Print one JSON ready line (host, port, function_ids, ...) on stdout, then serve until SHUTDOWN."""

    def ready(info: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()

    try:
        idle = getattr(args, "idle_timeout", IDLE_TIMEOUT)
        serve(
            args.host,
            args.port,
            responder_factory,
            allow_remote=args.allow_remote,
            on_ready=ready,
            idle_timeout=idle if idle else None,
            max_open=getattr(args, "max_open", MAX_OPEN),
            max_buffered=getattr(args, "max_buffered", MAX_BUFFERED),
            secure=not getattr(args, "plaintext", False),
            suite=suite_from_args(args),
        )
    except InvalidArgument as exc:
        sys.stderr.write(f"teeio-conformance serve-device: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"teeio-conformance serve-device: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 2
    return 0
