"""P2P streams between two devices' TDIs and vendor messages through the TSM, on the whole reference stack,
each step checked by the catalogue's rules (issue 19)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from teeio_conformance.conformance.harness import StepRunner
from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.conformance.rules import CATALOGUE
from teeio_conformance.contract.guest_request import GuestRequest
from teeio_conformance.contract.tdisp import codec as td
from teeio_conformance.reference_impl.stack import make_sut

OURS = frozenset({"P2P-01", "P2P-02", "P2P-03", "P2P-04", "MMIOATTR-01", "VDM-01", "VDM-02"})
CHECKED = frozenset(r.id for r in CATALOGUE)


def _two_device_vm(profile: str) -> tuple[object, StepRunner, str, int, int]:
    stack = make_sut(profile=profile, num_devices=2)
    run = StepRunner(stack, profile, only=CHECKED)
    d0, d1 = stack.devices["dev0"], stack.devices["dev1"]

    def do(action: str, fn, *args):  # type: ignore[no-untyped-def]
        result, error = run.step(action, fn, *args)
        assert error is None, f"{action}: {error!r}"
        return result

    vm = do("create_vm", stack.create_vm)
    do("connect_dev0", stack.vmm.connect_ide, "dev0")
    do("connect_dev1", stack.vmm.connect_ide, "dev1")
    do("assign_dev0", stack.vmm.assign, vm, "dev0", d0.pf_rid, 0x10)
    do("assign_dev1", stack.vmm.assign, vm, "dev1", d1.pf_rid, 0x20)
    do("run", stack.vmm.run, vm)
    guest = stack.guests[vm]
    for virt in (0x10, 0x20):
        for verb in ("connect", "attest", "accept", "start"):
            do(f"guest_{verb}", getattr(guest, verb), virt)
    return stack, run, vm, d0.pf_rid, d1.pf_rid


@pytest.mark.parametrize("profile", ["tdx", "sev-tio", "cca"])
def test_two_tdis_of_one_vm_bind_a_p2p_stream(profile):
    stack, run, vm, a, b = _two_device_vm(profile)
    stream, error = run.step("bind_p2p", stack.tsm.bind_p2p, vm, a, b)
    assert error is None and stream == 1
    bound = {f.rid: f.p2p_streams for d in stack.snapshot().devices for f in d.functions}
    assert bound[a] == bound[b] == (1,)
    other, _ = run.step("create_vm", stack.create_vm)
    _, refused = run.step("bind_p2p_other_vm", stack.tsm.bind_p2p, other, a, b)
    assert refused is not None and type(refused).__name__ == "PermissionDenied"
    _, error = run.step("unbind_p2p", stack.tsm.unbind_p2p, a, b)
    assert error is None
    assert all(not f.p2p_streams for d in stack.snapshot().devices for f in d.functions)
    _, refused = run.step("bind_p2p_same_device", stack.tsm.bind_p2p, vm, a, a + 1)
    assert refused is not None
    run.step("bind_p2p_again", stack.tsm.bind_p2p, vm, a, b)
    _, error = run.step("guest_unbind", stack.guests[vm].disconnect, 0x10)  # STOP of one end: both let go
    assert error is None
    assert all(not f.p2p_streams for d in stack.snapshot().devices for f in d.functions)
    assert all(not t.p2p_peers for t in stack.tsm.snapshot().tdis)
    assert not run.checker.failed
    for rule in ("P2P-01", "P2P-02", "P2P-03", "P2P-04"):
        assert run.checker.exercised[rule], rule


def test_the_guests_vendor_messages_pass_unchanged():
    stack, run, vm, _, _ = _two_device_vm("tdx")
    dev = stack.devices["dev0"]
    for vendor in (b"\xfe\xff", b"\x34\x12"):
        req = GuestRequest(kind="vdm", payload=bytes([0, len(vendor)]) + vendor + b"hi")
        answer, error = run.step("guest_vdm", stack.vmm.ghci_guest_request, vm, 0x10, req)
        assert error is None
        sent = [e for e in stack.trace.since(0) if e.callee == "device" and e.operation == "handle_vendor_message"]
        assert bytes(sent[-1].result) == answer and bytes(sent[-1].arguments[1])[16:] == req.payload
        resp = td.decode_response(answer)
        if vendor == b"\xfe\xff":
            assert isinstance(resp, td.VdmResponse) and resp.payload == b"hi"
        else:
            assert resp.error_code == td.ErrorCode.VENDOR_SPECIFIC_ERROR
            assert resp.extended_error_data == bytes([0, 2]) + vendor
    _, error = run.step("guest_vdm_malformed", stack.vmm.ghci_guest_request, vm, 0x10, GuestRequest(kind="vdm"))
    assert error is not None and not run.checker.failed
    assert run.checker.exercised["VDM-02"] and run.checker.exercised["VDM-01"]
    assert dev.snapshot().functions[0].tdi_state is td.TdiState.RUN


def test_the_full_stack_machine_with_two_devices_keeps_the_rules():
    """The full-stack machine on a two-device stack: its P2P rule joins TDIs of both devices."""

    joined: list[int] = []

    class Machine(FullStack):
        config = MachineConfig(factory=make_sut, profile="tdx", num_devices=2, only=CHECKED)

        def teardown(self) -> None:
            events = self.stack.trace.since(0)
            joined.extend(1 for e in events if e.callee == "tsm" and e.operation == "bind_p2p" and e.ok)
            super().teardown()

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=25,
            stateful_step_count=15,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    # the search above checks every rule on two devices; whether it draws the P2P step with a fitting slot
    # depends on the search, so one example also drives it by hand
    machine = Machine()
    slot = machine.bring_up(fn=0, stage="running")
    machine.host_p2p(s=slot)
    machine.teardown()
    assert joined, "no example joined two devices' TDIs"
