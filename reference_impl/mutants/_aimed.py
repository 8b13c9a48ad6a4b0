"""Mutants that only an aimed machine step reaches: each breaks a rule in a state a drawn sequence of steps
seldom builds, and each came from a broken stack written outside the catalogue that a whole ``ci`` run
let pass before the step was added (see the step's docstring in ``conformance/machines/full_stack.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.errors import NotFound
from teeio_conformance.reference_impl.device.device import Device
from teeio_conformance.reference_impl.device.ide.km_responder import IdeKmResponder
from teeio_conformance.reference_impl.kvm import Kvm, SlotMapping
from teeio_conformance.reference_impl.tsm import IDE_IV, Tsm
from teeio_conformance.reference_impl.vmm import Vmm


class KvmMapsRevokedPrivate(Kvm):
    """At accept, KVM maps every memslot of the function private, also those whose dmabuf the exporter has
    revoked: the slot maps pages the exporter has taken back (the reference refuses with -EINVAL)."""

    def map_private_mmio(self, vm: str, rid: int) -> int:
        self._live_vm(vm)
        slots = [s for s in self._slots.values() if s.vm == vm and s.rid == rid]
        if not slots:
            raise NotFound(f"{vm} has no memslot backed by function {rid:#06x}")
        self._tsm.sept_add(vm, rid)
        for s in slots:
            s.mapping = SlotMapping.PRIVATE
        return len(slots)


class _DropsKSetStop(IdeKmResponder):
    def _go_stop(self, msg: km.KSetGo | km.KSetStop) -> bytes | None:
        answer = super()._go_stop(msg)  # the keys are stopped all the same; only the ack is lost
        return None if isinstance(msg, km.KSetStop) else answer


class DeviceDropsKSetStop(Device):
    """The device's IDE_KM responder acts on K_SET_STOP but never sends the K_GOSTOP_ACK (KSetStop.1-4):
    the TSM cannot tell that the key set was stopped."""

    ide_km_class = _DropsKSetStop


class _ClaimsPorts(IdeKmResponder):
    def _query(self, msg: km.Query) -> bytes | None:
        if msg.port_index > self.max_port_index:
            return None
        resp = km.QueryResp(
            port_index=msg.port_index,
            dev_func_num=self.dev_func_num,
            bus_num=self.bus_num,
            segment=self.segment,
            max_port_index=self.max_port_index + 2,
            ide_registers=self.ide_registers,
        )
        return km.encode(resp)


class DeviceClaimsPorts(Device):
    """QUERY_RESP names a MaxPortIndex two above the ports the device has, and a QUERY of the claimed
    highest port is dropped (validator Query.2)."""

    ide_km_class = _ClaimsPorts


class KvmDestroyNoScrub(Kvm):
    """VM destroy hands the guest's memory back to the host without clearing it: whatever the guest kept in
    its private pages is the host's to read once the VM is gone."""

    def _destroy(self, v: Any) -> None:
        kept = bytes(v.memory)
        super()._destroy(v)
        v.memory[:] = kept


class VmmRoutesToFirstVdevice(Vmm):
    """The VMM looks a GHCI call up by VM only: every request of a guest goes to the VM's first assigned
    vdevice, whatever virtual ID the guest named (with one device per VM nothing shows)."""

    def _vdev(self, vm: str, virt_id: int) -> int:
        for (owner, _), a in sorted(self._assignments.items()):
            if owner == vm:
                return a.vdevice
        raise NotFound(f"{vm} has no device at virtual ID {virt_id:#x}")


class TsmRefreshNeverGoes(Tsm):
    """A key refresh programs fresh keys into the other key set and returns, but never sends K_SET_GO: the
    stream stays on the old keys while the host believes them replaced."""

    def _program_stream(self, dev: Any, sid: int, key_set: km.KeySet) -> None:
        if key_set is km.KeySet.K0:  # the first programming (connect) is left as it is
            super()._program_stream(dev, sid, key_set)
            return
        stream = dev.config.default_stream_id
        for direction in km.Direction:
            for sub in km.SubStream:
                slot = km.KeySubStream(key_set=key_set, direction=direction, sub_stream=sub)
                msg = km.KeyProg(
                    stream_id=stream, key_sub_stream=slot.to_byte(), port_index=0, key=self._fresh_key(), iv=IDE_IV
                )
                self._ide_km(dev, sid, msg)


def mutants(m: Callable[..., Any]) -> list[Any]:
    return [
        m(
            "kvm-maps-revoked-private",
            "MMIO-01",
            "full_stack",
            "sev-tio",
            KvmMapsRevokedPrivate.__doc__,
            overrides={"kvm_factory": KvmMapsRevokedPrivate},
        ),
        m(
            "vmm-routes-to-first-vdevice",
            "FLOW-20",
            "full_stack",
            "tdx",
            VmmRoutesToFirstVdevice.__doc__,
            overrides={"vmm_factory": VmmRoutesToFirstVdevice},
        ),
        m(
            "tsm-refresh-never-goes",
            "IDE-12",
            "full_stack",
            "tdx",
            TsmRefreshNeverGoes.__doc__,
            overrides={"tsm_factory": TsmRefreshNeverGoes},
        ),
        m(
            "kvm-destroy-no-scrub",
            "CONF-01",
            "full_stack",
            "cca",
            KvmDestroyNoScrub.__doc__,
            overrides={"kvm_factory": KvmDestroyNoScrub},
        ),
        m(
            "device-drops-k-set-stop",
            "IDE-04",
            "device",
            "tdx",
            DeviceDropsKSetStop.__doc__,
            device=DeviceDropsKSetStop,
        ),
        m("device-claims-ports", "IDE-05", "device", "cca", DeviceClaimsPorts.__doc__, device=DeviceClaimsPorts),
    ]
