"""The DMA and MMIO paths: T bit, IDE stream, RID association, TDI state (issue: DMA and MMIO paths).

Each test sets up the reference stack to the point it needs, fires one access, and checks where the
bytes went -- or that they went nowhere and a fault was recorded.
"""

from __future__ import annotations

import pytest

from teeio_conformance.contract.errors import AccessFault, InvalidState, PermissionDenied
from teeio_conformance.reference_impl.device.ide.stream import StreamState, Tlp
from teeio_conformance.reference_impl.lifecycle import VIRT_ID
from teeio_conformance.reference_impl.stack import make_sut

PRIVATE_GPA = 0x800
SHARED_GPA = 0x5000
PAYLOAD = b"DMA from the device"


def _stack(stage: str, profile: str = "tdx"):
    stack = make_sut(profile=profile)
    vm = stack.create_vm()
    dev = stack.devices["dev0"]
    stack.vmm.connect_ide("dev0")
    stack.vmm.assign(vm, "dev0", dev.pf_rid, VIRT_ID)
    stack.vmm.run(vm)
    g = stack.guests[vm]
    for name, step in (("bound", g.connect), ("attested", g.attest), ("accepted", g.accept), ("run", g.start)):
        step(VIRT_ID)
        if name == stage:
            break
    return stack, vm, dev


def _private(stack, vm):
    snap = stack.kvm.snapshot()
    v = next(v for v in snap.vms if v.name == vm)
    return v.private_digest


def _read(stack, vm, gpa, n):
    return bytes(stack.kvm._vms[vm].memory[gpa : gpa + n])  # test-only peek at guest memory


@pytest.mark.parametrize("profile", ["tdx", "sev-tio", "cca"])
def test_t1_dma_from_a_running_tdi_reaches_private_memory(profile):
    stack, vm, dev = _stack("run", profile)
    dev.issue_dma(dev.pf_rid, PRIVATE_GPA, PAYLOAD, t_bit=True)
    assert _read(stack, vm, PRIVATE_GPA, len(PAYLOAD)) == PAYLOAD
    assert stack.iommu.snapshot().faults == ()


@pytest.mark.parametrize("stage", ["bound", "attested"])
def test_t1_dma_before_run_faults_and_writes_nothing(stage):
    """In CONFIG_LOCKED the device refuses to issue T=1; a forged T=1 TLP faults at the IOMMU."""
    stack, vm, dev = _stack(stage)
    before = _private(stack, vm)
    with pytest.raises(InvalidState):
        dev.issue_dma(dev.pf_rid, PRIVATE_GPA, PAYLOAD, t_bit=True)
    forged = Tlp(kind="MWr", requester_id=dev.pf_rid, address=PRIVATE_GPA, t_bit=True, payload=PAYLOAD, stream_id=0)
    with pytest.raises(AccessFault):
        stack.iommu.dma(dev.ide.protect(forged))  # protected, but no trusted translation yet
    assert _private(stack, vm) == before
    assert len(stack.iommu.snapshot().faults) == 1


def test_t1_dma_in_error_faults_and_writes_nothing():
    stack, vm, dev = _stack("run")
    dev.poison(dev.pf_rid)  # RUN -> ERROR
    before = _private(stack, vm)
    with pytest.raises(InvalidState):
        dev.issue_dma(dev.pf_rid, PRIVATE_GPA, PAYLOAD, t_bit=True)
    assert _private(stack, vm) == before


def test_t1_dma_on_an_insecure_stream_faults():
    stack, vm, dev = _stack("run")
    forged = Tlp(kind="MWr", requester_id=dev.pf_rid, address=PRIVATE_GPA, t_bit=True, payload=PAYLOAD, stream_id=0)
    packet = dev.ide.protect(forged)
    stack.iommu.rp_stream_enable(0, False)  # the root port's end is no longer Secure
    before = _private(stack, vm)
    with pytest.raises(AccessFault, match="IDE"):
        stack.iommu.dma(packet)
    assert _private(stack, vm) == before
    assert "IDE" in stack.iommu.snapshot().faults[-1].reason


def test_t1_dma_with_the_wrong_rid_faults():
    """A requester outside the stream's RID association is refused even with a valid key."""
    stack, vm, dev = _stack("run")
    rogue = Tlp(kind="MWr", requester_id=0x4200, address=PRIVATE_GPA, t_bit=True, payload=PAYLOAD, stream_id=0)
    packet = dev.ide.protect(rogue)
    before = _private(stack, vm)
    with pytest.raises(AccessFault):
        stack.iommu.dma(packet)
    assert _private(stack, vm) == before


def test_unprotected_t1_dma_faults():
    stack, _vm, dev = _stack("run")
    plain = Tlp(kind="MWr", requester_id=dev.pf_rid, address=PRIVATE_GPA, t_bit=True, payload=PAYLOAD, stream_id=0)
    with pytest.raises(AccessFault, match="without IDE"):
        stack.iommu.dma(plain)


def test_t0_dma_into_private_memory_faults_and_writes_nothing():
    stack, vm, dev = _stack("run")
    before = _private(stack, vm)
    with pytest.raises(AccessFault):
        dev.issue_dma(dev.pf_rid, PRIVATE_GPA, PAYLOAD, t_bit=False)
    assert _private(stack, vm) == before
    dev.issue_dma(dev.pf_rid, SHARED_GPA, PAYLOAD, t_bit=False)  # shared memory is fine with T=0
    assert _read(stack, vm, SHARED_GPA, len(PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize("stage", ["bound", "attested", "accepted", "run"])
def test_private_mmio_read_returns_device_bytes_only_in_run(stage):
    stack, vm, _dev = _stack(stage)
    guest = stack.guests[vm]
    if stage != "run":
        with pytest.raises(AccessFault):
            guest.read_private_mmio(VIRT_ID)
        return
    data = guest.read_private_mmio(VIRT_ID)
    assert data == stack.devices["dev0"].snapshot().secrets[-1]


def test_host_mmap_is_refused_once_private():
    stack, _vm, dev = _stack("bound")
    fd = next(f for f, _, r, _ in stack.vfio.snapshot().open_fds if r == dev.pf_rid)
    with pytest.raises(PermissionDenied):
        stack.vfio.mmap_bar(fd, dev.pf_rid)


def test_a_flipped_bit_in_a_protected_tlp_makes_the_stream_insecure_and_the_tdi_error():
    """AES-GCM is real: one flipped ciphertext bit fails the tag; stream Insecure, TDI ERROR."""
    stack, _vm, dev = _stack("run")
    tlp = Tlp(
        kind="MRd",
        requester_id=dev.pf_rid,
        address=dev.bar_range(dev.pf_rid)[0] + 4096,
        t_bit=True,
        payload=(8).to_bytes(4, "little"),
        stream_id=0,
    )
    rp = stack.iommu._rp[0]  # the root port's end of the stream
    packet = rp.protect(tlp)
    flipped = bytearray(packet.ciphertext)
    flipped[0] ^= 0x01
    import attrs

    with pytest.raises(AccessFault, match="IDE"):
        dev.receive(attrs.evolve(packet, ciphertext=bytes(flipped)))
    assert dev.ide.state is StreamState.INSECURE
    assert dev.tdi_state(dev.pf_rid).name == "ERROR"


def test_a_replayed_tlp_is_refused():
    stack, _vm, dev = _stack("run")
    tlp = Tlp(
        kind="MRd",
        requester_id=dev.pf_rid,
        address=dev.bar_range(dev.pf_rid)[0] + 4096,
        t_bit=True,
        payload=(8).to_bytes(4, "little"),
        stream_id=0,
    )
    packet = stack.iommu._rp[0].protect(tlp)
    dev.receive(packet)
    with pytest.raises(AccessFault, match="replayed"):
        dev.receive(packet)
