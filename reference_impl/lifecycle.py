"""The corrected lifecycle of flow.md, played end to end on a stack.

This is the scenario the golden chart is made from and the shape every machine's happy path
follows. Each line names the flow steps it covers; the trace records what each actor did.
"""

from __future__ import annotations

from teeio_conformance.reference_impl.stack import Stack

__all__ = ["CHART_MERGES", "FLOW_STEPS", "VIRT_ID", "merge_note", "merged_steps", "run_lifecycle"]

FLOW_STEPS: tuple[str, ...] = (*(str(i) for i in range(1, 17)), "16b", *(str(i) for i in range(17, 51)))
"""Every numbered step of flow.md's chart."""

CHART_MERGES: dict[str, dict[str, str]] = {
    "all": {
        "4": "shown as 3: VFIO creates and exports the dmabuf in one call (the fd it returns is the export)",
        "16b": "shown as 16: IOMMU_VDEVICE_ALLOC attaches the vdevice to its vIOMMU in the same call",
        "22": "shown as 23: QEMU's call into IOMMUFD and IOMMUFD's vdevice guest request are one crossing",
        "27": "shown as 28: as 22-23, for accept",
        "32": "shown as 33: as 22-23, for start",
    },
    "sev-tio": {
        "33": "SEV-TIO starts the TDI at attest (24, TDISP START): the guest's start (31) only reads the state",
    },
}
"""Steps of flow.md one crossing carries together, per profile ("all" for every profile): the chart shows
each with the number of the crossing that implements it."""


def merged_steps(profile: str) -> dict[str, str]:
    """The documented merges of ``profile``'s chart (step -> where and why)."""
    return {**CHART_MERGES["all"], **CHART_MERGES.get(profile, {})}


def merge_note(profile: str) -> str:
    """The chart's footnote: the flow.md steps without a row of their own, and where they are."""
    lines = ["flow.md steps without a row of their own:"]
    lines += [f"  {step:>4}  {why}" for step, why in merged_steps(profile).items()]
    return "\n".join(lines) + "\n"


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
    guest.disconnect(VIRT_ID)  # 36-49 (46 as corrected: one vdevice's T=1 DMA off, the vIOMMU stays)
    guest.use_shared(VIRT_ID)  # 50: workable shared device again
    stack.vmm.stop_vm(vm)  # VM stop: vdevice, vIOMMU, hwpt/idev, memslots, VFIO close, VM
    stack.tsm.disconnect(device)
    return vm
