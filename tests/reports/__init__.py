"""Tests of the reports (JSON, JUnit, text, HTML, compare) and of replaying failure records.

Shared helpers live here: hand-made verdict files and failure records, a check that the reference
stack runs (end-to-end tests skip until it does), and a mutant SUT whose guest unbind also destroys
the vdevice -- it breaks FLOW-05 (flow correction 5) and nothing else on the short path used here.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from teeio_conformance.reference_impl.iommufd import Iommufd

MUTANT_SUT = "tests.reports:unbind_destroys_vdevice_sut"
REFERENCE_SUT = "teeio_conformance.reference_impl.stack:make_sut"
SLOT = {"__slot__": {"vm": "vm1", "rid": 14848, "virt_id": 16}}
FLOW05_STEPS = [
    {"method": "first_vm", "kwargs": {}},
    {"method": "assign", "kwargs": {"vm": "vm1", "fn": 0}},
    {"method": "guest", "kwargs": {"s": SLOT, "verb": "unbind"}},
]


class UnbindAlsoDestroysVdevice(Iommufd):
    """Guest unbind destroys the vdevice too (flow.md step 39 read literally): breaks FLOW-05."""

    def vdevice_tsm_unbind(self, vdevice: int) -> None:
        super().vdevice_tsm_unbind(vdevice)
        self.destroy(vdevice)


def unbind_destroys_vdevice_sut(
    *, profile: str = "tdx", num_devices: int = 1, num_vfs: int = 1, trace: bool = True
) -> Any:
    """A SUT factory with make_sut's signature around the mutant IOMMUFD."""
    from teeio_conformance.reference_impl.device.device import DeviceConfig
    from teeio_conformance.reference_impl.stack import StackConfig, build_stack

    devices = tuple(DeviceConfig(num_vfs=num_vfs, seed=1 + i) for i in range(num_devices))
    return build_stack(
        StackConfig(profile=profile, devices=devices, trace=trace), iommufd_factory=UnbindAlsoDestroysVdevice
    )


@functools.cache
def stack_works() -> bool:
    """True once the reference stack runs the whole lifecycle (the lead integrates it piece by piece)."""
    try:
        from teeio_conformance.reference_impl.lifecycle import run_lifecycle
        from teeio_conformance.reference_impl.stack import build_stack

        run_lifecycle(build_stack())
    except Exception:
        return False
    return True


STACK_REASON = "the reference stack does not run its lifecycle yet (run_lifecycle(build_stack()) raises)"


def event(
    seq: int,
    caller: str,
    callee: str,
    operation: str,
    *,
    outcome: str = "ok",
    error: str | None = None,
    step: str | None = None,
    depth: int = 0,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "caller": caller,
        "callee": callee,
        "operation": operation,
        "arguments": [],
        "outcome": outcome,
        "result": None,
        "error": error,
        "message": "",
        "depth": depth,
        "step": step,
    }


SMALL_TRACE = [
    event(0, "harness", "kvm", "create_vm"),
    event(1, "harness", "vmm", "assign"),
    event(2, "vmm", "vfio", "open_device", step="2", depth=1),
    event(3, "harness", "guest", "disconnect", step="36"),
    event(4, "guest", "guest_tsm", "unbind", step="36", depth=1),
    event(5, "vmm", "iommufd", "vdevice_tsm_unbind", step="38", depth=2),
    event(6, "iommufd", "iommufd", "destroy", outcome="error", error="Busy", depth=3),
]


def failure_record(**overrides: Any) -> dict[str, Any]:
    """A hand-made failure record in the plugin's format (report-formats.md, item 2)."""
    record: dict[str, Any] = {
        "format": "teeio-failure/1",
        "test": "conformance/test_full_stack.py::test_full_stack_lifecycle[tdx]",
        "machine": "full_stack",
        "profile": "tdx",
        "sut": MUTANT_SUT,
        "rule_id": "FLOW-05",
        "rule_title": "guest unbind leaves the vdevice until the VM stops",
        "rule_source": "flow step 39, flow corr. 5",
        "message": "guest unbind destroyed vdevice 5; it must remain",
        "action": "guest_unbind",
        "steps": json.loads(json.dumps(FLOW05_STEPS)),
        "program": [
            "Failing test case: <state machine>",
            "state = Machine()",
            "vms_0 = state.first_vm()",
            "slots_0 = state.assign(fn=0, vm=vms_0)",
            "state.guest(s=slots_0, verb='unbind')",
            "state.teardown()",
        ],
        "trace": SMALL_TRACE,
        "violating_seq": 3,
        "hypothesis": "6.170.17",
        "seed": None,
    }
    record.update(overrides)
    return record


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def verdicts(
    checked: dict[str, int],
    exercised: dict[str, int],
    failed: dict[str, int] | None = None,
    *,
    profiles: tuple[str, ...] = ("tdx",),
    sut: str = REFERENCE_SUT,
    steps: int = 100,
    by_profile: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "checked": checked,
        "exercised": exercised,
        "failed": failed or {},
        "steps": steps,
        "sut": sut,
        "profiles": list(profiles),
    }
    if by_profile is not None:
        data["by_profile"] = by_profile
    if run is not None:
        data["run"] = run
    return data


def sample_report_dir(root: Path) -> Path:
    """A report directory: two xdist workers with per-profile counts, and one FLOW-05 failure under tdx."""
    run = {"profile": "ci", "seed": "0", "hypothesis": "6.170.17"}
    gw0 = {
        "tdx": {
            "checked": {"FLOW-05": 3, "FLOW-01": 4, "FLOW-07": 5},
            "exercised": {"FLOW-05": 2, "FLOW-01": 4},
            "failed": {"FLOW-05": 1},
        },
        "cca": {"checked": {"FLOW-05": 2, "FLOW-08": 1}, "exercised": {"FLOW-05": 2}, "failed": {}},
    }
    gw1 = {
        "tdx": {"checked": {"FLOW-05": 1, "FLOW-07": 2}, "exercised": {"FLOW-07": 1}, "failed": {}},
        "cca": {"checked": {"FLOW-01": 2}, "exercised": {"FLOW-01": 1}, "failed": {}},
    }
    for worker, bp in (("gw0", gw0), ("gw1", gw1)):
        flat: dict[str, dict[str, int]] = {"checked": {}, "exercised": {}, "failed": {}}
        for counts in bp.values():
            for key, per_rule in counts.items():
                for rule_id, n in per_rule.items():
                    flat[key][rule_id] = flat[key].get(rule_id, 0) + n
        write_json(
            root / f"verdicts-{worker}.json",
            verdicts(
                flat["checked"],
                flat["exercised"],
                flat["failed"],
                profiles=("tdx", "cca"),
                sut=MUTANT_SUT,
                by_profile=bp,
                run=run,
            ),
        )
    write_json(
        root / "failures" / "conformance_test_full_stack.py__test_full_stack_lifecycle_tdx_.json",
        failure_record(),
    )
    return root


def lock_leaves_unlocked_device(trace: Any, profile: str) -> Any:
    """A device factory (device-machine records) whose LOCK_INTERFACE leaves the TDI unlocked (TDISP-03)."""
    from teeio_conformance.reference_impl.mutants import by_name

    return by_name("device-lock-leaves-unlocked").device_factory(trace, profile)
