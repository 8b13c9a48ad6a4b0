"""The reach matrix files each crossing under (operation with its dimensions, target state before the step)."""

from __future__ import annotations

import pytest

from teeio_conformance.conformance import reach
from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
from teeio_conformance.reference_impl.stack import make_sut


def _machine(profile: str = "tdx") -> FullStack:
    class Machine(FullStack):
        config = MachineConfig(factory=make_sut, profile=profile)

    return Machine()


def test_the_lifecycle_visits_the_cells_it_should():
    reach.REACH.clear()
    m = _machine()
    m.lifecycle()
    seen = dict(reach.REACH)
    assert seen[("TDISP LOCK_INTERFACE [Secure]", "CONFIG_UNLOCKED")] >= 1
    assert seen[("TDISP START_INTERFACE [Secure]", "CONFIG_LOCKED")] >= 1
    assert seen[("TDISP STOP_INTERFACE", "RUN")] >= 1
    assert seen[("DMA T=1 [Secure, VM running]", "RUN")] >= 1
    assert seen[("DMA T=0 [VM running]", "CONFIG_UNLOCKED")] >= 1
    assert seen[("tsm.unbind [VM running]", "RUN")] >= 1
    assert ("TDISP LOCK_INTERFACE [Secure]", "RUN") not in seen  # the lifecycle never re-locks
    missing = reach.unvisited(seen)
    assert ("TDISP LOCK_INTERFACE [Secure]", "RUN") in missing
    assert not set(missing) & set(reach.UNREACHABLE)
    assert any("LOCK_INTERFACE [Secure]" in line for line in reach.render(seen))


def test_every_operation_has_its_rows_and_every_unreachable_cell_a_reason():
    cells = set(reach.cells())
    assert set(reach.UNREACHABLE) <= cells
    assert all(len(why) > 40 for why in reach.UNREACHABLE.values())
    assert reach.rows("DMA T=1") == [
        "DMA T=1 [Secure, VM running]",
        "DMA T=1 [Secure, VM not running]",
        "DMA T=1 [not Secure, VM running]",
        "DMA T=1 [not Secure, VM not running]",
    ]
    assert reach.rows("TDISP GET_DEVICE_INTERFACE_STATE") == ["TDISP GET_DEVICE_INTERFACE_STATE"]
    assert len(reach.render({})) == 1 + sum(
        len(reach.rows(op)) for op in (*reach.TDISP_OPS, *reach.OTHER_OPS, *reach.HOST_OPS)
    )


HARD = (  # cells drawn steps missed in a whole ci run before the aimed steps of conformance/machines/reach_steps.py
    ("TDISP BIND_P2P_STREAM", "RUN"),
    ("TDISP VDM", "ERROR"),
    ("TDISP GET_TDISP_CAPABILITIES", "ERROR"),
    ("TDISP LOCK_INTERFACE [not Secure]", "CONFIG_UNLOCKED"),
    ("TDISP START_INTERFACE [not Secure]", "ERROR"),
    ("DMA T=1 [not Secure, VM running]", "CONFIG_UNLOCKED"),
    ("DMA T=1 [not Secure, VM not running]", "ERROR"),
    ("DMA T=1 [Secure, VM not running]", "RUN"),
    ("DMA T=0 [VM not running]", "CONFIG_LOCKED"),
    ("device.flr [bound]", "RUN"),
    ("device.flr [bound]", "ERROR"),
    ("tsm.bind [VM running]", "RUN"),
    ("tsm.bind [VM not running]", "RUN"),
)


@pytest.mark.parametrize("profile", ("tdx", "sev-tio", "cca"))
def test_the_aimed_steps_reach_the_hard_cells_and_no_unreachable_one(profile):
    """The sweep (of the PF, of the VF) and the DMA walk, on a fresh stack each, visit
    the cells drawn steps missed, and none of the cells the matrix calls unreachable."""
    reach.REACH.clear()
    for fn in range(2):
        m = _machine(profile)
        slot = m.assign(vm=m.first_vm(), fn=fn)
        m.rogue_tsm_sweep(s=slot)
        m.teardown()
    m = _machine(profile)
    m.first_vm()
    m.reach_dma(fn=0)
    m.teardown()
    seen = dict(reach.REACH)
    assert [c for c in HARD if not seen.get(c)] == []
    assert [c for c in seen if c in reach.UNREACHABLE] == []


def test_a_dma_on_a_lost_stream_is_filed_under_not_secure():
    reach.REACH.clear()
    m = _machine()
    slot = m.bring_up(fn=0, stage="running")
    m.fault_link(kind="ide")
    m.device_dma(s=slot, t_bit=True, private=True)
    assert reach.REACH[("DMA T=1 [not Secure, VM running]", "CONFIG_UNLOCKED")] == 1


def test_every_reachable_cell_is_visited_at_the_ci_budget():
    """The catalogue's machine tests on the reference, as ``teeio-conformance run`` runs them under ``ci`` (one
    profile, tdx; about 100 s): no reachable cell left unvisited, no cell called unreachable visited."""
    from teeio_conformance.conformance.settings import PROFILES
    from teeio_conformance.conformance.test_device import run_device_machine
    from teeio_conformance.conformance.test_full_stack import test_full_stack_lifecycle
    from teeio_conformance.conformance.test_host_lifetimes import test_host_object_lifetimes
    from teeio_conformance.conformance.test_liveness import test_lifecycle_completes

    ci = PROFILES["ci"]  # the suite's own ci (Hypothesis has a built-in profile of that name)
    reach.REACH.clear()
    test_lifecycle_completes(make_sut, "tdx", 5.0)
    run_device_machine("tdx", 5.0, None, ci)
    test_full_stack_lifecycle(make_sut, "tdx", 5.0, ci, lambda: None)
    test_host_object_lifetimes(make_sut, "tdx", 5.0, ci, lambda: None)
    seen = dict(reach.REACH)
    assert reach.unvisited(seen) == []
    assert [c for c in seen if c in reach.UNREACHABLE] == []
