"""The reach matrix files each crossing under (operation, target state before the step)."""

from __future__ import annotations

from teeio_conformance.conformance import reach
from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.reference_impl.stack import make_sut


def test_the_lifecycle_visits_the_cells_it_should():
    reach.REACH.clear()

    class Machine(FullStack):
        config = MachineConfig(factory=make_sut, profile="tdx")

    m = Machine()
    m.lifecycle()
    seen = dict(reach.REACH)
    assert seen[("TDISP LOCK_INTERFACE", "CONFIG_UNLOCKED")] >= 1
    assert seen[("TDISP START_INTERFACE", "CONFIG_LOCKED")] >= 1
    assert seen[("TDISP STOP_INTERFACE", "RUN")] >= 1
    assert seen[("DMA T=1", "RUN")] >= 1 and seen[("DMA T=0", "CONFIG_UNLOCKED")] >= 1
    assert ("TDISP LOCK_INTERFACE", "RUN") not in seen  # the lifecycle never re-locks
    missing = reach.unvisited(seen)
    assert ("TDISP LOCK_INTERFACE", "RUN") in missing
    assert not set(missing) & set(reach.UNREACHABLE)
    assert any("LOCK_INTERFACE" in line for line in reach.render(seen))
