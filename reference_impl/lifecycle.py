"""The corrected lifecycle of flow.md, played end to end on a stack.

This is the scenario the golden chart is made from and the shape every machine's happy path
follows. Each line names the flow steps it covers; the trace records what each actor did.
"""

from __future__ import annotations

from teeio_conformance.reference_impl.stack import Stack

__all__ = ["VIRT_ID", "run_lifecycle"]

VIRT_ID = 0x10
PRIVATE_DMA_GPA = 0x1000  # inside guest private memory (pages 0..3)


def run_lifecycle(stack: Stack, *, device: str = "dev0") -> str:
    """Run steps 1-50 plus VM stop on ``stack``; returns the VM's name."""
    dev = stack.devices[device]
    rid = dev.pf_rid
    vm = stack.create_vm()
    stack.vmm.connect_ide(device)  # 1
    stack.vmm.assign(vm, device, rid, VIRT_ID)  # 2-9, 15-16 (before run: correction 1)
    stack.vmm.run(vm)  # 10
    guest = stack.guests[vm]
    guest.enumerate(VIRT_ID)  # 11: shared device, T=0
    guest.connect(VIRT_ID)  # 12-14, 17-19: bind on the existing vdevice
    guest.attest(VIRT_ID)  # 20-24: guest request through the vdevice
    guest.accept(VIRT_ID)  # 25-30
    guest.start(VIRT_ID)  # 31-34
    guest.read_private_mmio(VIRT_ID)  # 35: private MMIO, T=1 over IDE
    dev.issue_dma(rid, PRIVATE_DMA_GPA, b"device->guest private data", t_bit=True)  # 35: private DMA
    guest.disconnect(VIRT_ID)  # 36-49 (no step 46: the vIOMMU stays)
    guest.enumerate(VIRT_ID)  # 50: workable shared device again
    stack.vmm.stop_vm(vm)  # VM stop: vdevice, vIOMMU, device file, hwpt, IOAS, VM
    stack.tsm.disconnect(device)
    return vm
