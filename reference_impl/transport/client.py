"""The requester side of the spdm-emu socket protocol, and a device adapter built on it.

:class:`EmuClient` is one connection: VCA, then vendor-defined round trips. Any failure -- refused
connection, timeout, closed socket, garbage frame, SPDM ERROR, wrong protocol in the answer, a dropped
message -- raises :class:`TransportError`, a ConformanceViolation naming what went wrong, so the suite
reports a dead, slow or garbage-speaking responder as a failure instead of dying.

:class:`RemoteDevice` makes a device in another process look like the in-process device to the device
machine: every SPDM session is its own connection, the trace records each crossing, and the snapshot
asks the device for each TDI's state (GET_DEVICE_INTERFACE_STATE, which never changes state). What a
socket cannot reach -- config space, FLR, TLPs -- is refused as Unsupported, so those rules are
NOT EXERCISED rather than failed.
"""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

import attrs

from reference_impl.device.tdisp import codec as td
from reference_impl.errors import ConformanceViolation, NotFound, StackError, Unsupported
from reference_impl.trace import Actor, Trace, operation, query
from reference_impl.transport import framing as fr

__all__ = ["EmuClient", "RemoteDevice", "RemoteDeviceSnapshot", "TransportError", "spawn"]


class TransportError(ConformanceViolation):
    """The responder did not answer properly: dead, slow, or speaking garbage."""


class EmuClient:
    def __init__(self, sock: socket.socket, where: str) -> None:
        self._sock = sock
        self.where = where

    @classmethod
    def connect(cls, host: str, port: int, *, timeout: float = 5.0, vca: bool = True) -> EmuClient:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect to responder at {host}:{port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock, f"{host}:{port}")
        if vca:
            client._vca()
        return client

    def _exchange(self, command: int, payload: bytes) -> tuple[int, bytes]:
        try:
            self._sock.sendall(fr.encode_frame(command, fr.Transport.PCI_DOE, payload))
            head = self._recv(fr.FRAME_HEADER.size)
            cmd, _transport, size = fr.decode_frame_header(head)
            return cmd, self._recv(size) if size else b""
        except TimeoutError:
            raise TransportError(f"responder at {self.where} did not answer in time") from None
        except fr.FramingError as exc:
            raise TransportError(f"responder at {self.where} sent a bad frame: {exc}") from None
        except OSError as exc:
            raise TransportError(f"connection to responder at {self.where} failed: {exc}") from None

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            if hasattr(socket, "TCP_QUICKACK"):
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise TransportError(f"responder at {self.where} closed the connection")
            buf += chunk
        return bytes(buf)

    def spdm(self, message: bytes) -> bytes:
        cmd, payload = self._exchange(fr.Command.NORMAL, fr.encode_doe(message))
        if cmd != fr.Command.NORMAL:
            raise TransportError(f"responder answered with command {cmd:#x}")
        if not payload:
            raise TransportError(f"responder at {self.where} sent no response (message dropped)")
        try:
            doe_type, body = fr.decode_doe(payload)
        except fr.FramingError as exc:
            raise TransportError(f"responder sent a bad DOE object: {exc}") from None
        if doe_type != fr.DoeType.SPDM:
            raise TransportError(f"responder answered with DOE type {doe_type}")
        return body[: fr.spdm_length(body)]

    def _vca(self) -> None:
        for req, want in ((fr.get_version(), fr.SpdmCode.VERSION), (fr.get_capabilities(), fr.SpdmCode.CAPABILITIES),
                          (fr.negotiate_algorithms(), fr.SpdmCode.ALGORITHMS)):
            answer = self.spdm(req)
            if len(answer) < 2 or answer[1] != want:
                raise TransportError(f"VCA: expected {want.name}, got {answer[:4].hex()}")

    def send(self, protocol_id: int, message: bytes) -> bytes | None:
        """One vendor-defined round trip; None when the responder dropped the message (allowed for IDE_KM)."""
        cmd, payload = self._exchange(fr.Command.NORMAL, fr.encode_doe(fr.encode_vendor(
            fr.VendorMessage(request=True, protocol_id=protocol_id, message=message))))
        if not payload:
            return None
        try:
            _doe, body = fr.decode_doe(payload)
            body = body[: fr.spdm_length(body)]
            if len(body) >= 2 and body[1] == fr.SpdmCode.ERROR:
                raise TransportError(f"responder answered SPDM ERROR {body[2]:#x}")
            vm = fr.decode_vendor(body, request=False)
        except fr.FramingError as exc:
            raise TransportError(f"responder sent garbage: {exc}") from None
        if vm.protocol_id != protocol_id:
            raise TransportError(f"asked protocol {protocol_id}, answered protocol {vm.protocol_id}")
        return vm.message

    def shutdown_server(self) -> None:
        self._exchange(fr.Command.SHUTDOWN, b"")
        self.close()

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


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


class RemoteDevice(Actor):
    """A device in another process, driven over the socket, shaped like the in-process device."""

    actor_name = "device"

    def __init__(self, trace: Trace, host: str, port: int, function_ids: tuple[int, ...], *, name: str = "remote",
                 timeout: float = 2.0) -> None:
        super().__init__(trace)
        self.name = name
        self.host, self.port, self.timeout = host, port, timeout
        self.function_ids = tuple(function_ids)
        self.pf_rid = self.function_ids[0]
        self._sessions: dict[int, EmuClient] = {}
        self._next = 1
        self._states: dict[int, td.TdiState] = {f: td.TdiState.CONFIG_UNLOCKED for f in self.function_ids}
        self._observer: EmuClient | None = None  # its own session, used only for state queries

    @query
    def rids(self) -> tuple[int, ...]:
        return self.function_ids

    @query
    def bar_range(self, rid: int) -> tuple[int, int]:
        raise Unsupported("a remote device's BARs are not visible over the socket")

    @operation()
    def spdm_connect(self) -> int:
        client = EmuClient.connect(self.host, self.port, timeout=self.timeout)
        sid = self._next
        self._next += 1
        self._sessions[sid] = client
        return sid

    @operation()
    def spdm_end(self, session_id: int) -> None:
        client = self._sessions.pop(session_id, None)
        if client is None:
            raise NotFound(f"no SPDM session {session_id}")
        client.close()

    @operation()
    def end_session(self, session_id: int) -> None:
        if session_id in self._sessions:
            self.spdm_end(session_id)

    @operation()
    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        client = self._sessions.get(session_id) if session_id is not None else None
        if client is None:
            raise NotFound(f"no live SPDM session {session_id} to the remote device")
        return client.send(protocol_id, message)

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

    @query
    def snapshot(self) -> RemoteDeviceSnapshot:
        """Each TDI's state, asked with GET_DEVICE_INTERFACE_STATE on a live session (a query)."""
        if self._observer is None:
            self._observer = EmuClient.connect(self.host, self.port, timeout=self.timeout)
        client = self._observer
        if client is not None:
            for fid in self.function_ids:
                try:
                    raw = client.send(1, td.encode(td.GetDeviceInterfaceState(interface_id=td.InterfaceId(
                        function_id=fid))))
                    resp = td.decode_response(raw) if raw is not None else None
                except StackError:
                    continue
                if isinstance(resp, td.DeviceInterfaceState):
                    self._states[fid] = td.TdiState(resp.tdi_state)
        fns = tuple(RemoteFunction(rid=f, function_id=f, is_pf=i == 0, tdi_state=self._states[f])
                    for i, f in enumerate(self.function_ids))
        return RemoteDeviceSnapshot(name=self.name, functions=fns, sessions=tuple(sorted(self._sessions)))

    @operation()
    def close(self) -> None:
        """Close every connection (end of an example)."""
        for client in [*self._sessions.values(), *([self._observer] if self._observer else [])]:
            client.close()
        self._sessions.clear()
        self._observer = None


def spawn(command: list[str], *, timeout: float = 10.0) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a server process and read its one-line JSON ready message."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise TransportError(f"{command[0]} printed no ready line within {timeout:g} s")
    line = proc.stdout.readline() if proc.stdout else ""
    try:
        info = json.loads(line)
    except json.JSONDecodeError:
        proc.kill()
        raise TransportError(f"{command[0]} printed {line!r} instead of a JSON ready line") from None
    return proc, info
