"""The spdm-emu socket server and client over 127.0.0.1, with a fake responder (not the real device).

Covers VCA, vendor-defined round trips, sessions per connection, end_session on close, SHUTDOWN and
the other socket commands, SPDM errors, 10,000 malformed frames, and every client failure path.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teeio_conformance.contract import framing as fr
from teeio_conformance.contract.errors import ConformanceViolation, InvalidArgument
from teeio_conformance.reference_impl.transport import VendorResponder
from teeio_conformance.reference_impl.transport import server as srv
from teeio_conformance.reference_impl.transport.client import (
    EmuClient,
    NoResponse,
    RemoteResponder,
    TransportError,
    spawn,
)

FUNCTION_IDS = (0x3A00, 0x3A01)
# TDISP_ERROR (PCIe 6.x §11.3.13): version 0x10, type 0x7F, reserved, INTERFACE_ID (function 0x3A00,
# 8 reserved), ERROR_CODE 0x0007 (UNSUPPORTED_REQUEST), ERROR_DATA 0
TDISP_ERROR = bytes.fromhex("10 7f 0000 003a0000 0000000000000000 07000000 00000000")
GET_TDISP_VERSION = bytes.fromhex("10 81 0000 003a0000 0000000000000000")


class FakeResponder:
    """Answers GET_TDISP_VERSION with a fixed TDISP error, echoes the rest; ``drop`` is dropped and
    ``boom`` raises. Records every call."""

    function_ids = FUNCTION_IDS

    def __init__(self) -> None:
        self.seen: list[tuple[int, bytes, int | None]] = []
        self.ended: list[int] = []

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        self.seen.append((protocol_id, message, session_id))
        if message == b"drop":
            return None
        if message == b"boom":
            raise RuntimeError("a responder bug")
        if message == GET_TDISP_VERSION:
            return TDISP_ERROR
        return b"echo:" + message

    def end_session(self, session_id: int) -> None:
        self.ended.append(session_id)


@pytest.fixture
def served() -> Iterator[tuple[srv.ServerHandle, FakeResponder]]:
    responder = FakeResponder()
    handle = srv.start_in_thread(lambda: responder, secure=False)
    yield handle, responder
    handle.stop()
    assert not handle.thread.is_alive()


class Raw:
    """A requester that speaks frames by hand, to reach what EmuClient would never send."""

    def __init__(self, port: int, timeout: float = 2.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = fr.StreamReader(self.sock)

    def frame(self, command: int, payload: bytes = b"", transport: int = fr.Transport.PCI_DOE):
        """Send one frame; (command, transport, payload) of the answer, or None if the server closed."""
        self.sock.sendall(fr.encode_frame(command, transport, payload))
        return self.read()

    def read(self):
        try:
            head = self.reader.read_exact(12)
        except ConnectionResetError:
            return None
        if head is None:
            return None
        command, transport, size = fr.decode_frame_header(head)
        return command, transport, self.reader.read_exact(size) if size else b""

    def spdm(self, message: bytes, doe_type: int = fr.DoeType.SPDM) -> bytes:
        answer = self.frame(fr.Command.NORMAL, fr.encode_doe(message, doe_type))
        assert answer is not None and answer[:2] == (fr.Command.NORMAL, fr.Transport.PCI_DOE)
        if not answer[2]:
            return b""
        got_type, body = fr.decode_doe(answer[2])
        assert got_type == fr.DoeType.SPDM
        return fr.strip_doe_padding(body)

    def vca(self) -> None:
        assert self.spdm(fr.get_version())[1] == fr.SpdmCode.VERSION
        assert self.spdm(fr.get_capabilities())[1] == fr.SpdmCode.CAPABILITIES
        assert self.spdm(fr.negotiate_algorithms())[1] == fr.SpdmCode.ALGORITHMS

    def vendor(self, protocol_id: int, message: bytes) -> bytes:
        return self.spdm(fr.VendorMessage(request=True, protocol_id=protocol_id, message=message).encode())

    def close(self) -> None:
        self.sock.close()


def error(code: int, data: int = 0, version: int = fr.SPDM_VERSION) -> bytes:
    return fr.SpdmError(code=code, data=data, version=version).encode()


# --- VCA, round trips, sessions
def test_vca_then_vendor_round_trips(served):
    handle, responder = served
    with EmuClient.connect(handle.host, handle.port) as client:
        assert client.version == fr.Version(entries=(0x1200,))
        assert client.capabilities is not None and client.capabilities.flags == 0  # claims nothing it lacks
        assert client.capabilities.data_transfer_size >= fr.MIN_DATA_TRANSFER_SIZE_12
        algs = client.algorithms  # no signing or session capability: nothing selected, one empty table per asked
        assert algs is not None and (algs.base_hash_sel, algs.base_asym_sel) == (0, 0)
        assert algs.alg_structs and all(t.supported == 0 for t in algs.alg_structs)
        assert client.send(1, GET_TDISP_VERSION) == TDISP_ERROR
        for i in range(200):
            assert client.send(i % 2, b"m%d" % i) == b"echo:m%d" % i
        assert client.test() == srv.TEST_REPLY
    assert {sid for _p, _m, sid in responder.seen} == {1}
    assert responder.seen[0] == (1, GET_TDISP_VERSION, 1)


def test_each_connection_is_one_session_and_closing_it_ends_it(served):
    handle, responder = served
    first = EmuClient.connect(handle.host, handle.port)
    second = EmuClient.connect(handle.host, handle.port)
    first.send(1, b"a")
    second.send(1, b"b")
    assert [sid for *_x, sid in responder.seen] == [1, 2]
    first.close()
    assert responder.ended == [1]  # close() returns only once the server has ended the session
    second.close()
    assert responder.ended == [1, 2]
    no_vca = Raw(handle.port)  # a connection that never completes VCA opens no session
    no_vca.spdm(fr.get_version())
    no_vca.close()
    EmuClient.connect(handle.host, handle.port).close()
    assert responder.ended == [1, 2, 3]


def test_get_version_resets_the_connection_and_ends_its_session(served):
    handle, responder = served
    raw = Raw(handle.port)
    raw.vca()
    assert fr.decode_vendor(raw.vendor(1, b"x"), request=False).message == b"echo:x"
    assert raw.spdm(fr.get_version()) == fr.Version().encode()
    assert responder.ended == [1]
    assert raw.vendor(1, b"y") == error(fr.SpdmErrorCode.UNEXPECTED_REQUEST)
    assert raw.spdm(fr.get_capabilities())[1] == fr.SpdmCode.CAPABILITIES
    assert raw.spdm(fr.negotiate_algorithms())[1] == fr.SpdmCode.ALGORITHMS
    raw.vendor(1, b"z")
    assert responder.seen[-1] == (1, b"z", 2)
    raw.close()


def test_concurrent_connections_each_get_their_own_answers(served):
    handle, responder = served
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with EmuClient.connect(handle.host, handle.port) as client:
                for i in range(100):
                    assert client.send(1, b"%d-%d" % (n, i)) == b"echo:%d-%d" % (n, i)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(responder.seen) == 400 and sorted(responder.ended) == [1, 2, 3, 4]


# --- SPDM errors
CAPS = fr.get_capabilities()
NEG = fr.negotiate_algorithms()
VENDOR = fr.VendorMessage(request=True, protocol_id=1, message=b"x").encode()
V, C = fr.get_version(), CAPS
E = fr.SpdmErrorCode


@pytest.mark.parametrize(
    ("sequence", "last_answer"),
    [
        ([VENDOR], error(E.UNEXPECTED_REQUEST, version=0x10)),  # vendor-defined before VCA
        ([CAPS], error(E.UNEXPECTED_REQUEST, version=0x10)),
        ([V, NEG], error(E.UNEXPECTED_REQUEST)),  # ALGORITHMS before CAPABILITIES
        ([V, VENDOR], error(E.UNEXPECTED_REQUEST)),
        ([V, C, VENDOR], error(E.UNEXPECTED_REQUEST)),
        ([V, C, C], error(E.UNEXPECTED_REQUEST)),
        ([V, C, NEG, NEG], error(E.UNEXPECTED_REQUEST)),
        ([bytes.fromhex("12840000")], error(E.VERSION_MISMATCH, version=0x10)),  # GET_VERSION is always 1.0
        ([V, bytes([0x11]) + CAPS[1:]], error(E.VERSION_MISMATCH)),
        ([V, C, NEG, bytes([0x13]) + VENDOR[1:]], error(E.VERSION_MISMATCH)),
        ([bytes.fromhex("12810000")], error(E.UNSUPPORTED_REQUEST, 0x81, version=0x10)),  # GET_DIGESTS
        ([V, C, NEG, bytes.fromhex("12040000")], error(E.UNSUPPORTED_REQUEST, 0x04)),  # a response code
        ([bytes.fromhex("1084000000")], error(E.INVALID_REQUEST, version=0x10)),  # 5-byte GET_VERSION
        ([V, CAPS[:12]], error(E.INVALID_REQUEST)),
        # DataTransferSize below the 42-byte minimum
        (
            [V, fr.GetCapabilities(data_transfer_size=10, max_spdm_msg_size=10).encode()],
            error(E.INVALID_REQUEST),
        ),
        (
            [V, fr.GetCapabilities(data_transfer_size=100, max_spdm_msg_size=50).encode()],
            error(E.INVALID_REQUEST),
        ),
        ([V, C, NEG[:4] + b"\x40\x00" + NEG[6:]], error(E.INVALID_REQUEST)),  # Length field lies
        (
            [V, C, NEG, VENDOR[:4] + b"\x04\x00" + VENDOR[6:]],
            error(E.UNSUPPORTED_REQUEST, 0xFE),
        ),  # not PCI-SIG
        ([V, C, NEG, VENDOR[:9] + b"\x09\x00" + VENDOR[11:]], error(E.INVALID_REQUEST)),  # length mismatch
        (
            [V, C, NEG, fr.VendorMessage(request=True, protocol_id=5, message=b"").encode()],
            error(E.UNSUPPORTED_REQUEST, 0xFE),
        ),
    ],
)
def test_spdm_requests_out_of_order_malformed_or_unknown_get_errors(served, sequence, last_answer):
    handle, _responder = served
    raw = Raw(handle.port)
    for message in sequence[:-1]:
        assert raw.spdm(message)[1] != fr.SpdmCode.ERROR
    assert raw.spdm(sequence[-1]).hex() == last_answer.hex()
    raw.vca()  # the connection still works
    raw.close()


def test_a_responder_that_raises_gets_unspecified_and_the_server_goes_on(served):
    handle, _responder = served
    with EmuClient.connect(handle.host, handle.port) as client:
        with pytest.raises(TransportError, match=r"SPDM ERROR 0x5 \(UNSPECIFIED"):
            client.send(0, b"boom")
        assert client.send(0, b"ok") == b"echo:ok"
    assert handle.server.responder_errors == 1


def test_a_dropped_message_is_an_empty_frame_and_no_response_for_the_client(served):
    handle, _responder = served
    raw = Raw(handle.port)
    raw.vca()
    answer = raw.frame(
        fr.Command.NORMAL,
        fr.encode_doe(fr.VendorMessage(request=True, protocol_id=0, message=b"drop").encode()),
    )
    assert answer == (fr.Command.NORMAL, fr.Transport.PCI_DOE, b"")
    raw.close()
    with EmuClient.connect(handle.host, handle.port) as client:
        with pytest.raises(NoResponse, match="no response"):
            client.send(0, b"drop")
        assert client.send(0, b"after") == b"echo:after"  # the stream is still in step
    assert issubclass(NoResponse, TransportError) and issubclass(TransportError, ConformanceViolation)


# --- socket commands and the DOE layer
def test_socket_commands(served):
    handle, _responder = served
    raw = Raw(handle.port)
    assert raw.frame(fr.Command.TEST) == (fr.Command.TEST, 2, b"Server Hello!\0")
    assert raw.frame(0x1234, b"xyz") == (fr.Command.UNKNOWN, 2, b"")
    assert raw.frame(fr.Command.NORMAL, fr.encode_doe(fr.get_version()), transport=fr.Transport.MCTP) == (
        fr.Command.UNKNOWN,
        2,
        b"",
    )
    assert raw.frame(fr.Command.CONTINUE) == (fr.Command.CONTINUE, 2, b"")
    assert raw.read() is None  # CONTINUE: that requester is done; the server waits for the next
    raw.close()
    with EmuClient.connect(handle.host, handle.port) as client:
        assert client.send(1, b"still here") == b"echo:still here"


def test_doe_discovery_and_malformed_doe_objects(served):
    handle, _responder = served
    raw = Raw(handle.port)
    for index, listed in ((0, (1, 0, 1)), (1, (1, 1, 0))):
        cmd, _t, payload = raw.frame(
            fr.Command.NORMAL,
            fr.encode_doe(fr.DoeDiscoveryRequest(index=index).encode(), fr.DoeType.DISCOVERY),
        )
        doe_type, body = fr.decode_doe(payload)
        got = fr.DoeDiscoveryResponse.decode(body)
        assert doe_type == fr.DoeType.DISCOVERY and (got.vendor_id, got.data_object_type, got.next_index) == listed
    doe = fr.encode_doe(fr.get_version())
    for payload, want in [
        (
            fr.encode_doe(fr.get_version(), fr.DoeType.SECURED_SPDM),
            error(E.UNSUPPORTED_REQUEST, version=0x10),
        ),
        (doe[:4] + b"\x09\0\0\0" + doe[8:], error(E.INVALID_REQUEST, version=0x10)),  # length field lies
        (doe[:-2], error(E.INVALID_REQUEST, version=0x10)),  # not whole dwords
        (b"\x02\x00" + doe[2:], error(E.INVALID_REQUEST, version=0x10)),  # not PCI-SIG
        (
            fr.encode_doe(fr.get_version() + bytes(8)),
            error(E.INVALID_REQUEST, version=0x10),
        ),  # over-long padding
        (fr.encode_doe(bytes(8), fr.DoeType.DISCOVERY), error(E.INVALID_REQUEST, version=0x10)),  # 2 dwords
        (fr.encode_doe(b"", 7), error(E.INVALID_REQUEST, version=0x10)),
        (b"", error(E.INVALID_REQUEST, version=0x10)),
    ]:
        cmd, _t, answer = raw.frame(fr.Command.NORMAL, payload)
        assert cmd == fr.Command.NORMAL and fr.decode_doe(answer) == (fr.DoeType.SPDM, want)
    raw.close()


def test_an_absurd_frame_size_closes_that_connection_only(served):
    handle, _responder = served
    raw = Raw(handle.port)
    raw.sock.sendall(fr.FRAME_HEADER.pack(fr.Command.NORMAL, fr.Transport.PCI_DOE, fr.MAX_PAYLOAD + 1))
    assert raw.read() is None
    raw.close()
    with EmuClient.connect(handle.host, handle.port) as client:
        assert client.send(1, b"x") == b"echo:x"


def test_shutdown_is_echoed_stops_the_server_and_ends_open_sessions(served):
    handle, responder = served
    other = EmuClient.connect(handle.host, handle.port)
    other.send(1, b"x")
    EmuClient.connect(handle.host, handle.port, vca=False).shutdown_server()
    handle.thread.join(timeout=5)
    assert not handle.thread.is_alive()
    assert responder.ended == [1]
    with pytest.raises(TransportError, match="cannot connect"):
        EmuClient.connect(handle.host, handle.port, timeout=0.5)
    with pytest.raises(TransportError):
        other.send(1, b"y")


# --- 10,000 malformed frames
def _well_formed_answer(answer) -> None:
    """Whatever the server answers must itself be a valid frame / DOE object / SPDM response."""
    command, transport, payload = answer
    assert transport == fr.Transport.PCI_DOE
    assert command in (fr.Command.NORMAL, fr.Command.UNKNOWN, fr.Command.TEST, fr.Command.CONTINUE)
    if command == fr.Command.NORMAL and payload:
        doe_type, body = fr.decode_doe(payload)
        if doe_type == fr.DoeType.DISCOVERY:
            fr.DoeDiscoveryResponse.decode(body)
        else:
            assert doe_type == fr.DoeType.SPDM
            msg = fr.decode_spdm(fr.strip_doe_padding(body))
            assert isinstance(msg, fr.Version | fr.Capabilities | fr.Algorithms | fr.SpdmError | fr.VendorMessage)


def test_the_server_survives_10000_malformed_frames_and_still_answers():
    """Seeded: random bytes, mutated valid frames, truncated objects, absurd sizes, over few connections.

    Every frame that does not close its connection gets exactly one well-formed answer."""
    responder = FakeResponder()
    handle = srv.start_in_thread(lambda: responder, secure=False)
    rng = random.Random(20261125)
    valid = [
        fr.get_version(),
        CAPS,
        NEG,
        VENDOR,
        fr.VendorMessage(request=True, protocol_id=0, message=b"q").encode(),
    ]
    sent = answered = closed = 0
    raw = Raw(handle.port)
    try:
        while sent < 10_000:
            kind = rng.randrange(100)
            if kind < 15:  # random command / transport, random payload
                command = rng.choice([rng.randrange(2**32), 1, 0xDEAD, 0xFFFF, 0x8001])
                frame = fr.encode_frame(command, rng.randrange(5), rng.randbytes(rng.randrange(40)))
            elif kind < 45:  # a valid DOE/SPDM frame with bits flipped after the frame header
                b = bytearray(fr.encode_frame(1, 2, fr.encode_doe(rng.choice(valid))))
                for _ in range(rng.randrange(1, 4)):
                    b[rng.randrange(12, len(b))] ^= 1 << rng.randrange(8)
                frame = bytes(b)
            elif kind < 60:  # valid DOE header, random SPDM body
                body = bytes(
                    [
                        rng.choice([0x10, 0x12, rng.randrange(256)]),
                        rng.choice([0x84, 0xE1, 0xE3, 0xFE, rng.randrange(256)]),
                    ]
                ) + rng.randbytes(rng.randrange(40))
                frame = fr.encode_frame(1, 2, fr.encode_doe(body, rng.choice([0, 1, 1, 1, 2])))
            elif kind < 70:  # truncated: the frame is consistent, the DOE / SPDM inside is cut short
                full = fr.encode_doe(rng.choice(valid))
                frame = fr.encode_frame(1, 2, full[: rng.randrange(len(full))])
            elif kind < 90:  # the valid messages, in any order (drives every VCA state)
                frame = fr.encode_frame(1, 2, fr.encode_doe(rng.choice(valid)))
            elif kind < 99:  # random payload bytes under a NORMAL / PCI_DOE header
                frame = fr.encode_frame(1, 2, rng.randbytes(rng.randrange(64)))
            else:  # an absurd size: the server must drop this connection, not die
                frame = fr.FRAME_HEADER.pack(1, 2, fr.MAX_PAYLOAD + rng.randrange(1, 2**20))
            if frame[:4] == b"\x00\x00\xff\xfe":
                continue  # never ask the server to shut down
            sent += 1
            raw.sock.sendall(frame)
            answer = raw.read()
            if answer is None:
                closed += 1
                raw.close()
                raw = Raw(handle.port)
                continue
            answered += 1
            _well_formed_answer(answer)
            if answer[0] == fr.Command.CONTINUE:
                assert raw.read() is None
                raw.close()
                raw = Raw(handle.port)
    finally:
        raw.close()
    assert handle.thread.is_alive() and answered + closed == 10_000 and answered > 9_000
    with EmuClient.connect(handle.host, handle.port) as client:
        assert client.send(1, GET_TDISP_VERSION) == TDISP_ERROR
    handle.stop()
    assert handle.server.responder_errors == 0


_property_server: list[srv.ServerHandle] = []


@given(st.binary(max_size=64), st.sampled_from([fr.DoeType.SPDM, fr.DoeType.DISCOVERY, fr.DoeType.SECURED_SPDM]))
def test_any_doe_payload_gets_one_well_formed_answer(body, doe_type):
    if not _property_server:
        _property_server.append(srv.start_in_thread(FakeResponder, secure=False))
    raw = Raw(_property_server[0].port)
    try:
        answer = raw.frame(fr.Command.NORMAL, fr.encode_doe(body, doe_type))
        assert answer is not None
        _well_formed_answer(answer)
    finally:
        raw.close()


# --- serve(), run(), spawn()
def test_serve_reports_ready_and_stops_after_max_connections():
    infos: list[dict[str, object]] = []
    thread = threading.Thread(
        target=srv.serve,
        args=("localhost", 0, FakeResponder),
        kwargs={"on_ready": infos.append, "max_connections": 1},
    )
    thread.start()
    deadline = time.monotonic() + 5
    while not infos and time.monotonic() < deadline:
        time.sleep(0.01)
    info = infos[0]
    assert info["host"] == "127.0.0.1" and isinstance(info["port"], int) and info["port"] > 0
    assert info["function_ids"] == list(FUNCTION_IDS)
    with EmuClient.connect("127.0.0.1", int(str(info["port"]))) as client:
        assert client.send(1, b"x") == b"echo:x"
    thread.join(timeout=5)
    assert not thread.is_alive()


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::"])
def test_a_non_loopback_listen_address_is_refused(host):
    with pytest.raises(InvalidArgument, match="non-loopback"):
        srv.serve(host, 0, FakeResponder)
    with pytest.raises(InvalidArgument, match="non-loopback"):
        srv.start_in_thread(FakeResponder, host=host)


def test_cli_arguments_and_run_refusing_a_remote_host(capsys):
    parser = argparse.ArgumentParser()
    srv.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.allow_remote) == ("127.0.0.1", 2323, False)
    assert srv.run(parser.parse_args(["--host", "0.0.0.0", "--port", "0"]), FakeResponder) == 2
    assert "non-loopback" in capsys.readouterr().err


SERVE_SCRIPT = textwrap.dedent(
    """
    import argparse
    from teeio_conformance.reference_impl.transport import server

    class Echo:
        function_ids = (0x3A00, 0x3A01)
        def handle_vendor_message(self, protocol_id, message, *, session_id):
            return None if message == b"drop" else b"echo:%d:" % session_id + message
        def end_session(self, session_id):
            pass

    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    raise SystemExit(server.run(parser.parse_args(["--port", "0", "--plaintext"]), Echo))
    """
)


def test_run_in_a_process_prints_one_ready_line_and_a_remote_responder_drives_it():
    proc, info = spawn([sys.executable, "-c", SERVE_SCRIPT], timeout=20)
    try:
        assert info["host"] == "127.0.0.1" and info["function_ids"] == list(FUNCTION_IDS)
        remote = RemoteResponder.from_ready(info, timeout=5)
        assert isinstance(remote, VendorResponder) and remote.function_ids == FUNCTION_IDS
        assert remote.handle_vendor_message(1, b"a", session_id=7) == b"echo:1:a"  # server session 1
        assert remote.handle_vendor_message(1, b"b", session_id=8) == b"echo:2:b"  # its own connection
        assert remote.handle_vendor_message(1, b"c", session_id=7) == b"echo:1:c"
        assert remote.handle_vendor_message(0, b"drop", session_id=7) is None  # dropped, as in-process
        remote.end_session(7)
        assert remote.handle_vendor_message(1, b"d", session_id=7) == b"echo:3:d"  # a new connection
        remote.close()
        EmuClient.connect(info["host"], info["port"], vca=False).shutdown_server()
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("script", "match"),
    [
        (
            "print('listening on 2323', flush=True); import time; time.sleep(5)",
            "instead of a JSON ready line",
        ),
        (
            "import sys; sys.stderr.write('no port for you'); sys.exit(3)",
            "exited \\(status 3\\).*no port for you",
        ),
        ("import time; time.sleep(5)", "no ready line within 0.3 s"),
        ('print(\'{"port": "x"}\', flush=True); import time; time.sleep(5)', "lacks host"),
    ],
)
def test_spawn_failures_are_transport_errors(script, match):
    with pytest.raises(TransportError, match=match):
        spawn(
            [sys.executable, "-c", script],
            timeout=0.3 if "sleep(5)" in script and "print" not in script else 10,
        )


def test_spawn_of_a_missing_program_is_a_transport_error():
    with pytest.raises(TransportError, match="cannot start"):
        spawn(["/nonexistent/teeio-serve-device"])


# --- client failure paths
def scripted(handler: Callable[[socket.socket], None]) -> int:
    """A one-connection server that runs ``handler`` on the accepted socket; returns its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = listener.accept()
        listener.close()
        try:
            handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


def spdm_speaker(answer: Callable[[bytes], bytes | None], transport: int = fr.Transport.PCI_DOE):
    """A handler answering each SPDM request with the DOE payload ``answer(request)`` (None: hang up)."""

    def handler(conn: socket.socket) -> None:
        reader = fr.StreamReader(conn)
        while (head := reader.read_exact(12)) is not None:
            _c, _t, size = fr.decode_frame_header(head)
            payload = reader.read_exact(size) or b""
            _doe, body = fr.decode_doe(payload)
            request = fr.strip_doe_padding(body)
            reply = answer(request)
            if reply is None:
                return
            conn.sendall(fr.encode_frame(fr.Command.NORMAL, transport, reply))

    return handler


def vca_then(vendor_answer: bytes) -> Callable[[bytes], bytes | None]:
    def answer(request: bytes) -> bytes | None:
        code = request[1]
        if code == fr.SpdmCode.GET_VERSION:
            return fr.encode_doe(fr.Version().encode())
        if code == fr.SpdmCode.GET_CAPABILITIES:
            return fr.encode_doe(srv.responder_capabilities().encode())
        if code == fr.SpdmCode.NEGOTIATE_ALGORITHMS:
            return fr.encode_doe(fr.Algorithms().encode())
        return vendor_answer

    return answer


def test_a_refused_connection_is_a_transport_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match=f"cannot connect to responder at 127.0.0.1:{port}"):
        EmuClient.connect("127.0.0.1", port, timeout=0.5)


def test_a_server_that_closes_is_a_transport_error():
    port = scripted(lambda conn: None)
    with pytest.raises(TransportError, match=r"closed the connection|failed"):
        EmuClient.connect("127.0.0.1", port, timeout=1)


def test_a_silent_server_times_out_and_the_connection_is_then_unusable():
    hold = threading.Event()

    def silent(conn: socket.socket) -> None:
        hold.wait(5)

    port = scripted(silent)
    client = EmuClient.connect("127.0.0.1", port, timeout=0.2, vca=False)
    started = time.monotonic()
    with pytest.raises(TransportError, match="did not answer in time"):
        client.spdm(fr.get_version())
    assert time.monotonic() - started < 2
    with pytest.raises(TransportError, match=r"unusable after: .*in time"):
        client.send(1, b"x")
    hold.set()


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda req: None, "closed the connection"),
        (lambda req: b"\xff" * 40, "bad frame|bad DOE"),
        (lambda req: fr.encode_doe(fr.Version(entries=(0x1000, 0x1100)).encode()), "does not offer SPDM 1.2"),
        (lambda req: fr.encode_doe(fr.spdm_error(E.BUSY, 0x10)), "GET_VERSION with SPDM ERROR 0x3 \\(BUSY"),
        (lambda req: fr.encode_doe(fr.get_version(), fr.DoeType.DISCOVERY), "bad DOE object.*type 0"),
        (lambda req: fr.encode_doe(fr.get_version()), "bad VCA answer"),  # a request where VERSION belongs
        (lambda req: b"", "no response"),
    ],
)
def test_garbage_during_vca_is_a_transport_error(answer, match):
    port = scripted(spdm_speaker(answer))
    with pytest.raises(TransportError, match=match):
        EmuClient.connect("127.0.0.1", port, timeout=1)


def test_an_answer_for_another_transport_is_a_transport_error():
    port = scripted(spdm_speaker(vca_then(b""), transport=fr.Transport.MCTP))
    with pytest.raises(TransportError, match="transport 1, not PCI_DOE"):
        EmuClient.connect("127.0.0.1", port, timeout=1)


@pytest.mark.parametrize(
    ("vendor_answer", "match"),
    [
        (
            fr.VendorMessage(request=False, protocol_id=0, message=b"k").encode(),
            "with protocol 0 \\(IDE_KM\\)",
        ),
        (fr.VendorMessage(request=True, protocol_id=1, message=b"k").encode(), "garbage"),
        (bytes.fromhex("12 7e 00 00 0300 02 0200 0200 01 00"), "garbage.*vendor ID 0x0002"),
        (
            fr.spdm_error(E.UNSUPPORTED_REQUEST, data=0xFE),
            "SPDM ERROR 0x7 \\(UNSUPPORTED_REQUEST, data 0xfe\\)",
        ),
    ],
)
def test_a_wrong_vendor_answer_is_a_transport_error(vendor_answer, match):
    port = scripted(spdm_speaker(vca_then(fr.encode_doe(vendor_answer))))
    client = EmuClient.connect("127.0.0.1", port, timeout=1)
    with pytest.raises(TransportError, match=match):
        client.send(1, GET_TDISP_VERSION)
    client.close()


def test_remote_responder_over_a_thread_server(served):
    handle, responder = served
    remote = RemoteResponder(handle.host, handle.port, handle.function_ids, timeout=2)
    assert isinstance(remote, VendorResponder)
    assert remote.handle_vendor_message(1, GET_TDISP_VERSION, session_id=None) == TDISP_ERROR
    assert remote.handle_vendor_message(0, b"drop", session_id=None) is None
    with pytest.raises(TransportError, match="UNSPECIFIED"):
        remote.handle_vendor_message(0, b"boom", session_id=4)
    remote.end_session(4)
    assert responder.ended == [2]
    remote.close()
    assert responder.ended == [2, 1]


# --- reset, pipelining
def test_reset_serves_a_fresh_responder_and_drops_every_older_connection():
    """After reset() new connections meet the new responder with session numbering from 1; a connection
    from before is closed and its session ends on the old responder, never reaching the new one."""
    responders = [FakeResponder(), FakeResponder()]
    handle = srv.start_in_thread(lambda: responders.pop(0), secure=False)
    old = cast(FakeResponder, handle.server._responder._inner)
    try:
        before = EmuClient.connect(handle.host, handle.port)
        EmuClient.connect(handle.host, handle.port).close()
        assert before.send(1, b"hi") == b"echo:hi"
        handle.reset()
        new = cast(FakeResponder, handle.server._responder._inner)
        assert new is not old and not responders
        with pytest.raises(TransportError):
            before.send(1, b"late")
        assert old.ended == [2, 1]  # the closed one first, then the one the reset dropped
        after = EmuClient.connect(handle.host, handle.port)
        assert after.send(1, b"fresh") == b"echo:fresh"
        after.close()
        assert new.seen == [(1, b"fresh", 1)] and new.ended == [1]
        assert [m for _p, m, _s in old.seen] == [b"hi"]
    finally:
        handle.stop()


def test_reset_without_a_factory_is_refused():
    server = srv.start_in_thread(FakeResponder, secure=False)
    try:
        bare = srv.ServerHandle(
            host=server.host,
            port=server.port,
            function_ids=server.function_ids,
            thread=server.thread,
            server=server.server,
        )
        with pytest.raises(InvalidArgument, match="factory"):
            bare.reset()
    finally:
        server.stop()


def test_pipelined_vca_and_requests_answer_in_order(served):
    handle, responder = served
    client = EmuClient.connect(handle.host, handle.port, pipelined=True)
    assert client.algorithms is not None and client.version is not None
    answers = client.send_many(1, [b"a", GET_TDISP_VERSION, b"drop", b"boom", b"b"])
    assert answers[0] == b"echo:a" and answers[1] == TDISP_ERROR and answers[4] == b"echo:b"
    assert isinstance(answers[2], NoResponse)
    assert isinstance(answers[3], TransportError) and "ERROR" in str(answers[3])
    assert client.send(1, b"after") == b"echo:after"  # the stream is still in step
    client.close()
    assert [m for _p, m, _s in responder.seen] == [b"a", GET_TDISP_VERSION, b"drop", b"boom", b"b", b"after"]


def test_pipelined_vca_reports_the_first_failure_in_order():
    """A responder without SPDM 1.2: the pipelined VCA still names GET_VERSION's answer as the problem."""
    listener = socket.create_server(("127.0.0.1", 0))

    def old_spdm() -> None:
        conn, _ = listener.accept()
        reader = fr.StreamReader(conn)
        for _ in range(3):
            head = reader.read_exact(fr.FRAME_HEADER.size)
            assert head is not None
            reader.read_exact(fr.decode_frame_header(head)[2])
        version = fr.Version(entries=(0x11 << 8,)).encode()
        err = fr.spdm_error(fr.SpdmErrorCode.VERSION_MISMATCH, fr.SPDM_VERSION_10)
        conn.sendall(
            b"".join(
                fr.encode_frame(fr.Command.NORMAL, fr.Transport.PCI_DOE, fr.encode_doe(m)) for m in (version, err, err)
            )
        )
        conn.close()

    threading.Thread(target=old_spdm, daemon=True).start()
    with pytest.raises(TransportError, match=r"does not offer SPDM 1\.2"):
        EmuClient.connect("127.0.0.1", listener.getsockname()[1], timeout=2, pipelined=True)
    listener.close()


def test_connection_workers_are_reused(served):
    """One connection after another is served by the same pooled worker (no new thread per connection);
    concurrent connections get workers of their own."""
    handle, _responder = served
    for n in range(20):
        with EmuClient.connect(handle.host, handle.port) as client:
            assert client.send(1, b"%d" % n) == b"echo:%d" % n
    assert len(handle.server._workers) == 1
    clients = [EmuClient.connect(handle.host, handle.port) for _ in range(3)]
    assert [c.send(1, b"x") for c in clients] == [b"echo:x"] * 3
    for c in clients:
        c.close()
    assert len(handle.server._workers) == 3
