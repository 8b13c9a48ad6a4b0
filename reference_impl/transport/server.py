"""Serve a TDISP / IDE_KM responder over the spdm-emu socket protocol (``teeio-conformance serve-device``).

One connection at a time, connection after connection, until a SHUTDOWN frame. Each connection that
completes VCA is one session: its ID is handed to the responder with every message, and the responder
is told when the connection closes. Bad input never stops the server: a malformed frame, DOE object
or SPDM message gets an SPDM ERROR answer (or, for an absurd frame size, the connection is closed) and
the server keeps serving.

Secure sessions (SPDM KEY_EXCHANGE, secured messages) are the next step: ``_Session.unwrap`` /
``wrap`` are where decryption and encryption will go; today they pass plaintext through.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from reference_impl.errors import InvalidArgument
from reference_impl.transport import framing as fr

__all__ = ["ServerHandle", "VendorResponder", "add_arguments", "run", "serve", "start_in_thread"]


class VendorResponder(Protocol):
    """What the server wraps. A responder may also offer ``spdm_connect() -> session_id``; the server
    then calls it when a connection completes VCA and uses that ID for the connection's messages."""

    function_ids: tuple[int, ...]

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None: ...

    def end_session(self, session_id: int) -> None: ...


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        if hasattr(socket, "TCP_QUICKACK"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)  # no 40 ms delayed-ACK stalls
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


@attrs.define
class _Session:
    """One connection's SPDM state: VCA progress and the session ID given to the responder."""

    session_id: int
    vca: int = 0  # 0 nothing, 1 version, 2 capabilities, 3 algorithms (ready)

    def unwrap(self, doe_type: int, message: bytes) -> bytes:
        if doe_type == fr.DoeType.SECURED_SPDM:
            raise fr.FramingError("secured SPDM messages are not supported yet")
        return message

    def wrap(self, message: bytes) -> bytes:
        return message


def _answer(session: _Session, responder: VendorResponder, spdm: bytes) -> bytes:
    if len(spdm) < 4:
        return fr.spdm_error(fr.SpdmErrorCode.INVALID_REQUEST)
    code = spdm[1]
    if code == fr.SpdmCode.GET_VERSION:
        session.vca = 1
        return fr.version_response()
    if code == fr.SpdmCode.GET_CAPABILITIES:
        if session.vca < 1:
            return fr.spdm_error(fr.SpdmErrorCode.UNEXPECTED_REQUEST)
        session.vca = 2
        return fr.capabilities_response()
    if code == fr.SpdmCode.NEGOTIATE_ALGORITHMS:
        if session.vca < 2:
            return fr.spdm_error(fr.SpdmErrorCode.UNEXPECTED_REQUEST)
        if session.vca < 3:
            opener = getattr(responder, "spdm_connect", None)  # a responder with its own sessions opens one
            if opener is not None:
                session.session_id = int(opener())
        session.vca = 3
        return fr.algorithms_response()
    if code == fr.SpdmCode.VENDOR_DEFINED_REQUEST:
        if session.vca < 3:
            return fr.spdm_error(fr.SpdmErrorCode.UNEXPECTED_REQUEST)
        try:
            vm = fr.decode_vendor(spdm, request=True)
        except fr.FramingError:
            return fr.spdm_error(fr.SpdmErrorCode.INVALID_REQUEST)
        if vm.protocol_id not in (0, 1):
            return fr.spdm_error(fr.SpdmErrorCode.UNSUPPORTED_REQUEST)
        try:
            answer = responder.handle_vendor_message(vm.protocol_id, vm.message, session_id=session.session_id)
        except Exception:  # noqa: BLE001 - a responder bug must not take the server down
            return fr.spdm_error(fr.SpdmErrorCode.UNSPECIFIED)
        if answer is None:
            return b""  # dropped: an empty NORMAL frame tells the requester there is no response
        return fr.encode_vendor(fr.VendorMessage(request=False, protocol_id=vm.protocol_id, message=answer))
    return fr.spdm_error(fr.SpdmErrorCode.UNSUPPORTED_REQUEST)


def _serve_connection(conn: socket.socket, responder: VendorResponder, session_id: int) -> bool:
    """Serve one connection; True if the client asked the server to shut down."""
    session = _Session(session_id=session_id)
    try:
        while True:
            head = _recv_exact(conn, fr.FRAME_HEADER.size)
            if head is None:
                return False
            try:
                command, transport, size = fr.decode_frame_header(head)
            except fr.FramingError:
                return False  # absurd size: drop this connection, keep the server
            payload = _recv_exact(conn, size) if size else b""
            if payload is None:
                return False
            if command == fr.Command.SHUTDOWN:
                conn.sendall(fr.encode_frame(fr.Command.SHUTDOWN, transport, b""))
                return True
            if command != fr.Command.NORMAL:
                conn.sendall(fr.encode_frame(command, transport, b""))  # TEST / CONTINUE / unknown: echo
                continue
            if transport != fr.Transport.PCI_DOE:
                conn.sendall(fr.encode_frame(command, transport, b""))
                continue
            try:
                doe_type, message = fr.decode_doe(payload)
                spdm = session.unwrap(doe_type, message)
                spdm = spdm[: fr.spdm_length(spdm)]
                answer = _answer(session, responder, spdm)
            except fr.FramingError:
                answer = fr.spdm_error(fr.SpdmErrorCode.INVALID_REQUEST)
            body = fr.encode_doe(session.wrap(answer)) if answer else b""
            conn.sendall(fr.encode_frame(fr.Command.NORMAL, fr.Transport.PCI_DOE, body))
    except OSError:
        return False
    finally:
        if session.vca == 3:
            try:
                responder.end_session(session_id)
            except Exception:  # noqa: BLE001, S110 - ending a session must not take the server down
                pass
        conn.close()


def _check_host(host: str, allow_remote: bool) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise InvalidArgument(f"refusing to listen on non-loopback address {host!r} without --allow-remote")


def serve(host: str, port: int, responder_factory: Callable[[], VendorResponder], *, allow_remote: bool = False,
          on_ready: Callable[[dict[str, Any]], None] | None = None, max_connections: int | None = None,
          _listener: socket.socket | None = None) -> None:
    """Serve until SHUTDOWN (or ``max_connections`` connections)."""
    _check_host(host, allow_remote)
    srv = _listener or socket.create_server((host, port))
    responder = _Locked(responder_factory())
    shutdown = threading.Event()

    def worker(conn: socket.socket, sid: int) -> None:
        if _serve_connection(conn, responder, sid):
            shutdown.set()
            try:
                srv.shutdown(socket.SHUT_RDWR)  # wake the accept loop
            except OSError:
                pass

    try:
        if on_ready is not None:
            on_ready({"host": host, "port": srv.getsockname()[1], "function_ids": list(responder.function_ids)})
        served = 0
        while not shutdown.is_set() and (max_connections is None or served < max_connections):
            try:
                conn, _ = srv.accept()
            except OSError:
                break
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            served += 1
            # connections are served concurrently (a requester may hold several sessions); the responder
            # itself sees one message at a time
            threading.Thread(target=worker, args=(conn, 1000 + served), daemon=True).start()
    finally:
        srv.close()


class _Locked:
    """Serialises access to the responder across connection threads."""

    def __init__(self, inner: VendorResponder) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.function_ids = inner.function_ids
        if hasattr(inner, "spdm_connect"):
            self.spdm_connect = self._spdm_connect

    def _spdm_connect(self) -> int:
        with self._lock:
            return int(self._inner.spdm_connect())  # type: ignore[attr-defined]

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        with self._lock:
            return self._inner.handle_vendor_message(protocol_id, message, session_id=session_id)

    def end_session(self, session_id: int) -> None:
        with self._lock:
            self._inner.end_session(session_id)


@attrs.define
class ServerHandle:
    host: str
    port: int
    thread: threading.Thread

    def stop(self) -> None:
        from reference_impl.transport.client import EmuClient

        if self.thread.is_alive():
            try:
                EmuClient.connect(self.host, self.port, timeout=2.0, vca=False).shutdown_server()
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.thread.join(timeout=5)


def start_in_thread(responder_factory: Callable[[], VendorResponder], host: str = "127.0.0.1") -> ServerHandle:
    """A server on a free loopback port in a daemon thread (tests, benchmarks, per-worker adapters)."""
    _check_host(host, False)
    listener = socket.create_server((host, 0))
    port = listener.getsockname()[1]
    t = threading.Thread(target=serve, args=(host, port, responder_factory), kwargs={"_listener": listener},
                         daemon=True)
    t.start()
    return ServerHandle(host=host, port=port, thread=t)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback unless --allow-remote)")
    parser.add_argument("--port", type=int, default=2323, help="TCP port (0 picks a free one)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")


def run(args: argparse.Namespace, responder_factory: Callable[[], VendorResponder]) -> int:
    def ready(info: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()

    try:
        serve(args.host, args.port, responder_factory, allow_remote=args.allow_remote, on_ready=ready)
    except InvalidArgument as exc:
        sys.stderr.write(f"teeio-conformance serve-device: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"teeio-conformance serve-device: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 2
    return 0
