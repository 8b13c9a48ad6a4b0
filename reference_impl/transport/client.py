"""The requester side of the spdm-emu socket protocol, and adapters built on it.

:class:`EmuClient` is one connection: VCA, then vendor-defined round trips. Every failure -- refused
connection, timeout, closed socket, garbage frame, SPDM ERROR, wrong protocol in the answer, a dropped
message -- raises :class:`TransportError`, a ConformanceViolation naming what went wrong, so the suite
reports a dead, slow or garbage-speaking responder as a failure instead of dying. After a failure that
may have left the byte stream out of step (timeout, bad frame, closed socket) the client refuses
further use rather than misread a late answer as the next one.

:class:`RemoteResponder` is a :class:`~teeio_conformance.reference_impl.transport.VendorResponder` backed by a remote
server: one connection (one SPDM session) per session ID. :class:`RemoteDevice` goes further and
looks like the in-process device to the device machine. :func:`spawn` starts a server process.
"""

from __future__ import annotations

import collections
import json
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import attrs

from teeio_conformance.contract import framing as fr
from teeio_conformance.contract import spdm as sp
from teeio_conformance.contract.errors import ConformanceViolation, InvalidArgument, NotFound, StackError, Unsupported
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.trace import Actor, Trace, operation, query

__all__ = [
    "EmuClient",
    "KeptMailbox",
    "NoResponse",
    "RemoteDevice",
    "RemoteDeviceSnapshot",
    "RemoteResponder",
    "SpdmErrorAnswer",
    "TransportError",
    "requests_sent",
    "spawn",
]

_PROTOCOL_NAMES = {0: "IDE_KM", 1: "TDISP"}


_SENT = [0]
"""SPDM requests (NORMAL frames) this process wrote, over every connection: what a benchmark counts."""


def requests_sent() -> int:
    """SPDM requests written so far by this process's clients (VCA, session set-up and end, KEY_UPDATE,
    TDISP and IDE_KM, state queries): take a difference around what is measured."""
    return _SENT[0]


_VERIFIED_CHAINS: dict[tuple[bytes | None, bytes], tuple[bytes, Any]] = {}
"""(trusted root, chain digest) -> (chain, leaf key): chains this process verified, as a TSM caches them."""


class TransportError(ConformanceViolation):
    """The responder did not answer properly: dead, slow, or speaking garbage."""


class NoResponse(TransportError):
    """The responder answered with an empty frame: it dropped the message (no response)."""


class SpdmErrorAnswer(TransportError):
    """The responder answered with an SPDM ERROR (``code``, ``data``) instead of the message asked for.

    A typed error of its own so a rule can tell it from a dead or garbage-speaking responder: SPDM ERROR
    is the one answer a responder can give to a vendor payload too short to hold a TDISP header."""

    def __init__(self, message: str, *, code: int, data: int) -> None:
        super().__init__(message)
        self.code, self.data = code, data


class EmuClient:
    """One connection to an spdm-emu style responder over PCI DOE."""

    def __init__(self, sock: socket.socket, where: str, *, trusted_root: bytes | None = None) -> None:
        self._sock = sock
        self._reader = fr.StreamReader(sock)
        self.where = where
        self._broken: str | None = None
        self._closed = False
        self.version: fr.Version | None = None
        self.capabilities: fr.Capabilities | None = None
        self.algorithms: fr.Algorithms | None = None
        self.requester = sp.SpdmRequester(trusted_root=trusted_root)
        """The TSM's side of this connection's secure sessions (one mailbox, any number of sessions)."""

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        vca: bool = True,
        pipelined: bool = False,
        trusted_root: bytes | None = None,
    ) -> EmuClient:
        """Connect (every receive then waits at most ``timeout`` seconds) and, by default, run VCA
        (``pipelined``: see :meth:`vca`). ``trusted_root`` is the root certificate (DER) the responder's
        chain must start at before a session is opened; None accepts any self-consistent chain."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect to responder at {host}:{port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock, f"{host}:{port}", trusted_root=trusted_root)
        if vca:
            try:
                client.vca(pipelined=pipelined)
            except BaseException:
                client.close()
                raise
        return client

    def __enter__(self) -> EmuClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ frames
    def _fail(self, why: str) -> TransportError:
        """Mark the connection unusable (the stream may be out of step) and close it at once."""
        self._broken = why
        self.close()
        return TransportError(why)

    def _recv(self, n: int) -> bytes:
        data = self._reader.read_exact(n)
        if data is None:
            raise self._fail(f"responder at {self.where} closed the connection")
        return data

    def exchange(
        self, command: int, payload: bytes = b"", *, meanwhile: Callable[[], None] | None = None
    ) -> tuple[int, bytes]:
        """One frame out, one frame in: (command, payload) of the answer, which must be for PCI DOE.
        ``meanwhile`` is work to do while the responder works on the request."""
        self._write(fr.encode_frame(command, fr.Transport.PCI_DOE, payload))
        _SENT[0] += command == fr.Command.NORMAL
        if meanwhile is not None:
            meanwhile()
        return self._read(command)

    @property
    def unusable(self) -> bool:
        """Closed, or broken by an earlier failure (the stream may be out of step)."""
        return self._closed or self._broken is not None

    def _usable(self) -> None:
        if self._broken is not None:
            raise TransportError(f"connection to responder at {self.where} is unusable after: {self._broken}")
        if self._closed:
            raise TransportError(f"connection to responder at {self.where} is closed")

    def _write(self, frames: bytes) -> None:
        self._usable()
        try:
            self._sock.sendall(frames)
        except TimeoutError:
            raise self._fail(f"responder at {self.where} did not take the request in time") from None
        except OSError as exc:
            raise self._fail(f"connection to responder at {self.where} failed: {exc}") from None

    def _read(self, command: int) -> tuple[int, bytes]:
        """The answer to one frame of ``command`` already written."""
        self._usable()
        try:
            head = self._recv(fr.FRAME_HEADER.size)
            cmd, transport, size = fr.decode_frame_header(head)
            body = self._recv(size) if size else b""
        except TimeoutError:
            raise self._fail(f"responder at {self.where} did not answer in time") from None
        except fr.FramingError as exc:
            raise self._fail(f"responder at {self.where} sent a bad frame: {exc}") from None
        except OSError as exc:
            raise self._fail(f"connection to responder at {self.where} failed: {exc}") from None
        if transport != fr.Transport.PCI_DOE:
            raise self._fail(f"responder at {self.where} answered for transport {transport}, not PCI_DOE (2)")
        if cmd == fr.Command.UNKNOWN and command != fr.Command.UNKNOWN:
            raise TransportError(f"responder at {self.where} did not recognise socket command {command:#x}")
        if cmd != command:
            raise self._fail(f"responder at {self.where} answered socket command {cmd:#x} to {command:#x}")
        return cmd, body

    def spdm(self, message: bytes, *, meanwhile: Callable[[], None] | None = None) -> bytes:
        """One SPDM round trip in plain DOE: the answer without its dword padding."""
        _cmd, payload = self.exchange(fr.Command.NORMAL, fr.encode_doe(message), meanwhile=meanwhile)
        return self._spdm_body(payload)

    def _spdm_body(self, payload: bytes) -> bytes:
        if not payload:
            raise NoResponse(f"responder at {self.where} sent no response (an empty frame: message dropped)")
        try:
            doe_type, body = fr.decode_doe(payload)
            if doe_type != fr.DoeType.SPDM:
                raise fr.FramingError(f"DOE data object type {doe_type}, expected SPDM (1)")
            suite = self.requester.suite
            return fr.strip_doe_padding(body, suite.session_sizes if suite is not None else fr.DEFAULT_SESSION_SIZES)
        except fr.FramingError as exc:
            raise TransportError(f"responder at {self.where} sent a bad DOE object: {exc}") from None

    def _expect(self, request: bytes, what: str) -> bytes:
        return self._not_error(self.spdm(request), what)

    def _not_error(self, answer: bytes, what: str) -> bytes:
        if len(answer) >= 4 and answer[1] == fr.SpdmCode.ERROR:
            try:
                err = fr.SpdmError.decode(answer)
            except fr.FramingError as exc:
                raise TransportError(f"responder at {self.where} answered {what} with a bad ERROR: {exc}") from None
            raise SpdmErrorAnswer(
                f"responder at {self.where} answered {what} with SPDM ERROR {err.code:#x} "
                f"({err.name}, data {err.data:#x})",
                code=err.code,
                data=err.data,
            )
        return answer

    # ------------------------------------------------------------------------------------------ SPDM
    def vca(self, *, pipelined: bool = False) -> fr.Algorithms:
        """GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS (DSP0274 1.2); SPDM 1.2 is required.

        ``pipelined`` writes all three at once and then reads the answers (see :meth:`send_many`), one
        round trip instead of three; the answers are judged in order either way."""
        requests = (fr.get_version(), sp.get_capabilities(), sp.offer_algorithms().encode())
        names = ("GET_VERSION", "GET_CAPABILITIES", "NEGOTIATE_ALGORITHMS")
        payloads = iter(self._pipeline([fr.encode_doe(r) for r in requests]) if pipelined else ())

        def answer(i: int) -> bytes:
            payload = next(payloads) if pipelined else self.exchange(fr.Command.NORMAL, fr.encode_doe(requests[i]))[1]
            body = self._not_error(self._spdm_body(payload), names[i])
            self.requester.vca(requests[i], body)  # the transcript every session's keys are bound to
            return body

        try:
            version = fr.Version.decode(answer(0))
            if fr.SPDM_VERSION not in version.versions:
                raise TransportError(
                    f"responder at {self.where} does not offer SPDM 1.2 (offers "
                    f"{', '.join(f'{v >> 4}.{v & 0xF}' for v in version.versions)})"
                )
            caps = fr.Capabilities.decode(answer(1))
            algs = fr.Algorithms.decode(answer(2))
        except fr.FramingError as exc:
            raise TransportError(f"responder at {self.where} sent a bad VCA answer: {exc}") from None
        self.version, self.capabilities, self.algorithms = version, caps, algs
        return algs

    def _pipeline(self, payloads: list[bytes]) -> list[bytes]:
        """NORMAL frames written at once, then every answer's payload, in order (before judging any)."""
        self._write(b"".join(fr.encode_frame(fr.Command.NORMAL, fr.Transport.PCI_DOE, p) for p in payloads))
        _SENT[0] += len(payloads)
        return [self._read(fr.Command.NORMAL)[1] for _ in payloads]

    # ------------------------------------------------------------------------------------------ sessions
    @property
    def offers_sessions(self) -> bool:
        """Did the responder's CAPABILITIES claim KEY_EX with encryption and MAC (DSP0274 1.2)?"""
        need = fr.CAP_KEY_EX | sp.CAP_ENCRYPT | sp.CAP_MAC
        return self.capabilities is not None and self.capabilities.flags & need == need

    def open_session(self) -> int:
        """A secure session on this connection (DSP0274 1.2 §10.13-§10.14): the certificate chain
        (first time only; GET_DIGESTS, then GET_CERTIFICATE in portions, verified against the trusted
        root), KEY_EXCHANGE, then FINISH inside the session. Returns its session ID; any failure is a
        TransportError naming the step."""
        return self.open_session_and_ask([])[0]

    def open_session_and_ask(
        self, then: list[tuple[int, bytes, int | None]]
    ) -> tuple[int, list[bytes | TransportError]]:
        """:meth:`open_session`, with ``then`` (vendor requests, as for :meth:`send_batch`) written right
        behind FINISH and answered after it: their answers say what the device is once the session is
        open, in the round trip of FINISH. Only for a responder that answers a connection's frames in
        order (see :meth:`send_many`)."""
        then_answers: list[bytes | TransportError] = []
        try:
            if not self.requester.has_chain:
                digest = self.requester.on_digests(self.spdm(self.requester.get_digests()))
                cached = _VERIFIED_CHAINS.get((self.requester.trusted_root, digest))
                if cached is not None:
                    self.requester.adopt_chain(*cached)
                else:
                    while not self.requester.on_certificate(self.spdm(self.requester.get_certificate())):
                        pass
                    leaf = self.requester.leaf_key
                    if leaf is not None and len(_VERIFIED_CHAINS) < 64:
                        _VERIFIED_CHAINS[(self.requester.trusted_root, digest)] = (self.requester.chain, leaf)
            try:
                # the next session's ephemeral key is made while the responder signs this one's
                rsp = self.spdm(self.requester.key_exchange(), meanwhile=self.requester.prepare_key_exchange)
                sid = self.requester.on_key_exchange_rsp(rsp)
            finally:
                self.requester.abandon_key_exchange()
            finish = self.requester.finish(sid)
            try:
                answer, then_answers = self._secured_round_then(sid, finish, "FINISH", then)
                self.requester.on_finish_rsp(sid, finish, answer)
            except BaseException:
                self.requester.forget(sid)
                raise
        except fr.FramingError as exc:
            raise TransportError(f"responder at {self.where}: secure session not opened: {exc}") from None
        return sid, then_answers

    def end_session(self, session_id: int) -> None:
        """END_SESSION inside the session; its keys are gone afterwards whatever the answer."""
        self.end_session_and_ask(session_id, [])

    def end_session_and_ask(
        self, session_id: int, then: list[tuple[int, bytes, int | None]]
    ) -> list[bytes | TransportError]:
        """:meth:`end_session`, with ``then`` written right behind END_SESSION and answered after it (as in
        :meth:`open_session_and_ask`): what the device is once the session has ended."""
        then_answers: list[bytes | TransportError] = []
        try:
            request = self.requester.end_session(session_id)
            answer, then_answers = self._secured_round_then(session_id, request, "END_SESSION", then)
            self.requester.on_end_session_ack(session_id, answer)
        except fr.FramingError as exc:
            raise TransportError(f"responder at {self.where}: END_SESSION failed: {exc}") from None
        finally:
            self.requester.forget(session_id)
        return then_answers

    def end_sessions_after(self, then: list[tuple[int, bytes, int | None]], session_ids: list[int]) -> None:
        """``then``'s vendor requests, then END_SESSION of every session in ``session_ids``: all written at
        once and answered in order, one round trip (only for a responder that answers a connection's frames
        in order, see :meth:`send_many`). Answers are not judged -- this is clean-up between examples -- and
        every session's keys are gone afterwards whatever the answers; a broken stream raises."""
        try:
            ends = [(sid, self.requester.end_session(sid)) for sid in session_ids]
            frames = [*self._vendor_frames(then), *(self._sealed(sid, request) for sid, request in ends)]
            payloads = self._pipeline(frames)
            self._vendor_answers(then, payloads[: len(then)])
            for (sid, _request), payload in zip(ends, payloads[len(then) :], strict=True):
                try:
                    self.requester.on_end_session_ack(sid, self._unseal(sid, payload, "END_SESSION"))
                except StackError:
                    pass
        finally:
            for sid in session_ids:
                self.requester.forget(sid)

    def key_update(self, session_id: int, op: sp.KeyUpdateOp = sp.KeyUpdateOp.UPDATE_ALL_KEYS, tag: int = 0) -> None:
        """KEY_UPDATE inside the session, then the new keys (DSP0274 1.2 §10.17); an update is followed by
        VerifyNewKey under the new keys, as the spec's flow has it (libspdm refuses a second update before)."""
        self._key_update(session_id, op, tag)
        if op != sp.KeyUpdateOp.VERIFY_NEW_KEY:
            self._key_update(session_id, sp.KeyUpdateOp.VERIFY_NEW_KEY, (tag + 1) & 0xFF)

    def _key_update(self, session_id: int, op: sp.KeyUpdateOp, tag: int) -> None:
        request = self.requester.key_update(session_id, op, tag)
        try:
            self.requester.on_key_update_ack(
                session_id, request, self._secured_round(session_id, request, "KEY_UPDATE")
            )
        except fr.FramingError as exc:
            raise TransportError(f"responder at {self.where}: KEY_UPDATE failed: {exc}") from None

    def _secured_round(self, session_id: int, message: bytes, what: str) -> bytes:
        _cmd, payload = self.exchange(fr.Command.NORMAL, self._sealed(session_id, message))
        return self._unseal(session_id, payload, what)

    def _secured_round_then(
        self, session_id: int, message: bytes, what: str, then: list[tuple[int, bytes, int | None]]
    ) -> tuple[bytes, list[bytes | TransportError]]:
        """One secured round trip, with ``then``'s vendor requests pipelined behind it (none: a plain round)."""
        if not then:
            return self._secured_round(session_id, message, what), []
        frames = [self._sealed(session_id, message), *self._vendor_frames(then)]
        payloads = self._pipeline(frames)
        then_answers = self._vendor_answers(then, payloads[1:])  # read and opened first: the stream stays in step
        return self._unseal(session_id, payloads[0], what), then_answers

    def _sealed(self, session_id: int, message: bytes) -> bytes:
        try:
            return fr.encode_doe(self.requester.seal(session_id, message), fr.DoeType.SECURED_SPDM)
        except fr.FramingError as exc:
            raise TransportError(f"cannot seal a message for session {session_id:#010x}: {exc}") from None
        except StackError as exc:
            raise TransportError(str(exc)) from None

    def _unseal(self, session_id: int, payload: bytes, what: str) -> bytes:
        """The SPDM answer inside a secured DOE object. An answer in the clear is an ERROR (DecryptError
        and the like: the session is over); one that fails its MAC ends the session here too."""
        if not payload:
            raise NoResponse(f"responder at {self.where} sent no response to {what} (an empty frame: message dropped)")
        try:
            doe_type, body = fr.decode_doe(payload)
        except fr.FramingError as exc:
            raise TransportError(f"responder at {self.where} sent a bad DOE object: {exc}") from None
        if doe_type == fr.DoeType.SPDM:
            answer = self._not_error(self._spdm_body(payload), what)
            raise TransportError(
                f"responder at {self.where} answered {what} in a session in the clear ({answer[:4].hex()})"
            )
        if doe_type != fr.DoeType.SECURED_SPDM:
            raise TransportError(f"responder at {self.where} answered {what} with DOE data object type {doe_type}")
        try:
            return self.requester.open(session_id, body)
        except fr.FramingError as exc:
            self.requester.forget(session_id)
            raise TransportError(f"responder at {self.where}: the answer to {what} does not open: {exc}") from None

    def send(self, protocol_id: int, message: bytes, *, session_id: int | None = None) -> bytes:
        """One VENDOR_DEFINED round trip, inside ``session_id`` (a secured message) or in the clear;
        the answer without its protocol-ID byte.

        Raises :class:`NoResponse` (a TransportError) when the responder dropped the message."""
        name = _PROTOCOL_NAMES.get(protocol_id, f"protocol {protocol_id}")
        request = fr.VendorMessage(request=True, protocol_id=protocol_id, message=message).encode()
        if session_id is None:
            return self._vendor_answer(protocol_id, self._expect(request, f"a {name} message"))
        answer = self._secured_round(session_id, request, f"a {name} message")
        return self._vendor_answer(protocol_id, self._not_error(answer, f"a {name} message"))

    def send_many(
        self, protocol_id: int, messages: Iterable[bytes], *, session_id: int | None = None
    ) -> list[bytes | TransportError]:
        """Several VENDOR_DEFINED requests written at once, then their answers in order.

        One round trip instead of one per message. Only for a responder known to answer a connection's
        frames one after another, as :mod:`.server` does: SPDM itself allows one outstanding request.
        Each item is the answer or the TransportError that request alone met; a broken stream raises,
        as :meth:`send` does."""
        return self.send_batch([(protocol_id, m, session_id) for m in messages])

    def send_batch(self, items: list[tuple[int, bytes, int | None]]) -> list[bytes | TransportError]:
        """Like :meth:`send_many`, for (protocol, message, session) items that may differ: each goes in its
        own session (sealed) or in the clear, all written at once, answers read in order."""
        return self._vendor_answers(items, self._pipeline(self._vendor_frames(items)))

    def _vendor_frames(self, items: list[tuple[int, bytes, int | None]]) -> list[bytes]:
        frames = []
        for protocol_id, message, session_id in items:
            vm = fr.VendorMessage(request=True, protocol_id=protocol_id, message=message).encode()
            frames.append(fr.encode_doe(vm) if session_id is None else self._sealed(session_id, vm))
        return frames

    def _vendor_answers(
        self, items: list[tuple[int, bytes, int | None]], payloads: list[bytes]
    ) -> list[bytes | TransportError]:
        out: list[bytes | TransportError] = []
        for (protocol_id, _m, session_id), payload in zip(items, payloads, strict=True):
            what = f"a {_PROTOCOL_NAMES.get(protocol_id, f'protocol {protocol_id}')} message"
            try:
                if session_id is None:
                    answer = self._not_error(self._spdm_body(payload), what)
                else:
                    answer = self._not_error(self._unseal(session_id, payload, what), what)
                out.append(self._vendor_answer(protocol_id, answer))
            except TransportError as exc:
                out.append(exc)
        return out

    def _vendor_answer(self, protocol_id: int, answer: bytes) -> bytes:
        name = _PROTOCOL_NAMES.get(protocol_id, f"protocol {protocol_id}")
        try:
            vm = fr.VendorMessage.decode(answer, request=False)
        except fr.FramingError as exc:
            raise TransportError(f"responder at {self.where} answered a {name} message with garbage: {exc}") from None
        if vm.protocol_id != protocol_id:
            raise TransportError(
                f"responder at {self.where} answered a {name} message with protocol "
                f"{vm.protocol_id} ({_PROTOCOL_NAMES.get(vm.protocol_id, 'unknown')})"
            )
        return vm.message

    def test(self) -> bytes:
        """spdm-emu's TEST command: a liveness check that needs no SPDM state."""
        return self.exchange(fr.Command.TEST)[1]

    def shutdown_server(self) -> None:
        """Ask the server to exit (it echoes SHUTDOWN first), then close."""
        try:
            self.exchange(fr.Command.SHUTDOWN)
        finally:
            self.close()

    def close(self, *, wait: bool = True) -> None:
        """Close, and wait until the server has closed its side too.

        The server ends the connection's session *before* it closes its socket, so once this
        returns the responder has seen ``end_session``: the next request, on any connection,
        meets the state after the session ended (no race). A connection already known to be
        broken is closed at once, and so is any with ``wait=False`` (nobody will ask this responder
        anything again, e.g. a server reset follows). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._broken is None and wait:
                self._sock.shutdown(socket.SHUT_WR)
                while self._sock.recv(4096):  # the server sends nothing more; EOF comes after end_session
                    pass
        except OSError:  # including a timeout: the server is gone or stuck; close regardless
            pass
        finally:
            self._sock.close()


class RemoteResponder:
    """A VendorResponder whose device runs behind an spdm-emu socket (one connection per session).

    A machine written against the in-process device can drive a remote one: each session ID gets
    its own connection (opened, with VCA, on its first message; ``None`` shares one), ``end_session``
    closes it, and a dropped message comes back as None just as the in-process device returns it.
    Every other failure raises :class:`TransportError`.
    """

    def __init__(self, host: str, port: int, function_ids: Iterable[int] = (), *, timeout: float = 5.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._function_ids = tuple(function_ids)
        self._clients: dict[int | None, EmuClient] = {}

    @classmethod
    def from_ready(cls, info: Mapping[str, Any], *, timeout: float = 5.0) -> RemoteResponder:
        """From a server's JSON ready line (see :func:`spawn`)."""
        return cls(str(info["host"]), int(info["port"]), info.get("function_ids", ()), timeout=timeout)

    @property
    def function_ids(self) -> tuple[int, ...]:
        return self._function_ids

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        client = self._clients.get(session_id)
        if client is None:
            client = self._clients[session_id] = EmuClient.connect(self.host, self.port, timeout=self.timeout)
        try:
            return client.send(protocol_id, message)
        except NoResponse:
            return None

    def end_session(self, session_id: int) -> None:
        client = self._clients.pop(session_id, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


# --- device adapter
@attrs.frozen
class RemoteFunction:
    rid: int
    function_id: int
    is_pf: bool
    tdi_state: td.TdiState
    locked_session: int | None = None


@attrs.frozen
class RemoteDeviceSnapshot:
    name: str
    functions: tuple[RemoteFunction, ...]
    sessions: tuple[int, ...]
    stream_state: str = "UNKNOWN"
    secrets: tuple[bytes, ...] = ()


@attrs.define
class KeptMailbox:
    """A mailbox connection and its observer session, kept from one example to the next.

    Saves each example a connection, VCA, the certificate chain and the observer's handshake -- and lets
    the suite drive a responder that serves a single connection, as DMTF spdm-emu does (it exits when
    that connection closes). Each example still gets its own sessions, ended at its close."""

    client: EmuClient | None = None
    observer: int | None = None


class RemoteDevice(Actor):
    """A device in another process, driven over the socket, shaped like the in-process device.

    ``secure`` (the default) plays the TSM: every SPDM session is a secure session (KEY_EXCHANGE and
    FINISH, the chain checked against ``trusted_root``) and TDISP / IDE_KM go inside it as secured
    messages. With ``mailbox="one"`` every session shares one connection, as a TSM drives one DOE
    mailbox; ``"per-session"`` opens a connection per session. A vendor message with no session is sent
    in the clear (what a device must refuse). Without ``secure`` (a responder without sessions), every
    session is its own plaintext connection. Session IDs the machine sees are this adapter's own
    numbers (1, 2, ...), so records replay alike whatever IDs the responder picks.

    The snapshot asks each TDI's state (GET_DEVICE_INTERFACE_STATE, which never changes state) over an
    observer session of its own. What a socket cannot reach -- config space, FLR, TLPs -- is refused as
    Unsupported, so those rules are NOT EXERCISED rather than failed.
    """

    actor_name = "device"

    def __init__(
        self,
        trace: Trace,
        host: str,
        port: int,
        function_ids: tuple[int, ...],
        *,
        name: str = "remote",
        timeout: float = 2.0,
        own_server: bool = False,
        secure: bool = True,
        mailbox: str = "one",
        trusted_root: bytes | None = None,
        isolate: bool = False,
        keep: KeptMailbox | None = None,
        connect_now: bool = False,
        pipelined: bool | None = None,
    ) -> None:
        super().__init__(trace)
        if mailbox not in ("one", "per-session"):
            raise InvalidArgument(f"mailbox is 'one' or 'per-session', got {mailbox!r}")
        self.name = name
        self.host, self.port, self.timeout = host, port, timeout
        # Our own server (:mod:`.server`) answers a connection's frames in order, so requests may be
        # pipelined, and it is reset before the next example, so closing need not wait for session
        # ends. An unknown responder gets one request at a time and a close that waits.
        self.pipelined = self._reset_follows = own_server
        if pipelined is not None:  # the responder said how it answers (serve-device's ready line)
            self.pipelined = pipelined
        self.secure, self.one_mailbox, self.trusted_root = secure, mailbox == "one", trusted_root
        self.isolate = isolate
        self._keep = keep if secure and isolate and mailbox == "one" else None
        self.messages = 0  # TDISP / IDE_KM messages the machine sent
        self.queries = 0  # state queries the snapshot sent (not counted in ``messages``)
        self.isolation = 0  # STOPs sent at close to leave the responder as the next example must find it
        self.function_ids = tuple(function_ids)
        self.pf_rid = self.function_ids[0]
        self._mailbox: EmuClient | None = None
        self._sessions: dict[int, tuple[EmuClient, int | None]] = {}  # our ID -> (connection, SPDM session)
        self._ended: set[int] = set()  # our IDs of sessions that have ended
        self._next = 1
        self._states: dict[int, td.TdiState] = {f: td.TdiState.CONFIG_UNLOCKED for f in self.function_ids}
        self._observer: tuple[EmuClient, int | None] | None = None  # its own session, for state queries only
        self._plain: EmuClient | None = None  # messages in the clear, when each session has its own connection
        self._snap: RemoteDeviceSnapshot | None = None  # valid until a crossing reaches the device
        self._fresh = True  # no message sent since the last snapshot (the next may carry its state queries)
        self._prefetched: collections.deque[bytes | TransportError] | None = None  # a batch's answers, in order
        self._locked_by: dict[int, int] = {}  # TDI -> the session whose LOCK_INTERFACE it accepted last
        self._queries = [
            td.encode(td.GetDeviceInterfaceState(interface_id=td.InterfaceId(function_id=f))) for f in self.function_ids
        ]
        if connect_now and secure and self.one_mailbox:
            # reach the responder while the device is built (or reuse the kept mailbox): one that cannot be
            # reached is a SUT that cannot be built, not a device that broke a rule at its first message
            self._mailbox_client()

    @query
    def rids(self) -> tuple[int, ...]:
        return self.function_ids

    @query
    def bar_range(self, rid: int) -> tuple[int, int]:
        raise Unsupported("a remote device's BARs are not visible over the socket")

    # ------------------------------------------------------------------------------ connections
    def _connect(self) -> EmuClient:
        return EmuClient.connect(
            self.host, self.port, timeout=self.timeout, pipelined=self.pipelined, trusted_root=self.trusted_root
        )

    def _mailbox_client(self) -> EmuClient:
        if self._mailbox is None or self._mailbox.unusable:
            kept = self._keep
            if kept is not None and kept.client is not None and not kept.client.unusable:
                self._mailbox = kept.client
            else:
                self._mailbox = self._connect()
                if kept is not None:
                    kept.client, kept.observer = self._mailbox, None
        return self._mailbox

    def _open(self) -> tuple[EmuClient, int | None]:
        """A connection and, when secure, a new session on it (on the mailbox, or a connection of its own)."""
        client, sid, _ = self._open_asking(False)
        return client, sid

    def _open_asking(self, ask: bool) -> tuple[EmuClient, int | None, list[bytes | TransportError] | None]:
        """:meth:`_open`; with ``ask``, the snapshot's state queries ride behind FINISH when they may
        (:meth:`_riders`), and their answers come third (None when they did not ride)."""
        if not self.secure:
            return self._connect(), None, None
        client = self._mailbox_client() if self.one_mailbox else self._connect()
        riders = self._riders(client) if ask else None
        try:
            if riders:
                self.queries += len(riders)
                sid, answers = client.open_session_and_ask(riders)
                return client, sid, answers
            return client, client.open_session(), None
        except BaseException:
            if client is not self._mailbox:
                client.close(wait=False)
            raise

    def _riders(self, client: EmuClient) -> list[tuple[int, bytes, int | None]] | None:
        """The snapshot's state queries as requests that may ride behind another on ``client`` (pipelined,
        answered after it, in order, so they say the state it left): when the responder answers a
        connection's frames in order and the observer's session lives on that same connection."""
        observer = self._observer
        if (
            self.pipelined
            and observer is not None
            and observer[0] is client
            and not client.unusable
            and (observer[1] is None or observer[1] in client.requester.sessions)
        ):
            return [(1, q, observer[1]) for q in self._queries]
        return None

    def _release(self, client: EmuClient, spdm_sid: int | None, *, ask: bool = False) -> None:
        """End a session: END_SESSION inside it (secure), and close its connection unless it is the mailbox.
        With ``ask``, the snapshot's state queries ride behind END_SESSION when they may (the snapshot
        after the end comes with it)."""
        try:
            if spdm_sid is not None and not client.unusable and spdm_sid in client.requester.sessions:
                riders = self._riders(client) if ask else None
                if riders:
                    self.queries += len(riders)
                    self._snap = self._snapshot_from(client.end_session_and_ask(spdm_sid, riders))
                else:
                    client.end_session(spdm_sid)
        finally:
            if client is not self._mailbox:
                client.close()

    # ------------------------------------------------------------------------------ sessions
    @operation()
    def spdm_connect(self) -> int:
        self._snap = None  # the device may change state from here on
        client, spdm_sid, answers = self._open_asking(True)
        sid = self._next
        self._next += 1
        self._sessions[sid] = (client, spdm_sid)
        if answers is not None:  # the state once the session is open, in FINISH's round trip
            self._snap = self._snapshot_from(answers)
        return sid

    @operation()
    def spdm_end(self, session_id: int) -> None:
        self._snap = None  # the device may change state from here on
        entry = self._sessions.pop(session_id, None)
        if entry is None:
            raise NotFound(f"no SPDM session {session_id}")
        self._ended.add(session_id)
        self._release(*entry, ask=True)

    @operation()
    def end_session(self, session_id: int) -> None:
        if session_id in self._sessions:
            self.spdm_end(session_id)

    @operation()
    def key_update(self, session_id: int) -> None:
        """KEY_UPDATE (all keys) inside a live secure session: TDISP and IDE_KM must go on working."""
        entry = self._sessions.get(session_id)
        if entry is None or entry[1] is None:
            raise NotFound(f"no live secure SPDM session {session_id}")
        entry[0].key_update(entry[1])

    def _route(self, session_id: int | None) -> tuple[EmuClient, int | None]:
        """The connection and SPDM session a message for our session ``session_id`` goes over."""
        if session_id is None:
            if not self.secure:
                raise NotFound("no SPDM session given, and without secure sessions every message needs one")
            return self._clear_client(), None
        if session_id in self._ended and self.secure:
            # a session that has ended has no keys left to seal with: to the device, a message over it is one
            # outside any session (in the clear), which it must refuse (PCIe §11.2.2, §6.33.3)
            return self._clear_client(), None
        entry = self._sessions.get(session_id)
        if entry is None:
            raise NotFound(f"no live SPDM session {session_id} to the remote device")
        return entry

    @operation()
    def handle_vendor_messages(
        self, messages: tuple[tuple[int, bytes], ...], *, session_id: int | None
    ) -> tuple[bytes | None, ...]:
        """Several (protocol, message) requests over one session, for a TSM step whose requests do not depend
        on each other's answers (QUERY, KEY_PROG and K_SET_GO of a key programming). Each is a crossing of
        its own inside this one (``handle_vendor_message``, in order, with its own answer or error), so the
        rules see exactly what they see of one-by-one requests; a responder that answers a connection's
        frames in order gets them written at once (one round trip, the snapshot's state queries behind the
        last), any other one by one. Every request is sent even if one fails; the first failure is raised
        at the end, once every request is traced -- the device has seen them all."""
        self._snap = None  # the device may change state from here on
        riders: list[tuple[int, bytes, int | None]] | None = None
        prefetched: collections.deque[bytes | TransportError] | None = None
        try:
            client, spdm_sid = self._route(session_id)
        except NotFound:
            client, spdm_sid = None, None  # each request raises its own NotFound below
        if (
            client is not None
            and self.pipelined
            and len(messages) > 1
            and not client.unusable
            and (spdm_sid is None or spdm_sid in client.requester.sessions)
        ):
            first_since_snapshot, self._fresh = self._fresh, False
            riders = (self._riders(client) if first_since_snapshot else None) or []
            items = [(p, m, spdm_sid) for p, m in messages]
            try:
                answers = client.send_batch([*items, *riders])
            except TransportError as exc:  # the stream broke: every request meets it
                answers = [exc] * (len(items) + len(riders))
            self.queries += len(riders)
            prefetched = collections.deque(answers[: len(items)])
            riders_answers = answers[len(items) :]
        out: list[bytes | None] = []
        first_error: StackError | None = None
        for protocol_id, message in messages:
            self._prefetched = prefetched
            try:
                out.append(self.handle_vendor_message(protocol_id, message, session_id=session_id))
            except StackError as exc:
                out.append(None)
                first_error = first_error or exc
            finally:
                self._prefetched = None
        if riders:
            self._snap = self._snapshot_from(riders_answers)
        if first_error is not None:
            raise first_error
        return tuple(out)

    @operation()
    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        self._snap = None  # the device may change state from here on
        prefetched = self._prefetched
        if prefetched:  # written already, with the rest of a batch: its answer is here
            self.messages += 1
            first: bytes | TransportError = prefetched.popleft()
            if isinstance(first, bytes) and protocol_id == 1 and session_id is not None:
                if message[1:2] == bytes([td.RequestCode.LOCK_INTERFACE]):
                    self._note_lock(first, session_id)
            if isinstance(first, NoResponse):
                return None
            if isinstance(first, TransportError):
                raise first
            return first
        client, spdm_sid = self._route(session_id)
        self.messages += 1
        first_since_snapshot, self._fresh = self._fresh, False
        riders = self._riders(client) if first_since_snapshot else None
        if riders and (spdm_sid is None or spdm_sid in client.requester.sessions):
            # the snapshot's state queries ride behind the message on the same mailbox: answered after it,
            # in order, so they say the state the message left -- one round trip instead of two. Only behind
            # the first message after a snapshot: a step of several messages (keys, a whole report) would
            # have them answered after every one and read only after the last, so after the first the
            # snapshot asks once, when the step is over (the responder's work per message stays one request)
            self.queries += len(riders)
            answers = client.send_batch([(protocol_id, message, spdm_sid), *riders])
            first = answers[0]
            if isinstance(first, bytes) and protocol_id == 1 and session_id is not None:
                if message[1:2] == bytes([td.RequestCode.LOCK_INTERFACE]):
                    self._note_lock(first, session_id)
            self._snap = self._snapshot_from(answers[1:])
            if isinstance(first, NoResponse):
                return None
            if isinstance(first, TransportError):
                raise first
            return first
        else:
            try:
                answer = client.send(protocol_id, message, session_id=spdm_sid)
            except NoResponse:
                return None  # dropped, as the in-process device reports it
        if protocol_id == 1 and session_id is not None and message[1:2] == bytes([td.RequestCode.LOCK_INTERFACE]):
            self._note_lock(answer, session_id)
        return answer

    def _note_lock(self, answer: bytes, session_id: int) -> None:
        """Remember which session locked a TDI, as the TSM that sent the LOCK knows: the device does not say,
        and the rules need it to know what a session's end does (TDISP-09) and where START belongs."""
        try:
            resp = td.decode_response(answer)
        except StackError:
            return
        if isinstance(resp, td.LockInterfaceResponse):
            self._locked_by[resp.interface_id.function_id] = session_id

    def _clear_client(self) -> EmuClient:
        if self.one_mailbox:
            return self._mailbox_client()
        if self._plain is None or self._plain.unusable:
            self._plain = self._connect()
        return self._plain

    @staticmethod
    def _unsupported(*args: Any, **kwargs: Any) -> None:
        raise Unsupported("not reachable over the spdm-emu socket (config space, resets and TLPs are local)")

    @operation()
    def ide_enable(self, enable: bool) -> str:
        self._unsupported()
        return ""

    @operation()
    def flr(self, rid: int) -> None:
        self._unsupported()

    @operation()
    def config_write(self, rid: int, register: str, value: int) -> None:
        self._unsupported()

    @operation()
    def poison(self, rid: int) -> None:
        self._unsupported()

    @operation()
    def ide_failure(self, reason: str) -> None:
        self._unsupported()

    @operation()
    def receive(self, packet: Any) -> bytes:
        self._unsupported()
        return b""

    def _ask(self, client: EmuClient, spdm_sid: int | None, messages: list[bytes]) -> list[bytes | TransportError]:
        """TDISP questions, pipelined when the responder allows it; a failure stands in for its answer."""
        self.queries += len(messages)
        if self.pipelined:
            try:
                return client.send_many(1, messages, session_id=spdm_sid)
            except TransportError as exc:
                return [exc] * len(messages)
        out: list[bytes | TransportError] = []
        for m in messages:
            try:
                out.append(client.send(1, m, session_id=spdm_sid))
            except TransportError as exc:
                out.append(exc)
        return out

    @query
    def snapshot(self) -> RemoteDeviceSnapshot:
        """Each TDI's state, asked with GET_DEVICE_INTERFACE_STATE on the observer's own session (a query).

        The questions go out pipelined when allowed (one round trip for all TDIs); the answer is kept until
        this adapter next sends the device anything: a step the socket cannot carry (config space,
        FLR, TLPs) reaches nobody, so the device's state is what it was. Not kept if a query failed."""
        self._fresh = True
        if self._snap is not None:
            return self._snap
        try:
            if self._observer is None or self._observer[0].unusable:
                kept = self._keep
                if kept is not None and kept.observer is not None and kept.client is self._mailbox_client():
                    self._observer = (kept.client, kept.observer)
                else:
                    self._observer = self._open()
                    if kept is not None:
                        kept.observer = self._observer[1]
            answers = self._ask(*self._observer, self._queries)
        except TransportError as exc:
            answers = [exc] * len(self._queries)
        snap = self._snapshot_from(answers)
        if snap is None:
            return self._build_snapshot()
        self._snap = snap
        return snap

    def _snapshot_from(self, answers: list[bytes | TransportError]) -> RemoteDeviceSnapshot | None:
        """The snapshot the state queries' answers give; None (nothing cached) if any failed."""
        complete = True
        for fid, raw in zip(self.function_ids, answers, strict=True):
            try:
                if isinstance(raw, TransportError):
                    raise raw
                resp = td.decode_response(raw)
            except StackError:
                complete = False
                continue
            if isinstance(resp, td.DeviceInterfaceState):
                self._states[fid] = td.TdiState(resp.tdi_state)
            else:
                complete = False
        return self._build_snapshot() if complete else None

    def _build_snapshot(self) -> RemoteDeviceSnapshot:
        for fid, state in self._states.items():
            if state is td.TdiState.CONFIG_UNLOCKED:
                self._locked_by.pop(fid, None)
        fns = tuple(
            RemoteFunction(
                rid=f,
                function_id=f,
                is_pf=i == 0,
                tdi_state=self._states[f],
                locked_session=self._locked_by.get(f) if self._states[f] is not td.TdiState.CONFIG_UNLOCKED else None,
            )
            for i, f in enumerate(self.function_ids)
        )
        return RemoteDeviceSnapshot(name=self.name, functions=fns, sessions=tuple(sorted(self._sessions)))

    def _isolate(self) -> None:
        """Leave the responder as the next example must find it, without a fresh process: STOP every TDI
        that is not CONFIG_UNLOCKED (over its locking session, else the observer's), then END_SESSION every
        session, which drops the key owner and every session binding (PCIe §11.3.16, §11.4.5)."""
        if self._isolate_in_one_round():
            return
        if self._observer is not None and not self._observer[0].unusable:
            client, spdm_sid = self._observer
            for fid in self.function_ids:
                if self._states.get(fid) is td.TdiState.CONFIG_UNLOCKED and self._snap is not None:
                    continue
                owner = self._sessions.get(self._locked_by.get(fid, -1))
                via, via_sid = owner if owner is not None and not owner[0].unusable else (client, spdm_sid)
                stop = td.encode(td.StopInterface(interface_id=td.InterfaceId(function_id=fid)))
                try:
                    self.isolation += 1
                    via.send(1, stop, session_id=via_sid)
                except StackError:
                    pass
        kept = self._keep is not None and self._mailbox is not None and not self._mailbox.unusable
        observer = [] if kept or self._observer is None else [self._observer]
        for entry in [*self._sessions.values(), *observer]:
            try:
                self._release(*entry)
            except StackError:
                pass
        self._sessions.clear()
        self._observer = None
        self._locked_by.clear()
        if kept:
            self._mailbox = None  # handed on to the next example, with its observer session

    def _isolate_in_one_round(self) -> bool:
        """:meth:`_isolate` as one round trip -- the same STOPs, then the same END_SESSIONs, written at once --
        when every session lives on the one mailbox and the responder answers its frames in order. False
        (nothing sent) otherwise."""
        mailbox, observer = self._mailbox, self._observer
        if not self.pipelined or mailbox is None or mailbox.unusable or observer is None or observer[0] is not mailbox:
            return False
        if any(client is not mailbox for client, _ in self._sessions.values()) or observer[1] is None:
            return False
        stops = []
        for fid in self.function_ids:
            if self._states.get(fid) is td.TdiState.CONFIG_UNLOCKED and self._snap is not None:
                continue
            owner = self._sessions.get(self._locked_by.get(fid, -1))
            via_sid = owner[1] if owner is not None else observer[1]
            stops.append((1, td.encode(td.StopInterface(interface_id=td.InterfaceId(function_id=fid))), via_sid))
        kept = self._keep is not None
        ends = [sid for _, sid in self._sessions.values() if sid is not None and sid in mailbox.requester.sessions]
        if not kept and observer[1] in mailbox.requester.sessions:
            ends.append(observer[1])
        self.isolation += len(stops)
        try:
            mailbox.end_sessions_after(stops, ends)
        except StackError:
            pass
        self._sessions.clear()
        self._observer = None
        self._locked_by.clear()
        if kept and not mailbox.unusable:
            self._mailbox = None  # handed on to the next example, with its observer session
        return True

    @operation()
    def close(self) -> None:
        """Close every connection (end of an example); with ``isolate``, reset the device by protocol first."""
        if self.isolate and self.secure:
            self._isolate()
        self._snap = None
        clients = {id(c): c for c, _ in self._sessions.values()}
        for extra in (self._observer[0] if self._observer else None, self._plain, self._mailbox):
            if extra is not None:
                clients[id(extra)] = extra
        for client in clients.values():
            client.close(wait=not self._reset_follows)
        self._sessions.clear()
        self._observer = self._plain = self._mailbox = None


# --- processes
def _drain(stream: IO[bytes], tail: collections.deque[bytes]) -> None:
    """Keep reading a child's pipe so it never blocks on a full pipe; remember the last few KiB."""
    try:
        fd = stream.fileno()
        while chunk := os.read(fd, 4096):
            tail.append(chunk)
    except (OSError, ValueError):
        pass


def spawn(command: list[str], *, timeout: float = 10.0) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a server process and read its one-line JSON ready message (host, port, function_ids).

    The process's later output is drained in the background. On any failure the process is killed
    and :class:`TransportError` says why, with the tail of its stderr.
    """
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise TransportError(f"cannot start {command[0] if command else '(empty command)'}: {exc}") from None
    if proc.stdout is None or proc.stderr is None:  # cannot happen with PIPE; keeps the types honest
        proc.kill()
        raise TransportError(f"{command[0]}: no pipes to read its ready line from")
    err_tail: collections.deque[bytes] = collections.deque(maxlen=16)
    threading.Thread(target=_drain, args=(proc.stderr, err_tail), daemon=True).start()

    def fail(why: str) -> TransportError:
        proc.kill()
        proc.wait()
        stderr = b"".join(err_tail).decode(errors="replace").strip()[-2000:]
        return TransportError(f"{command[0]}: {why}" + (f"; its stderr ends: {stderr}" if stderr else ""))

    fd = proc.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in line:
        left = deadline - time.monotonic()
        if left <= 0:
            raise fail(f"printed no ready line within {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise fail(f"exited (status {proc.wait()}) before printing a ready line")
        line += chunk
    first, _, rest = line.partition(b"\n")
    out_tail: collections.deque[bytes] = collections.deque([rest], maxlen=16)
    threading.Thread(target=_drain, args=(proc.stdout, out_tail), daemon=True).start()
    try:
        info = json.loads(first)
    except ValueError:
        raise fail(f"printed {first[:200]!r} instead of a JSON ready line") from None
    if (
        not isinstance(info, dict)
        or not isinstance(info.get("host"), str)
        or not isinstance(info.get("port"), int)
        or not all(isinstance(f, int) for f in info.get("function_ids", ()))
    ):
        raise fail(f"ready line {first[:200]!r} lacks host (string), port (integer) or function_ids (integers)")
    return proc, info
