"""Aimed full-stack steps that fill the reach matrix (issue 14, ``conformance/reach.py``).

The matrix files every TDISP request, DMA, bind, unbind, FLR, host mmap and revoke under the state of its
target before the step: TDI state, and where it matters whether the IDE stream is Secure, the VM running, the
TDI bound. Drawn steps left cells empty that are reachable -- optional TDISP requests in most states, T=1
DMA on a stream that is not Secure, DMA from a locked TDI whose VM KVM has already destroyed (the vIOMMU still
holds it), an FLR of a bound function. These two rules take one function through those states on purpose.
Mixed into :class:`FullStack` (which provides the helpers they call).
"""

from __future__ import annotations

import inspect
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, rule

from teeio_conformance.conformance.machines.recording import note, recorded
from teeio_conformance.contract.tdisp import codec as td

__all__ = ["ReachSteps", "every_request"]

PRIVATE_GPA = 0x800  # as the full-stack machine's
SWEEP_PAYLOAD = b"reach sweep DMA"


def every_request(rid: int, nonce: bytes) -> list[Any]:
    """One valid request of every TDISP request type for ``rid`` (``nonce`` for START)."""
    iid = td.InterfaceId(function_id=rid)
    return [
        td.GetTdispVersion(interface_id=iid),
        td.GetTdispCapabilities(interface_id=iid, tsm_caps=0),
        td.LockInterface(
            interface_id=iid, flags=0, default_stream_id=0, mmio_reporting_offset=0, bind_p2p_address_mask=0
        ),
        td.GetDeviceInterfaceReport(interface_id=iid, offset=0, length=0x40),
        td.GetDeviceInterfaceState(interface_id=iid),
        td.StartInterface(interface_id=iid, start_interface_nonce=nonce),
        td.StopInterface(interface_id=iid),
        td.BindP2PStream(interface_id=iid, p2p_stream_id=1),
        td.UnbindP2PStream(interface_id=iid, p2p_stream_id=1),
        td.SetMmioAttribute(
            interface_id=iid, mmio_range=td.MmioRange(first_page=0, number_of_pages=1, attributes=0, range_id=0)
        ),
        td.VdmRequest(interface_id=iid, registry_id=0, vendor_id=b"\x01\x00", payload=b"reach"),
    ]


class ReachSteps:
    """Rules that visit the reach matrix's harder cells; mixed into :class:`FullStack`."""

    def _sweep(self: Any, rid: int, label: str, heal: bool = True) -> None:
        """Every TDISP request type but STOP to ``rid``'s TDI, as one step, from a second SPDM session (opened and ended
        around it). A second session may change nothing: its LOCK has no keys, its START, with the LOCK's own
        nonce, is not the locking session's (TDISP-15)."""
        sid = self._second_session(heal)
        if sid is None:
            return
        # no STOP: from a second session a device that took ownership with an earlier request (a START it should
        # have refused) would carry it out and hide that START's finding; the TSM's own unbinds STOP in every state
        msgs = [
            m for m in every_request(rid, self._lock_nonce(rid) or b"\x5a" * 32) if not isinstance(m, td.StopInterface)
        ]

        def go() -> None:
            for msg in msgs:
                self.device.handle_vendor_message(1, td.encode(msg), session_id=sid)

        self._do(f"rogue_tdisp_sweep_{label}", go)
        self._end(sid)

    def _flr(self: Any, s: Any) -> None:
        fd = self._fd(s.rid)
        if fd is not None:
            self._do("vfio_reset", self.stack.vfio.reset, fd, s.rid)

    @rule(s=Bundle("slots"))
    @recorded
    def rogue_tsm_sweep(self: Any, s: Any) -> None:
        """Every TDISP request type, from a second session, to ``s``'s TDI in each state the guest takes it
        through -- CONFIG_UNLOCKED, CONFIG_LOCKED (bound), RUN (started), ERROR (a config write) -- each locked
        state followed by an FLR (VFIO reset) of the bound function, after which the guest lets go and binds
        again. In RUN the host also binds the TDI to its own VM (a no-op) and to an idle VM (-EBUSY).

        All states in every draw: with the FLR's state chosen per draw, a whole tdx ``ci`` search missed FLRs
        of bound functions in CONFIG_LOCKED and RUN."""
        if not self._raw_offered():
            return
        guest = self.stack.guests.get(s.vm)
        if guest is None or self._vdev(s) is None:
            return
        self._guest_ready(s.vm)
        self._fresh_bind(s, guest, ())
        self._sweep(s.rid, "unlocked")
        for label, steps in (
            ("locked", ("guest_bind",)),
            ("run", ("guest_bind", "guest_attest", "guest_accept", "guest_start")),
            ("error", ("guest_bind",)),
        ):
            self._fresh_bind(s, guest, steps)
            if label == "error":
                self._do("config_write_command", self.device.config_write, s.rid, "command", 0x4)
            self._sweep(s.rid, label)
            if label == "run":
                self._do("host_tsm_bind", self.stack.tsm.bind, s.rid, s.vm)
                idle = self._do("create_vm", self.stack.create_vm)
                if idle is not None:
                    self._do("host_tsm_bind", self.stack.tsm.bind, s.rid, str(idle))
            self._flr(s)

    def _fresh_bind(self: Any, s: Any, guest: Any, steps: tuple[str, ...]) -> None:
        """The guest lets go of ``s`` if it holds it (in sync again after a reset), the link is healed, then it
        takes ``steps`` (guest_bind, guest_attest, ...) in order."""
        v = self._vdev(s)
        if v is not None and v.bound:
            self._do("guest_unbind", guest.disconnect, s.virt_id)
        if steps:
            self._heal_link()
        calls = {"guest_bind": guest.connect, "guest_attest": guest.attest, "guest_accept": guest.accept}
        calls["guest_start"] = guest.start
        for name in steps:
            self._do(name, calls[name], s.virt_id)

    @rule(fn=st.integers(0, 3))
    @recorded
    def reach_dma(self: Any, fn: int) -> None:
        """T=0 and T=1 DMA from one function through the states drawn steps did not reach: on a stream an IDE
        failure took down, after its VM stopped, and from a locked or RUN TDI whose VM KVM destroyed while the
        vIOMMU still held it (the destroy is deferred until the vIOMMU goes) -- in RUN, after its session
        ended (ERROR, stream down) and after the link came back. Each DMA must be refused or kept out of the
        VM's private memory by the DMA and IDE rules. On the stream that is down, every TDISP request type from a
        second session too (a LOCK or START the TSM would never send there)."""
        bring_up = inspect.unwrap(type(self).bring_up)
        slot: Any = None

        def dma(label: str) -> None:
            rid = slot.rid  # the function bring_up gave (a free one, else the drawn one)
            for t_bit in (False, True):
                self._do(
                    f"device_dma_t{int(t_bit)}_{label}",
                    self.device.issue_dma,
                    rid,
                    PRIVATE_GPA,
                    SWEEP_PAYLOAD,
                    t_bit=t_bit,
                )

        slot = bring_up(self, fn=fn, stage="running")
        if getattr(slot, "vm", None) is None:
            return
        self._do("ide_key_failure", self.device.ide_failure, "reach: the stream is lost")
        dma("link_down")
        self._sweep(slot.rid, "link_down", heal=False)  # LOCK and START while the stream is not Secure
        self._do("vm_stop", self.stack.vmm.stop_vm, slot.vm)
        dma("link_down_vm_stopped")
        for stage in ("bound", "started"):
            slot = bring_up(self, fn=fn, stage=stage)
            if getattr(slot, "vm", None) is None:
                return
            note(f"DMA from a {stage} TDI of a VM KVM destroyed (deferred)")
            self._do("kvm_destroy_vm", self.stack.kvm.destroy_vm, slot.vm)
            dma(f"{stage}_vm_destroyed")
            if stage == "started":
                dev = next((d for d in self.run._snap.devices if d.name == self.device_name), None)
                if dev is not None and dev.sessions:
                    self._do("spdm_session_end", self.device.spdm_end, dev.sessions[0])
                dma("error_vm_destroyed")
                self._sweep(slot.rid, "error_link_down", heal=False)
                self._heal_link()
                dma("error_vm_destroyed_link_back")
            self._destroy_viommu(slot.vm, True)
