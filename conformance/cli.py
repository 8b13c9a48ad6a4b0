"""``teeio-conformance``: run the suite, print the flow, list rules, serve the reference device.

Every subcommand turns bad arguments into a one-line error and exit status 2 (argparse's
convention), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _cmd_flow(args: argparse.Namespace) -> int:
    from teeio_conformance.reference_impl.lifecycle import run_lifecycle
    from teeio_conformance.reference_impl.stack import StackConfig, build_stack
    from teeio_conformance.reports.swimlane import render_text

    stack = build_stack(StackConfig(profile=args.profile))
    run_lifecycle(stack)
    if args.json:
        json.dump(stack.trace.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        title = f"TEE-IO lifecycle, {stack.profile.title} profile (flow.md, corrected)"
        sys.stdout.write(render_text(list(stack.trace), title=title, max_depth=args.depth))
        from teeio_conformance.reference_impl.lifecycle import merge_note

        sys.stdout.write(merge_note(args.profile))
    return 0


def _cmd_rules(args: argparse.Namespace) -> int:
    from teeio_conformance.conformance.rules import CATALOGUE

    if args.json:
        json.dump([r.to_json() for r in CATALOGUE], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for r in CATALOGUE:
        profiles = ",".join(sorted(r.profiles))
        sys.stdout.write(f"{r.id:<10} {r.level.value:<7} [{profiles}] {r.title}\n{'':<11}source: {r.source}\n")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import pytest

    from teeio_conformance.conformance.plugin import suite_path

    if args.workers < 0:
        return _usage("run", f"-n/--workers must be 0 or more, got {args.workers}")
    if args.workers:
        try:
            importlib.import_module("xdist")
        except ImportError:
            return _usage("run", f"-n {args.workers} needs pytest-xdist (pip install 'teeio-conformance[test]')")
    extra = [a for a in args.pytest_args if a != "--"]
    # the installed suite, unless the extra pytest arguments name test paths themselves
    paths = [] if any(not a.startswith("-") and os.path.exists(a.split("::")[0]) for a in extra) else [suite_path()]
    argv = [
        *paths,
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        f"--hypothesis-profile={args.hypothesis_profile}",
        f"--tdisp-profile={args.tdisp_profile}",
        "-q",
    ]
    if args.sut:
        argv.append(f"--sut={args.sut}")
    if args.report_dir:
        argv.append(f"--report-dir={args.report_dir}")  # the plugin writes the whole report set
    if args.workers:
        argv += ["-n", str(args.workers)]
    if args.example_db:
        argv.append(f"--example-db={args.example_db}")
    for option in ("device_spawn", "device_at", "device_functions"):
        if getattr(args, option, None) is not None:
            argv.append(f"--{option.replace('_', '-')}={getattr(args, option)}")
    if getattr(args, "device_plaintext", False):
        argv.append("--device-plaintext")
    status = int(pytest.main([*argv, *extra]))
    if args.report_dir:
        return _report_after_run(args, status)
    return status


def _usage(command: str, message: str) -> int:
    """A misuse of a subcommand: one line on stderr, exit status 2 (argparse's convention)."""
    sys.stderr.write(f"teeio-conformance {command}: error: {message}\n")
    return 2


class _Help(argparse.HelpFormatter):
    """Every option's default in ``--help``, where it has one worth saying (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and "default" not in text
            and "%(default)" not in text
        ):
            text += " (default: %(default)s)"
        return text


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("teeio-conformance")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a tree that is not installed
        return "unknown (not installed)"


def _report_after_run(args: argparse.Namespace, status: int) -> int:
    """Write the report set, even for a run that could not start; the exit status is the report's (how
    the run ended, reports/outcome.py), or pytest's when no report could be written."""
    from teeio_conformance.conformance.sut import DEFAULT_SUT
    from teeio_conformance.reports import writer
    from teeio_conformance.reports.model import ReportInputError, load_report_dir
    from teeio_conformance.reports.outcome import write_not_started

    try:
        os.makedirs(args.report_dir, exist_ok=True)
    except OSError:
        return status  # not a directory we can use: pytest's one-line usage error has said so
    profiles = ["tdx", "sev-tio", "cca"] if args.tdisp_profile == "all" else [args.tdisp_profile]
    try:
        write_not_started(
            args.report_dir,
            f"pytest ended with status {status} before the suite started (its message is above)",
            sut=args.sut or DEFAULT_SUT,
            profiles=profiles,
        )
    except OSError as exc:
        sys.stderr.write(f"teeio-conformance run: cannot write into {args.report_dir}: {exc}\n")
    written = writer.run(argparse.Namespace(report_dir=args.report_dir))
    if written not in (0, None):
        return written if status == 0 else status
    try:
        return load_report_dir(args.report_dir).exit_status()
    except ReportInputError:
        return status


def _build_parser() -> argparse.ArgumentParser:
    from teeio_conformance.contract.profiles import PROFILES

    p = argparse.ArgumentParser(prog="teeio-conformance", description=__doc__, formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_Help)

    f = add("flow", "print the reference lifecycle as a swimlane chart (or --json trace)")
    f.add_argument("--profile", choices=sorted(PROFILES), default="tdx", help="platform profile")
    f.add_argument("--json", action="store_true", help="print the trace events as a JSON array")
    f.add_argument("--depth", type=int, default=None, help="hide crossings nested deeper than this")
    f.set_defaults(func=_cmd_flow)

    r = add("rules", "list the rule catalogue")
    r.add_argument("--json", action="store_true", help="print the catalogue as a JSON array")
    r.set_defaults(func=_cmd_rules)

    run = add("run", "run the conformance suite (pytest) against a SUT")
    run.add_argument(
        "--sut",
        default=None,
        metavar="MODULE:FACTORY",
        help="the system under test (default: the reference, teeio_conformance.reference_impl.stack:make_sut)",
    )
    run.add_argument(
        "--tdisp-profile", default="all", choices=[*sorted(PROFILES), "all"], help="platform profile(s) to test"
    )
    run.add_argument(
        "--hypothesis-profile",
        default="ci",
        choices=["ci", "dev", "thorough"],
        help="Hypothesis settings: ci (derandomized, 300 examples), dev (random, example database), thorough",
    )
    run.add_argument(
        "--report-dir",
        default=None,
        metavar="DIR",
        help="write report.html, report.json, junit.xml, report.txt and failures/ there (default: none)",
    )
    run.add_argument("-n", "--workers", type=int, default=0, help="pytest-xdist worker processes (0: none)")
    run.add_argument(
        "--example-db",
        default=None,
        metavar="DIR|redis://HOST:PORT",
        help="Hypothesis example database shared between runs and machines (default: the profile's)",
    )
    run.add_argument(
        "--device-spawn",
        default=None,
        metavar="CMD",
        help="the device machine drives a responder CMD starts per example (spdm-emu socket; JSON ready line)",
    )
    run.add_argument("--device-at", default=None, metavar="HOST:PORT", help="... or one listening there")
    run.add_argument("--device-functions", default=None, metavar="ID,...", help="with --device-at: its TDIs, PF first")
    run.add_argument(
        "--device-plaintext", action="store_true", help="the responder has no SPDM secure sessions (TDISP in the clear)"
    )
    run.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments after --")
    run.set_defaults(func=_cmd_run)

    for name, module, text in (
        ("report", "teeio_conformance.reports.writer", "merge a report directory into JSON, JUnit, text, HTML"),
        ("compare", "teeio_conformance.reports.compare", "which rules changed verdict between two report.json"),
        ("replay", "teeio_conformance.conformance.replay", "re-run a failure's replay file against a SUT"),
        ("explore", "teeio_conformance.conformance.explore", "every step sequence to --depth K, breadth-first"),
        ("check-trace", "teeio_conformance.conformance.traces.check", "check a recorded trace (ndjson or strace log)"),
        ("export-trace", "teeio_conformance.conformance.traces.export", "write the trace of a flow or a replay"),
        ("import-strace", "teeio_conformance.conformance.traces.strace", "an `strace -f` log as a trace file"),
    ):
        mod = importlib.import_module(module)
        sp = add(name, text)
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.run)

    try:
        _server: Any = importlib.import_module("teeio_conformance.reference_impl.transport.server")
    except ImportError:  # pragma: no cover - the transport is optional
        _server = None
    if _server is not None:
        s = add("serve-device", "serve the reference device over the spdm-emu socket protocol")
        _server.add_arguments(s)
        s.add_argument("--config", default=None, help="JSON file with DeviceConfig fields")
        s.add_argument(
            "--profile",
            choices=sorted(PROFILES),
            default=None,
            help="behave as the reference device does under this platform profile (e.g. tdx: STOP in "
            "CONFIG_UNLOCKED succeeds); a --config field wins",
        )
        s.add_argument(
            "--mutant",
            default=None,
            metavar="NAME",
            help="serve one of the deliberately broken devices of the reference's mutants (device-...) "
            "instead, to see a failure over the socket",
        )
        s.set_defaults(func=_cmd_serve)
    return p


def _cmd_serve(args: argparse.Namespace) -> int:
    server: Any = importlib.import_module("teeio_conformance.reference_impl.transport.server")

    from teeio_conformance.contract.profiles import StopInUnlocked, get_profile
    from teeio_conformance.reference_impl.device.device import DeviceConfig
    from teeio_conformance.reference_impl.transport.served import ServedDevice, served_device_factory

    fields: dict[str, object] = {}
    if getattr(args, "asym", None):  # the device's identity on the curve the served suite signs with
        fields["identity_curve"] = server.suite_from_args(args).curve_name
    if args.profile:
        idempotent = get_profile(args.profile).stop_in_unlocked is StopInUnlocked.IDEMPOTENT
        fields["stop_in_unlocked_idempotent"] = idempotent
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as fh:
                given = json.load(fh)
            if not isinstance(given, dict):
                raise ValueError("top level must be a JSON object")
            fields.update(given)
            config = DeviceConfig(**fields)  # type: ignore[arg-type]
        except (OSError, ValueError, TypeError) as exc:
            sys.stderr.write(f"teeio-conformance serve-device: bad --config {args.config}: {exc}\n")
            return 2
    else:
        config = DeviceConfig(**fields)  # type: ignore[arg-type]
    cls: type = ServedDevice
    if args.mutant:
        from teeio_conformance.reference_impl.mutants import MUTANTS

        device_mutants = {m.name: m.device for m in MUTANTS if isinstance(m.device, type)}
        broken = device_mutants.get(args.mutant)
        if broken is None:
            sys.stderr.write(
                f"teeio-conformance serve-device: no device mutant {args.mutant!r}; "
                f"one of: {', '.join(sorted(device_mutants))}\n"
            )
            return 2
        cls = type(f"Served{broken.__name__}", (broken, ServedDevice), {})
    return int(server.run(args, served_device_factory(config, cls=cls)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _closed_pipe()
    return status


def _closed_pipe() -> int:
    """The reader went away (``teeio-conformance rules | head``): stop quietly, as ``cat`` does. Point
    stdout at /dev/null so the interpreter's final flush does not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (a test's capture)
        pass
    return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
