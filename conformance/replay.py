"""``teeio-conformance replay FILE [--sut module:factory]``: re-run a recorded failure on a fresh machine.

A failure record (``failures/<name>.json``, format ``teeio-failure/1``) holds the shrunk sequence as
concrete steps: ``{"method": ..., "kwargs": ...}`` in order (``docs/report-formats.md``).
Replaying builds the recorded machine (full_stack, device or host_lifetimes) around the SUT, calls
``getattr(machine, method)(**kwargs)`` for each step and ``teardown()`` at the end, with every rule of
the catalogue checked after every step exactly as in the original run. No Hypothesis is involved, so a
replay is deterministic and takes milliseconds: an engineer can re-run it after every rebuild.

The SUT is the one given as ``sut`` (your build). For records of the *device* machine ``sut`` names a
device factory ``factory(trace, profile) -> device`` (the device machine drives a device alone); by
default the reference device.

Records are shared between people, so opening one runs nothing it names unless the user says so: a
record's ``sut`` is imported and called, and its ``device`` responder started or connected to, only
when it is the suite's own (the reference stack, the reference device, a named reference mutant) or
when ``trust_record`` is given (``--trust-record``; the CLI prints what will run first). Otherwise the
SUT and the responder come from the command line (``--sut``, ``--device-spawn``, ``--device-at``), as
the replay command a report prints spells them out.

The whole record is checked before anything runs -- format, machine, every step's method and
arguments -- so a corrupt or foreign file is a :class:`ReplayError` naming what is wrong, never a
half-run machine or a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shlex
import sys
import typing
from collections.abc import Callable
from types import ModuleType, UnionType
from typing import Any

import attrs

from teeio_conformance.conformance.harness import verdicts_untouched
from teeio_conformance.conformance.sut import SutLoadError, load_factory
from teeio_conformance.reports.model import Failure, ReportInputError, load_failure

__all__ = [
    "MACHINES",
    "REFERENCE_DEVICE",
    "ConsentNeeded",
    "Prepared",
    "ReplayError",
    "ReplayResult",
    "add_arguments",
    "execute",
    "machine_kind",
    "own_sut",
    "prepare",
    "recorded_actions",
    "replay",
    "run",
]

MACHINES = ("full_stack", "device", "host_lifetimes")
REFERENCE_DEVICE = "teeio_conformance.conformance.machines.device:reference_device"
# How a record names its machine: the plugin writes the machine name, or the pytest item's name.
_HINTS = (
    ("host_lifetimes", ("host_lifetimes", "host_object_lifetimes", "hostlifetimes")),
    ("device", ("test_device", "devicemachine", "device_tdisp")),
    ("full_stack", ("full_stack", "fullstack")),
)

_STEP_MARKERS = ("hypothesis_stateful_rule", "hypothesis_stateful_initialize_rule")  # @rule / @initialize


class ReplayError(ReportInputError):
    """The record cannot be replayed: corrupt or foreign file, unknown machine or step, unusable SUT."""


class ConsentNeeded(ReplayError):
    """The record names code to run (a SUT factory, a responder command or address) that the user did not
    give on the command line nor allow with ``trust_record``."""


def own_sut(spec: str) -> bool:
    """Is ``spec`` one of the suite's own SUTs (no code of a record's choosing): the reference stack, the
    reference device, or a reference mutant by its name."""
    from teeio_conformance.conformance.sut import DEFAULT_SUT

    if spec in (DEFAULT_SUT, REFERENCE_DEVICE):
        return True
    module, _, name = spec.partition(":")
    if module != "teeio_conformance.reference_impl.mutants":
        return False
    from teeio_conformance.reference_impl.mutants import MUTANTS

    return any(m.name.replace("-", "_") == name for m in MUTANTS)


def recorded_actions(failure: Failure, sut: str | None = None, device: Any = None) -> list[str]:
    """What replaying ``failure`` would run because the *record* names it (not the command line): one
    line each, for the consent message and for ``--trust-record``'s announcement. Empty: nothing."""
    kind = machine_kind(failure)
    out = []
    spec = failure.device
    if kind == "device" and sut is None and spec is not None and not (device is not None and device.remote):
        if isinstance(spec, dict) and "spawn" in spec:
            out.append(f"start the responder command the record names: {shlex.quote(str(spec['spawn']))}")
        else:
            out.append(f"connect to the responder address the record names: {str(spec)[:120]}")
    if kind != "device" and sut is None and not own_sut(failure.sut):
        out.append(f"import and call the SUT factory the record names: {failure.sut}")
    return out


@attrs.frozen(kw_only=True)
class ReplayResult:
    still_fails: bool
    rule_id: str | None  # the rule (or SUT-HANG / SUT-BROKEN / SUT-ERROR) it fails with now; None if it passes
    message: str  # one paragraph for a human: what happened, against what
    steps_run: int  # recorded steps executed (the failing one included)
    recorded_rule_id: str | None = None
    sut: str = ""


@attrs.frozen(kw_only=True)
class Prepared:
    """A record checked and bound to a machine class, ready to run."""

    failure: Failure
    kind: str
    sut: str
    machine: type
    steps: tuple[tuple[str, dict[str, Any]], ...]


def machine_kind(failure: Failure) -> str:
    """Which machine recorded ``failure``: its ``machine`` field, or guessed from the test's name."""
    if failure.machine in MACHINES:
        return failure.machine
    text = f"{failure.machine} {failure.test}".lower()
    for kind, hints in _HINTS:
        if any(h in text for h in hints):
            return kind
    raise ReplayError(
        f"{failure.file}: machine {failure.machine!r} (test {failure.test!r}) is not one of {', '.join(MACHINES)}"
    )


def _machine_module(kind: str) -> ModuleType:
    import importlib

    return importlib.import_module(f"teeio_conformance.conformance.machines.{kind}")


def _machine_class(
    kind: str, factory: Callable[..., Any] | None, profile: str, timeout: float, num_vfs: int | None = None
) -> type:
    """The recorded machine, configured for ``factory`` (None: the device machine's reference device) with
    the recorded number of VFs (the failing sequence's routing IDs depend on it)."""
    from teeio_conformance.conformance.machines.device import DeviceMachine, DeviceMachineConfig
    from teeio_conformance.conformance.machines.full_stack import FullStack, MachineConfig
    from teeio_conformance.conformance.machines.host_lifetimes import HostLifetimes

    if kind == "device":
        cfg_d = (
            DeviceMachineConfig(profile=profile, timeout=timeout)
            if factory is None
            else DeviceMachineConfig(device_factory=factory, profile=profile, timeout=timeout)
        )
        return type("ReplayDeviceMachine", (DeviceMachine,), {"config": cfg_d})
    base = HostLifetimes if kind == "host_lifetimes" else FullStack
    cfg = MachineConfig(factory=factory, profile=profile, timeout=timeout)
    if num_vfs is not None:
        cfg = attrs.evolve(cfg, num_vfs=num_vfs)
    return type(f"Replay{base.__name__}", (base,), {"config": cfg})


def _decode(value: Any, types: dict[str, type], where: str) -> Any:
    """A recorded argument back to its value: ``{"__slot__": {...}}`` -> ``Slot(...)``."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if isinstance(key, str) and key.startswith("__") and key.endswith("__"):
            cls = types.get(key[2:-2])
            if cls is None:
                raise ReplayError(
                    f"{where}: {key!r} is not a handle type this machine knows ({', '.join(sorted(types)) or 'none'})"
                )
            if not isinstance(inner, dict):
                raise ReplayError(f"{where}: {key!r} must hold an object of fields, got {inner!r}")
            try:
                return cls(**inner)
            except (TypeError, ValueError) as exc:
                raise ReplayError(f"{where}: cannot rebuild {cls.__name__}: {exc}") from exc
    if isinstance(value, str) and value.startswith("data(") and value.endswith(")"):
        raise ReplayError(
            f"{where}: the value was drawn interactively during the test (st.data()) and the "
            f"record holds only its repr {value[:40]!r}; this step cannot be replayed"
        )
    return value


def _remote_target(failure: Failure, kind: str, sut: str | None, device: Any, path: Any) -> Any:
    """The responder to replay a device record on: ``device`` (from --device-*), else the recorded one;
    None for the in-process device (a ``--sut`` device factory wins over both)."""
    from teeio_conformance.conformance.remote import DeviceTarget
    from teeio_conformance.contract.errors import InvalidArgument

    if device is not None and device.remote and kind != "device":
        raise ReplayError(f"{path}: a {kind} record; --device-spawn / --device-at apply to device records")
    if kind != "device" or sut is not None:
        return None
    if device is not None and device.remote:
        return device
    try:
        target = DeviceTarget.from_spec(failure.device)
    except InvalidArgument as exc:
        raise ReplayError(f"{path}: {exc}") from None
    return target if target.remote else None


def prepare(
    path: str | os.PathLike[str],
    sut: str | None = None,
    *,
    timeout: float = 5.0,
    device: Any = None,
    trust_record: bool = False,
) -> Prepared:
    """Read and check the record and the SUT; raise :class:`ReplayError` (or its base) on anything wrong.

    ``device`` (a :class:`conformance.remote.DeviceTarget`) replays a device record on a responder over
    the socket; without it, a record of such a run replays on the responder it names -- only with
    ``trust_record`` (:class:`ConsentNeeded` otherwise), as does a record's SUT that is not the suite's own."""
    failure = load_failure(path)
    kind = machine_kind(failure)
    if not trust_record:
        wanted = recorded_actions(failure, sut, device)
        if wanted:
            raise ConsentNeeded(
                f"{path}: replay runs nothing a record names without consent; it would "
                + "; ".join(wanted)
                + ". Give the SUT or responder on the command line (--sut, --device-spawn, --device-at, as the "
                "report's replay command does), or --trust-record to run what the record names"
            )
    profile = failure.profile
    if not profile:
        raise ReplayError(f"{path}: field 'profile' is missing; cannot tell which platform profile to replay")
    from teeio_conformance.contract.profiles import PROFILES

    if profile not in PROFILES:  # else the SUT would be blamed for refusing a profile that does not exist
        raise ReplayError(f"{path}: field 'profile' must be one of {', '.join(sorted(PROFILES))}, got {profile!r}")
    factory: Callable[..., Any] | None = None
    remote = _remote_target(failure, kind, sut, device, path)
    if remote is not None:
        from teeio_conformance.conformance.remote import RemoteDeviceMachine, config_for

        spec = remote.name
        cfg = config_for(remote.factory(), profile=profile, timeout=timeout)
        machine: type = type("ReplayRemoteDeviceMachine", (RemoteDeviceMachine,), {"config": cfg})
    elif kind == "device" and sut is None:
        spec = REFERENCE_DEVICE  # the device machine drives a device alone, not the recorded stack
        machine = _machine_class(kind, factory, profile, timeout, failure.num_vfs)
    else:
        spec = sut or failure.sut
        try:
            factory = load_factory(spec)
        except SutLoadError as exc:
            raise ReplayError(f"{exc}" if sut else f"{path}: recorded SUT unusable here: {exc}") from exc
        machine = _machine_class(kind, factory, profile, timeout, failure.num_vfs)
    module = _machine_module(kind)
    types = {  # handle types a record may encode as {"__slot__": {...}} (recording.encode_value)
        name.lower(): obj
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and attrs.has(obj)
        and obj.__module__ == module.__name__
        and not name.endswith("Config")
    }
    steps = []
    for i, step in enumerate(failure.steps):
        method = step["method"]
        where = f"{path}: steps[{i}] ({method})"
        fn = getattr(machine, method, None)
        if not callable(fn) or not any(hasattr(fn, m) for m in _STEP_MARKERS):
            raise ReplayError(f"{where}: the {kind} machine has no step {method!r}")
        kwargs = {k: _decode(v, types, f"{where} argument {k!r}") for k, v in dict(step["kwargs"]).items()}
        try:
            inspect.signature(fn).bind(None, **kwargs)
        except TypeError as exc:
            raise ReplayError(f"{where}: arguments do not fit the {kind} machine's step: {exc}") from exc
        _check_argument_values(fn, kwargs, f"{path}: steps[{i}].kwargs", kind, method)
        steps.append((method, kwargs))
    return Prepared(failure=failure, kind=kind, sut=spec, machine=machine, steps=tuple(steps))


def _fits(value: Any, hint: Any) -> bool:
    """Does ``value`` have the type the step's annotation asks for (bool is no int here, as in JSON)?"""
    if hint is Any:
        return True
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _check_argument_values(fn: Any, kwargs: dict[str, Any], where: str, kind: str, method: str) -> None:
    """Each argument of a recorded step has the step's type and, where the machine draws it from a fixed
    set, is one of that set: a record that does not fit is the record's problem (exit 2), not a failure
    of the SUT -- the machine would crash on it and the crash would be blamed on the SUT."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: the signature check above is all there is
        hints = {}
    drawn = getattr(getattr(fn, "hypothesis_stateful_rule", None), "arguments_strategies", {}) or {}
    for name, value in kwargs.items():
        hint = hints.get(name, Any)
        if not _fits(value, hint):
            want = getattr(hint, "__name__", None) or str(hint)
            raise ReplayError(
                f"{where}.{name}: the {kind} machine's step {method!r} takes {want}, got "
                f"{type(value).__name__} {str(value)[:60]!r}"
            )
        choices = _choices(drawn.get(name))
        if choices is not None and value not in choices:
            raise ReplayError(
                f"{where}.{name}: the {kind} machine's step {method!r} takes one of "
                f"{', '.join(map(repr, choices))[:200]}, got {str(value)[:60]!r}"
            )


def _choices(strategy: Any) -> tuple[Any, ...] | None:
    """The values of a plain ``st.sampled_from(...)``; None for any other strategy."""
    inner: Any = getattr(strategy, "wrapped_strategy", strategy)
    if type(inner).__name__ != "SampledFromStrategy" or getattr(inner, "_transformations", None):
        return None
    elements = getattr(inner, "elements", None)
    return tuple(elements) if isinstance(elements, tuple | list) else None


def _classify(exc: BaseException) -> tuple[str, str]:
    """(rule ID, detail) of a step's exception, as the plugin names it in failure records."""
    from teeio_conformance.conformance.harness import harness_rule_id
    from teeio_conformance.conformance.rules import RuleViolation

    if isinstance(exc, RuleViolation):
        return exc.rule.id, f"{exc.rule.title}: {exc.detail}"
    if isinstance(exc, AssertionError) and hasattr(type(exc), "rule_id"):
        return harness_rule_id(exc), str(exc)
    return "SUT-ERROR", f"{type(exc).__name__}: {exc}"


def execute(prepared: Prepared) -> ReplayResult:
    """Run a prepared record; the machine's own failures are results, not exceptions."""
    f = prepared.failure
    base = {"recorded_rule_id": f.rule_id, "sut": prepared.sut}
    broken: tuple[str, str, int, str] | None = None
    steps_run = 0
    with verdicts_untouched():
        try:
            machine = prepared.machine()
        except AssertionError as exc:  # the SUT could not be built or snapshot: its failure, as when recorded
            rule_id, detail = _classify(exc)
            broken = (rule_id, detail, 0, "setup")
        except Exception as exc:
            raise ReplayError(
                f"SUT {prepared.sut}: building the {prepared.kind} machine failed: {type(exc).__name__}: {exc}"
            ) from exc
        for method, kwargs in prepared.steps if broken is None else ():
            steps_run += 1
            try:
                getattr(machine, method)(**kwargs)
            except Exception as exc:
                rule_id, detail = _classify(exc)
                also = dict(getattr(exc, "teeio_broken", ()))  # every rule the step broke, not only the first
                if f.rule_id in also:
                    rule_id, detail = f.rule_id, also[f.rule_id]
                broken = (rule_id, detail, steps_run, method)
                break
        try:
            if steps_run or broken is None:
                machine.teardown()
        except Exception as exc:
            if broken is None:
                rule_id, detail = _classify(exc)
                broken = (rule_id, detail, steps_run, "teardown")
    total = len(prepared.steps)
    if broken is None:
        return ReplayResult(
            still_fails=False,
            rule_id=None,
            steps_run=steps_run,
            **base,
            message=f"passes now: all {total} recorded steps ran on {prepared.sut} "
            f"(profile {f.profile}) without breaking a rule (recorded: {f.rule_id})",
        )
    rule_id, detail, at, method = broken
    same = "" if rule_id == f.rule_id else f", not the recorded {f.rule_id}"
    return ReplayResult(
        still_fails=True,
        rule_id=rule_id,
        steps_run=steps_run,
        **base,
        message=f"still fails with {rule_id}{same} at step {at} of {total} ({method}) on "
        f"{prepared.sut} (profile {f.profile}): {detail}",
    )


def replay(
    path: str | os.PathLike[str],
    sut: str | None = None,
    *,
    timeout: float = 5.0,
    device: Any = None,
    trust_record: bool = False,
) -> ReplayResult:
    """Replay the failure recorded in ``path`` on a fresh machine around ``sut`` (default: the recorded SUT
    if it is the suite's own, or with ``trust_record``), or, for a device record, on the responder
    ``device`` names (default: the recorded one, with ``trust_record``)."""
    return execute(prepare(path, sut, timeout=timeout, device=device, trust_record=trust_record))


# ---------------------------------------------------------------------------- CLI: teeio-conformance replay


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a failure record, failures/<name>.json of a report directory")
    parser.add_argument(
        "--sut",
        default=None,
        metavar="MODULE:FACTORY",
        help="replay on this SUT (device records: a device factory); without it, the record's SUT is used only "
        "if it is the suite's own or with --trust-record",
    )
    parser.add_argument(
        "--trust-record",
        action="store_true",
        help="run the SUT factory and the responder command or address the record names (printed first); "
        "without it replay runs nothing a record names",
    )
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="per-step time limit for the SUT (default 5)",
    )
    parser.add_argument(
        "--device-spawn",
        default=None,
        metavar="CMD",
        help="device records: replay on a responder CMD starts (it prints a JSON ready line, as serve-device does)",
    )
    parser.add_argument(
        "--device-at", default=None, metavar="HOST:PORT", help="device records: replay on the responder listening there"
    )
    parser.add_argument(
        "--device-functions", default=None, metavar="ID,...", help="with --device-at: its TDIs' FUNCTION_IDs, PF first"
    )


def run(args: argparse.Namespace) -> int:
    """1 if it still fails, 0 if it passes now, 2 for a bad file or --sut (one line on stderr)."""
    from teeio_conformance.conformance.remote import DeviceTarget
    from teeio_conformance.contract.errors import InvalidArgument

    try:
        device = DeviceTarget.from_options(
            getattr(args, "device_spawn", None),
            getattr(args, "device_at", None),
            getattr(args, "device_functions", None),
        )
        if device.remote and args.sut:
            raise InvalidArgument("--sut names an in-process device factory; --device-spawn / --device-at a responder")
    except InvalidArgument as exc:
        sys.stderr.write(f"teeio-conformance replay: {exc}\n")
        return 2
    trust = bool(getattr(args, "trust_record", False))
    try:
        if trust:
            for line in recorded_actions(load_failure(args.file), args.sut, device):
                sys.stderr.write(f"teeio-conformance replay: --trust-record: about to {line}\n")
            sys.stderr.flush()
        result = replay(args.file, args.sut, timeout=args.step_timeout, device=device, trust_record=trust)
    except ReportInputError as exc:
        sys.stderr.write(f"teeio-conformance replay: {exc}\n")
        return 2
    verdict = "STILL FAILS" if result.still_fails else "PASSES"
    sys.stdout.write(f"{verdict}: {result.message}\n")
    return 1 if result.still_fails else 0
