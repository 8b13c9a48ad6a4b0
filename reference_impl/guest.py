"""The guest kernel and the guest TSM: enumerate, bind, attest, accept, start, use, unbind.

The guest trusts only what it can verify (rules-seed C.56): the device's certificate chain must end
in the root it was provisioned with, the report must be signed over *its own fresh nonce*, and the
report's MMIO ranges must be exactly where its vBAR is (the TSM reports them in guest addresses).
Only then does it accept MMIO and DMA and start the TDI (TDX order: accept before START,
TDXC-ARCH §3.4.4). Every host interaction is a GHCI call into the VMM, which the trace shows.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from teeio_conformance.contract.errors import AttestationRejected, InvalidState, NotFound
from teeio_conformance.contract.profiles import Profile, StartSender
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.contract.trace import Actor, Trace, operation, query
from teeio_conformance.reference_impl.device.identity import EvidenceError, verify_evidence
from teeio_conformance.reference_impl.iommufd import GuestRequest

__all__ = ["Guest", "GuestSnapshot", "GuestTsm", "VdevView"]

PAGE = 4096


@attrs.frozen
class VdevView:
    virt_id: int
    bar_gpa: int
    bar_size: int
    bound: bool
    attested: bool
    accepted: bool
    running: bool


@attrs.frozen
class GuestSnapshot:
    vm: str
    vdevs: tuple[VdevView, ...]
    private_reads: tuple[bytes, ...]  # what the guest read from private MMIO (guest-only)


@attrs.define
class _Vdev:
    virt_id: int
    bar_gpa: int
    bar_size: int
    bound: bool = False
    attested: bool = False
    accepted: bool = False
    running: bool = False
    report: bytes | None = None


class GuestTsm(Actor):
    """The guest's TSM driver: turns guest verbs into GHCI calls and verifies what comes back."""

    actor_name = "guest_tsm"

    def __init__(
        self,
        trace: Trace,
        vm: str,
        profile: Profile,
        trusted_root: bytes,
        *,
        seed: int = 5,
        also_trusted: tuple[bytes, ...] = (),
    ) -> None:
        super().__init__(trace)
        self.vm = vm
        self.profile = profile
        self._root = trusted_root
        self._also_trusted = also_trusted  # further vendors' roots (a stack of several devices)
        self._rng = random.Random(f"guest-tsm/{vm}/{seed}")  # own seed domain: nonces never equal secrets
        self._vmm: Any = None

    def _wire(self, vmm: Any) -> None:
        self._vmm = vmm

    @operation(step="12")
    def bind(self, virt_id: int) -> None:
        self._vmm.ghci_bind(self.vm, virt_id)

    @operation(step="20")
    def attest(self, virt_id: int, bar_gpa: int, bar_size: int) -> bytes:
        """Ask for a report signed over a fresh nonce; verify chain, signature, freshness, ranges."""
        nonce = self._rng.randbytes(32)
        ev = self._vmm.ghci_guest_request(self.vm, virt_id, GuestRequest(kind="report", nonce=nonce))
        failure: EvidenceError | None = None
        for root in (self._root, *self._also_trusted):
            try:
                verify_evidence(ev.signed, trusted_root=root, chain=ev.chain, expected_nonce=nonce)
            except EvidenceError as exc:
                failure = failure or exc
                continue
            failure = None
            break
        if failure is not None:
            raise AttestationRejected(f"attestation of {virt_id:#x} failed: {failure}") from failure
        report = td.InterfaceReport.decode(ev.signed.report)
        private = [r for r in report.mmio_ranges if not r.attributes & td.RangeAttr.IS_NON_TEE_MEM]
        for r in report.mmio_ranges:
            end = r.first_page + r.number_of_pages * PAGE
            if r.first_page < bar_gpa or end > bar_gpa + bar_size:
                raise AttestationRejected(
                    f"report range {r.first_page:#x}..{end:#x} is not inside the vBAR at "
                    f"{bar_gpa:#x} (+{bar_size:#x}): refusing to accept"
                )
        if not private:
            raise AttestationRejected("report lists no TEE memory range")
        return bytes(ev.signed.report)

    @operation(step="25")
    def accept(self, virt_id: int) -> None:
        self._vmm.ghci_guest_request(self.vm, virt_id, GuestRequest(kind="accept_mmio"))
        self._vmm.ghci_guest_request(self.vm, virt_id, GuestRequest(kind="accept_dma"))

    @operation(step="31")
    def start(self, virt_id: int) -> None:
        if self.profile.start_sender is StartSender.AT_ATTEST:
            state = self._vmm.ghci_guest_request(self.vm, virt_id, GuestRequest(kind="state"))
            if state is not td.TdiState.RUN:
                raise InvalidState(f"TDI {virt_id:#x} is {state.name} after attest; expected RUN")
            return
        self._vmm.ghci_guest_request(self.vm, virt_id, GuestRequest(kind="start"))

    @operation(step="36")
    def unbind(self, virt_id: int) -> None:
        self._vmm.ghci_unbind(self.vm, virt_id)


class Guest(Actor):
    """The guest kernel: sees vPCI functions from boot in T=0 mode, drives the guest TSM."""

    actor_name = "guest"

    def __init__(self, trace: Trace, vm: str, guest_tsm: GuestTsm) -> None:
        super().__init__(trace)
        self.vm = vm
        self._tsm = guest_tsm
        self._vdevs: dict[int, _Vdev] = {}
        self._private_reads: list[bytes] = []
        self._kvm: Any = None

    def _wire(self, kvm: Any) -> None:
        self._kvm = kvm

    def _v(self, virt_id: int) -> _Vdev:
        v = self._vdevs.get(virt_id)
        if v is None:
            raise NotFound(f"{self.vm} has no vPCI function {virt_id:#x}")
        return v

    @operation()
    def plug(self, virt_id: int, bar_gpa: int, bar_size: int) -> None:
        """The VMM shows a vPCI function (before run: visible from boot, T=0)."""
        self._vdevs[virt_id] = _Vdev(virt_id=virt_id, bar_gpa=bar_gpa, bar_size=bar_size)

    @operation(step="11")
    def enumerate(self, virt_id: int) -> bytes:
        """Probe the shared device: read its register page with T=0."""
        v = self._v(virt_id)
        data: bytes = self._kvm.guest_mmio_read(self.vm, v.bar_gpa, 4)
        return data

    @operation(step="50")
    def use_shared(self, virt_id: int) -> bytes:
        """After unbind the function is a workable shared device again (step 50): a T=0 access to its
        register page, which works once VFIO recovered the dmabuf (49). Refused while it is bound."""
        v = self._v(virt_id)
        if v.bound:
            raise InvalidState(f"{virt_id:#x} is bound: unbind it before using it as a shared device")
        data: bytes = self._kvm.guest_mmio_read(self.vm, v.bar_gpa, 4)
        return data

    @operation(step="12")
    def connect(self, virt_id: int) -> None:
        v = self._v(virt_id)
        self._tsm.bind(virt_id)
        v.bound = True

    @operation(step="20")
    def attest(self, virt_id: int) -> None:
        v = self._v(virt_id)
        if not v.bound:
            raise InvalidState(f"{virt_id:#x} is not bound")
        v.report = self._tsm.attest(virt_id, v.bar_gpa, v.bar_size)
        v.attested = True

    @operation(step="25")
    def accept(self, virt_id: int) -> None:
        v = self._v(virt_id)
        if not v.attested:
            raise InvalidState(f"{virt_id:#x} is not attested: accept only what was verified")
        self._tsm.accept(virt_id)
        v.accepted = True

    @operation(step="31")
    def start(self, virt_id: int) -> None:
        v = self._v(virt_id)
        if not v.accepted:
            raise InvalidState(f"{virt_id:#x} is not accepted")
        self._tsm.start(virt_id)
        v.running = True

    @operation(step="35")
    def read_private_mmio(self, virt_id: int, offset: int = PAGE, length: int = 32) -> bytes:
        v = self._v(virt_id)
        data: bytes = self._kvm.guest_mmio_read(self.vm, v.bar_gpa + offset, length)
        self._private_reads.append(data)
        return data

    @operation(step="36")
    def disconnect(self, virt_id: int) -> None:
        v = self._v(virt_id)
        self._tsm.unbind(virt_id)
        v.bound = v.attested = v.accepted = v.running = False

    @query
    def snapshot(self) -> GuestSnapshot:
        return GuestSnapshot(
            vm=self.vm,
            vdevs=tuple(
                VdevView(
                    virt_id=v.virt_id,
                    bar_gpa=v.bar_gpa,
                    bar_size=v.bar_size,
                    bound=v.bound,
                    attested=v.attested,
                    accepted=v.accepted,
                    running=v.running,
                )
                for v in self._vdevs.values()
            ),
            private_reads=tuple(self._private_reads[-4:]),
        )
