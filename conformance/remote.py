"""The device machine against a responder in another process, over the spdm-emu socket.

``pytest --device-at HOST:PORT`` (or ``teeio-conformance run --device-at``) points the device machine at
an external responder; ``REMOTE_RULES`` are the rules a socket can serve. What only a local device
offers -- config space, resets, TLPs, IDE stream state -- is refused as Unsupported and those rules
stay NOT EXERCISED instead of failing.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

import attrs
from hypothesis.stateful import consumes, rule

from conformance.machines.device import DeviceMachine, DeviceMachineConfig
from conformance.machines.recording import recorded
from reference_impl.transport.client import RemoteDevice

__all__ = ["REMOTE_RULES", "RemoteDeviceMachine", "config_for", "remote_device_factory", "spawned_device_factory"]

# fmt: off
REMOTE_RULES = frozenset({"TDISP-01", "TDISP-02", "TDISP-03", "TDISP-05", "TDISP-06", "TDISP-07", "TDISP-11",
                          "TDISP-12", "TDISP-13", "TDISP-14", "TDISP-15", "TDISP-16", "IDE-02", "IDE-04", "IDE-05",
                          "ERR-01", "ERR-02"})
# fmt: on


def remote_device_factory(host: str, port: int, function_ids: tuple[int, ...]) -> Any:
    """Every example talks to the same responder: it must start each example in a fresh state."""

    def make(trace: Any, profile: str) -> RemoteDevice:
        return RemoteDevice(trace, host, port, function_ids)

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
    from reference_impl.transport.server import ServerHandle, start_in_thread

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


class RemoteDeviceMachine(DeviceMachine):
    """The device machine, with sessions that end for good (a closed connection cannot be reused)."""

    def teardown(self) -> None:
        super().teardown()
        self.device.close()

    @rule(sid=consumes(DeviceMachine.sessions))
    @recorded
    def end_session(self, sid: int) -> None:
        self._do("spdm_end", self.device.spdm_end, sid)

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
