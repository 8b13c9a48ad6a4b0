"""The reference device as served over the socket.

A socket has no config space, so nobody could set the IDE stream's enable bit; like spdm-emu's
sample responder, the served device enables its stream itself once a K_SET_GO made all six
(direction, sub-stream) keys live.
"""

from __future__ import annotations

from collections.abc import Callable

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.trace import Trace, query
from teeio_conformance.reference_impl.device.device import PROTOCOL_IDE_KM, Device, DeviceConfig

__all__ = ["ServedDevice", "served_device_factory"]


class ServedDevice(Device):
    """The reference device behind the socket: it signs KEY_EXCHANGE with its identity's leaf key, and
    drops IDE_KM that arrives outside a secure session (PCIe 6.x §6.33.3: IDE_KM is carried in secured
    SPDM messages), as it already drops IDE_KM from a session that does not own the keys."""

    @query
    def spdm_sign(self, data: bytes, hash_name: str = "sha384") -> bytes:
        return self.identity.sign(data, hash_name)

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None:
        if protocol_id == PROTOCOL_IDE_KM and session_id is None:
            return None
        answer = super().handle_vendor_message(protocol_id, message, session_id=session_id)
        if protocol_id == PROTOCOL_IDE_KM and message[:1] == bytes([km.ObjectId.K_SET_GO]) and answer is not None:
            self.ide.enable()
        return answer


def served_device_factory(config: DeviceConfig | None = None, cls: type[Device] = ServedDevice) -> Callable[[], Device]:
    def make() -> Device:
        return cls(Trace(enabled=False), config or DeviceConfig())

    return make
