"""A device-only adapter: your TDISP / IDE_KM device is the system under test, the suite's device machine plays
the TSM and the host (docs/sut-contract.md, "One layer as the SUT").

The adapter is the actor named ``device``: it passes each request of the suite to your device and the answer
back, and turns what the device cannot do from here into a typed refusal (``Unsupported``), which the rules read
as NOT EXERCISED rather than as a failure. Behind it sits whatever runs your device's logic -- firmware under an
emulator, a driver's test hook, a ctypes binding to the responder library. Here it is the reference device, from
the composition entry point, on a trace of its own so that only the adapter's crossings are judged. The adapter
imports the contract and the composition entry point only.

Run it under the suite with the device machine's factory::

    teeio-conformance explore --machine device --sut device_adapter:make_device --depth 3

``NONCE_CACHE = True`` plants a bug in the adapter's layer -- a shim that caches the first LOCK_INTERFACE
response and replays its START nonce -- which the suite catches by TDISP-06 (tests/unit/test_adapters.py).
"""

from __future__ import annotations

from typing import Any

import attrs

from teeio_conformance.contract.errors import StackError
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.tiers import Offers
from teeio_conformance.contract.trace import Actor, Trace, operation, query
from teeio_conformance.reference_impl.compose import stand_in_device

PROTOCOL_TDISP = 1


class ExampleDevice(Actor):
    actor_name = "device"
    NONCE_CACHE = False  # the planted bug (see the module doc)
    offers = Offers(snapshots={"devices"})
    """A device shows its own state and nothing of the host's: the rules that compare other actors' snapshots (a
    refused call changing nothing anywhere, ERR-01; the root port's stream, IDE-03) are NOT APPLICABLE to it; the
    TDISP rules apply."""

    def __init__(self, trace: Trace, profile: str, firmware: Any = None) -> None:
        super().__init__(trace)
        self._fw = firmware if firmware is not None else stand_in_device(Trace(enabled=False), profile)
        self.name: str = self._fw.name
        self._first_nonce: bytes | None = None

    # -- what the suite reads
    @query
    def rids(self) -> tuple[int, ...]:
        return tuple(self._fw.rids())

    @query
    def bar_range(self, rid: int) -> tuple[int, int]:
        base, size = self._fw.bar_range(rid)
        return int(base), int(size)

    @query
    def snapshot(self) -> Any:
        return self._fw.snapshot()

    # -- what the suite sends
    @operation()
    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        answer: bytes | None = self._fw.handle_vendor_message(protocol_id, message, session_id=session_id)
        if self.NONCE_CACHE and protocol_id == PROTOCOL_TDISP and answer is not None:
            answer = self._replay_nonce(answer)
        return answer

    def _replay_nonce(self, answer: bytes) -> bytes:
        try:
            resp = td.decode_response(answer)
        except StackError:
            return answer
        if not isinstance(resp, td.LockInterfaceResponse):
            return answer
        if self._first_nonce is None:
            self._first_nonce = resp.start_interface_nonce
            return answer
        return td.encode(attrs.evolve(resp, start_interface_nonce=self._first_nonce))

    @operation()
    def spdm_connect(self) -> int:
        return int(self._fw.spdm_connect())

    @operation()
    def spdm_end(self, session_id: int) -> None:
        self._fw.spdm_end(session_id)

    @operation()
    def flr(self, rid: int) -> None:
        self._fw.flr(rid)

    @operation()
    def config_write(self, rid: int, register: str, value: int) -> None:
        self._fw.config_write(rid, register, value)

    @operation()
    def poison(self, rid: int) -> None:
        self._fw.poison(rid)

    @operation()
    def ide_failure(self, reason: str) -> None:
        self._fw.ide_failure(reason)

    @operation()
    def ide_enable(self, enable: bool) -> str:
        return str(self._fw.ide_enable(enable))

    @operation()
    def receive(self, packet: Any) -> bytes:
        return bytes(self._fw.receive(packet))


class NonceCachingDevice(ExampleDevice):
    NONCE_CACHE = True


def make_device(trace: Trace, profile: str) -> ExampleDevice:
    """The device machine's factory: ``--sut device_adapter:make_device``."""
    return ExampleDevice(trace, profile)


def make_buggy_device(trace: Trace, profile: str) -> ExampleDevice:
    """The same adapter with the planted bug (TDISP-06)."""
    return NonceCachingDevice(trace, profile)
