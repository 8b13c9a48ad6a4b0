"""Attestation mutants (issue 14): evidence over the wrong nonce, stale evidence, reports that do not
describe the BAR, a guest that accepts what it should refuse, and a TSM that cries "broken promise"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from teeio_conformance.contract.errors import ConformanceViolation
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.reference_impl.device.device import PAGE, Device
from teeio_conformance.reference_impl.guest import GuestTsm
from teeio_conformance.reference_impl.iommufd import GuestRequest
from teeio_conformance.reference_impl.stack import Stack
from teeio_conformance.reference_impl.tsm import Evidence, Tsm


class TsmFixedNonce(Tsm):
    """The TSM has the device sign the evidence over a constant nonce instead of the guest's."""

    def _guest_report(self, ctx: Any, request: GuestRequest) -> Evidence:
        return super()._guest_report(ctx, attrs.evolve(request, nonce=b"\x5a" * 32))


class TsmSkipsReportFetch(Tsm):
    """After the first report of a TDI the TSM stops fetching it: later evidence rests on no fresh exchange."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetched: set[int] = set()

    def _guest_report(self, ctx: Any, request: GuestRequest) -> Evidence:
        if ctx.rid not in self._fetched:
            self._fetched.add(ctx.rid)
            return super()._guest_report(ctx, request)
        dev = self._devices[ctx.device]
        signed = dev.sign_evidence(self._sessions[ctx.device], ctx.rid, request.nonce)
        return Evidence(signed=signed, chain=dev.certificate_chain())


class DeviceReportOutsideBar(Device):
    """The interface report describes TEE memory one page past the end of the BAR."""

    def _build_report(self, fn: Any, offset: int) -> bytes:
        good = td.InterfaceReport.decode(super()._build_report(fn, offset))
        last = good.mmio_ranges[-1]
        shifted = attrs.evolve(last, first_page=last.first_page + PAGE)
        return attrs.evolve(good, mmio_ranges=(*good.mmio_ranges[:-1], shifted)).encode()


class LaxGuestTsm(GuestTsm):
    """The guest TSM checks the evidence's chain, signature and nonce but not its ranges against the vBAR."""

    def attest(self, virt_id: int, bar_gpa: int, bar_size: int) -> bytes:
        return super().attest(virt_id, 0, 2**64 - 1)


class LaxGuestStack(Stack):
    def create_vm(self) -> str:
        vm = super().create_vm()
        lax = LaxGuestTsm(self.trace, vm, self.profile, self.guest_tsms[vm]._root, seed=len(self.guests))
        lax._wire(self.vmm)
        self.guest_tsms[vm] = lax
        self.guests[vm]._tsm = lax
        return vm


class TsmCriesWolf(Tsm):
    """The TSM raises ConformanceViolation on a valid report longer than one 64-byte portion."""

    def _guest_report(self, ctx: Any, request: GuestRequest) -> Evidence:
        ev = super()._guest_report(ctx, request)
        if len(ev.signed.report) > 64:
            raise ConformanceViolation("device report longer than 64 bytes")
        return ev


def lax_guest_factory(*, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True) -> Any:
    from teeio_conformance.reference_impl.device.device import DeviceConfig
    from teeio_conformance.reference_impl.stack import StackConfig

    devices = tuple(DeviceConfig(num_vfs=num_vfs, seed=1 + i) for i in range(num_devices))
    return LaxGuestStack(StackConfig(profile=profile, devices=devices, trace=trace))


def mutants(m: Callable[..., Any], stack_mutant: Callable[..., Any]) -> list[Any]:
    full = "full_stack"
    return [
        m(
            "tsm-fixed-nonce-evidence",
            "ATT-01",
            full,
            "tdx",
            TsmFixedNonce.__doc__,
            overrides={"tsm_factory": TsmFixedNonce},
        ),
        m(
            "tsm-skips-report-fetch",
            "ATT-02",
            full,
            "cca",
            TsmSkipsReportFetch.__doc__,
            overrides={"tsm_factory": TsmSkipsReportFetch},
        ),
        m(
            "device-report-outside-bar",
            "ATT-03",
            full,
            "tdx",
            DeviceReportOutsideBar.__doc__,
            device=DeviceReportOutsideBar,
        ),
        stack_mutant(
            "guest-accepts-ranges-outside-vbar", "ATT-04", full, "tdx", LaxGuestTsm.__doc__, lax_guest_factory
        ),
        m("tsm-cries-wolf", "ERR-04", full, "sev-tio", TsmCriesWolf.__doc__, overrides={"tsm_factory": TsmCriesWolf}),
    ]
