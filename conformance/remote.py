"""The device machine against a responder in another process, over the spdm-emu socket.

``pytest --device-spawn CMD`` (or ``teeio-conformance run --device-spawn CMD``) starts the responder
for every example, fresh, and reads where it listens from its JSON ready line;
``--device-at HOST:PORT`` points the device machine at one that is already running.
``REMOTE_RULES`` are the rules a socket can serve. What only a local device offers -- config space,
resets, TLPs, IDE stream state -- is refused as Unsupported and those rules stay NOT EXERCISED
instead of failing.
"""

from __future__ import annotations

import atexit
import os
import shlex
import subprocess
import threading
from collections.abc import Mapping
from typing import Any

import attrs
from hypothesis.stateful import consumes, rule

from teeio_conformance.conformance.machines.device import DeviceMachine, DeviceMachineConfig
from teeio_conformance.conformance.machines.recording import recorded
from teeio_conformance.contract.errors import InvalidArgument
from teeio_conformance.reference_impl.transport.client import KeptMailbox, RemoteDevice, spawn

__all__ = [
    "REFERENCE_FUNCTION_IDS",
    "REMOTE_RULES",
    "DeviceTarget",
    "RemoteDeviceMachine",
    "config_for",
    "parse_address",
    "parse_function_ids",
    "remote_device_factory",
    "spawned_device_factory",
    "spawning_device_factory",
]

REFERENCE_FUNCTION_IDS = (0x3A00, 0x3A01)  # the PF and VF that ``teeio-conformance serve-device`` serves

# fmt: off
REMOTE_RULES = frozenset({"TDISP-01", "TDISP-02", "TDISP-03", "TDISP-05", "TDISP-06", "TDISP-07", "TDISP-11",
                          "TDISP-12", "TDISP-13", "TDISP-14", "TDISP-15", "TDISP-16", "IDE-02", "IDE-04", "IDE-05",
                          "ERR-01", "ERR-02",
                          # the session rules, now that sessions are real SPDM sessions on the wire: IDE_KM from
                          # one session only, a session's end moving its locked TDIs to ERROR (a tracked change),
                          # and ERROR staying until STOP
                          "IDE-01", "TDISP-08", "TDISP-09",
                          # K_SET_GO of a slot never programmed (issue 14): IDE_KM bytes only
                          "IDE-11"})
# fmt: on


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 literal), or :class:`InvalidArgument` saying what is wrong."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"a device address is HOST:PORT with a port in 1..65535, got {text!r}")
    return host, int(port)


def parse_function_ids(text: str) -> tuple[int, ...]:
    """Comma-separated INTERFACE_ID FUNCTION_IDs (``0x3a00,0x3a01`` or decimal), the PF's first."""
    out = []
    for part in text.split(","):
        try:
            value = int(part.strip(), 0)
        except ValueError:
            raise InvalidArgument(f"a function ID is a number like 0x3a00, got {part.strip()!r} in {text!r}") from None
        if not 0 <= value < 1 << 32:
            raise InvalidArgument(f"a FUNCTION_ID is a 32-bit field, got {value:#x}")
        out.append(value)
    if len(set(out)) != len(out):
        raise InvalidArgument(f"function IDs repeat in {text!r}")
    return tuple(out)


def remote_device_factory(
    host: str,
    port: int,
    function_ids: tuple[int, ...],
    *,
    secure: bool = True,
    trusted_root: bytes | None = None,
    pipelined: bool = False,
) -> Any:
    """Every example talks to the same responder. With secure sessions each example is isolated by protocol
    at its end (STOP of every TDI, END_SESSION of every session: :meth:`RemoteDevice.close`); a responder
    without sessions must start each example in a fresh state by itself. ``pipelined``: the responder
    answers a connection's frames in order (``serve-device`` says so in its ready line), so the snapshot's
    state queries may go out together."""

    kept = KeptMailbox()  # one connection for the whole run: spdm-emu serves only one

    def make(trace: Any, profile: str) -> RemoteDevice:
        dev = RemoteDevice(
            trace,
            host,
            port,
            function_ids,
            secure=secure,
            trusted_root=trusted_root,
            isolate=secure,
            keep=kept,
            connect_now=True,  # a closed port is SUT-BUILD, not a TDISP rule broken at the first message
            pipelined=pipelined,
        )
        return dev

    return make


def spawned_device_factory(responder_factory: Any, function_ids: tuple[int, ...]) -> Any:
    """One in-thread server per process (per xdist worker), reset to a fresh responder before every example.

    A reset (:meth:`~reference_impl.transport.server.EmuServer.reset`) rather than a fresh responder per
    connection: one example holds several sessions -- several connections -- on *one* device, so a
    responder per connection would split the device. The reset swaps in a power-on responder and drops
    every connection an earlier example left open; each connection stays bound to the responder it was
    accepted under, so nothing (not even a late session end) reaches the next example's device. Being
    in-process, it needs no reset command on the wire, which spdm-emu does not have.

    The devices it makes use our own server's guarantees (``own_server``): pipelined requests, and a
    close that need not wait for session ends, since the next example's reset comes first.
    """
    from teeio_conformance.reference_impl.transport.server import ServerHandle, start_in_thread

    lock = threading.Lock()
    held: list[tuple[int, ServerHandle]] = []  # (pid, server): at most one, started on first use

    def server() -> ServerHandle:
        with lock:
            if held and held[0][0] == os.getpid() and held[0][1].alive:
                handle = held[0][1]
                handle.reset()
                return handle
            handle = start_in_thread(responder_factory)  # a new server's responder is already fresh
            atexit.register(handle.stop)
            held[:] = [(os.getpid(), handle)]
            return handle

    def make(trace: Any, profile: str) -> RemoteDevice:
        handle = server()
        return RemoteDevice(trace, handle.host, handle.port, function_ids, own_server=True)

    return make


class _SpawnedDevice(RemoteDevice):
    """A remote device whose responder process lives for one example: closing it ends the process."""

    def __init__(self, trace: Any, proc: subprocess.Popen[bytes], info: dict[str, Any], secure: bool = True) -> None:
        sessions = info.get("sessions")  # a ready line may say whether the responder speaks secure sessions
        super().__init__(
            trace,
            info["host"],
            int(info["port"]),
            tuple(info.get("function_ids") or ()),
            secure=sessions if isinstance(sessions, bool) else secure,
        )
        self._proc = proc

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._proc.kill()
            self._proc.wait()


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError as exc:  # an unclosed quote, say
        raise InvalidArgument(f"--device-spawn {command!r}: {exc}") from None


def spawning_device_factory(command: str | list[str], *, ready_timeout: float = 10.0, secure: bool = True) -> Any:
    """Start ``command`` for every example -- a power-on responder each time, so a failing sequence
    replays and shrinks from the same start -- and drive it at the host and port of its ready line.

    The command prints one JSON line (``host``, ``port``, ``function_ids``), as ``teeio-conformance
    serve-device --port 0`` does; a responder that does not is a :class:`TransportError` naming why,
    with the end of its stderr. The process is killed when the example ends."""
    argv = _split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise InvalidArgument("--device-spawn needs a command")

    def make(trace: Any, profile: str) -> RemoteDevice:
        proc, info = spawn(argv, timeout=ready_timeout)
        if not info.get("function_ids"):
            proc.kill()
            proc.wait()
            raise InvalidArgument(f"{argv[0]}: its ready line names no function_ids to address")
        return _SpawnedDevice(trace, proc, info, secure)

    return make


@attrs.frozen
class DeviceTarget:
    """What the device machine drives: the in-process reference device (``spec`` None), a responder a
    command starts for every example (``{"spawn": CMD}``), or one listening already (``{"at":
    "HOST:PORT", "functions": [ID, ...]}``); either with ``"plaintext": true`` for a responder without
    SPDM secure sessions (TDISP and IDE_KM then go in the clear, a connection per session). The spec is
    what a failure record keeps, so a replay drives the same responder the same way."""

    spec: Mapping[str, Any] | None = None

    @property
    def remote(self) -> bool:
        return self.spec is not None

    @property
    def name(self) -> str:
        if self.spec is None:
            return "reference device (in process)"
        how = " (plaintext, no secure sessions)" if self.spec.get("plaintext") else ""
        if "spawn" in self.spec:
            return f"responder spawned per example by {self.spec['spawn']!r}{how}"
        return f"responder at {self.spec['at']}{how}"

    def factory(self) -> Any:
        """A device factory ``(trace, profile) -> device``; None for the in-process reference device."""
        if self.spec is None:
            return None
        secure = not self.spec.get("plaintext", False)
        if "spawn" in self.spec:
            return spawning_device_factory(str(self.spec["spawn"]), secure=secure)
        host, port = parse_address(str(self.spec["at"]))
        return remote_device_factory(host, port, tuple(self.spec["functions"]), secure=secure)

    @classmethod
    def from_options(
        cls, spawn: str | None, at: str | None, functions: str | None, *, plaintext: bool = False
    ) -> DeviceTarget:
        """From ``--device-spawn`` / ``--device-at`` / ``--device-functions`` / ``--device-plaintext``;
        :class:`InvalidArgument` if they do not fit together."""
        if plaintext and spawn is None and at is None:
            raise InvalidArgument("--device-plaintext goes with --device-spawn or --device-at")
        extra = {"plaintext": True} if plaintext else {}
        if spawn is not None and at is not None:
            raise InvalidArgument("--device-spawn and --device-at each name the device: give one")
        if functions is not None and at is None:
            raise InvalidArgument("--device-functions goes with --device-at (a spawned responder names its own)")
        if spawn is not None:
            if not _split(spawn):
                raise InvalidArgument("--device-spawn needs a command")
            return cls({"spawn": spawn, **extra})
        if at is not None:
            host, port = parse_address(at)
            ids = parse_function_ids(functions) if functions is not None else REFERENCE_FUNCTION_IDS
            return cls({"at": f"{host}:{port}", "functions": list(ids), **extra})
        return cls()

    @classmethod
    def from_spec(cls, spec: Any) -> DeviceTarget:
        """From a failure record's ``device`` field (checked: a record may be corrupt or foreign)."""
        if spec is None:
            return cls()
        plaintext = isinstance(spec, dict) and spec.get("plaintext") is True
        if isinstance(spec, dict) and spec.get("plaintext", True) is not True:
            raise InvalidArgument(f"field 'device': 'plaintext' must be true when given, got {spec['plaintext']!r}")
        keys = set(spec) - {"plaintext"} if isinstance(spec, dict) else set()
        if isinstance(spec, dict) and keys == {"spawn"} and isinstance(spec["spawn"], str):
            return cls.from_options(spec["spawn"], None, None, plaintext=plaintext)
        if (
            isinstance(spec, dict)
            and keys == {"at", "functions"}
            and isinstance(spec["at"], str)
            and isinstance(spec["functions"], list)
            and spec["functions"]
            and all(isinstance(f, int) and not isinstance(f, bool) for f in spec["functions"])
        ):
            return cls.from_options(None, spec["at"], ",".join(str(f) for f in spec["functions"]), plaintext=plaintext)
        raise InvalidArgument(
            "field 'device' must be {'spawn': CMD} or {'at': 'HOST:PORT', 'functions': [ID, ...]}, "
            f"got {str(spec)[:80]}"
        )


class RemoteDeviceMachine(DeviceMachine):
    """The device machine, with sessions that end for good (a closed connection cannot be reused)."""

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self.device.close()

    @rule(sid=consumes(DeviceMachine.sessions))
    @recorded
    def end_session(self, sid: int) -> None:
        self._end(sid)

    @rule(sid=DeviceMachine.sessions)
    @recorded
    def key_update(self, sid: int) -> None:
        """KEY_UPDATE of all keys inside a live session (DSP0274 1.2 §10.17); the machine's later messages
        over the session check that TDISP and IDE_KM go on working under the new keys."""
        if getattr(self.device, "secure", False):
            self._do("spdm_key_update", self.device.key_update, sid)

    @rule(
        fn=DeviceMachine.tlp.hypothesis_stateful_rule.arguments_strategies["fn"],  # type: ignore[attr-defined]
        t_bit=DeviceMachine.tlp.hypothesis_stateful_rule.arguments_strategies["t_bit"],  # type: ignore[attr-defined]
    )
    @recorded
    def tlp(self, fn: int, t_bit: bool) -> None:
        self._do("mmio_read", self.device.receive, None)  # Unsupported over a socket: NOT EXERCISED


def config_for(device_factory: Any, profile: str = "tdx", timeout: float = 5.0) -> DeviceMachineConfig:
    return attrs.evolve(
        DeviceMachineConfig(profile=profile, timeout=timeout), device_factory=device_factory, only=REMOTE_RULES
    )
