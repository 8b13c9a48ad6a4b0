"""The terminal's view of a machine failure: one compact card per failure, identical failures grouped.

What an implementer needs first is which rule broke, where the rule comes from, the shrunk steps that
break it, and how to run them again on their build -- not the traceback through the suite's own code
(``pytest -v`` still shows that).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["card", "grouped", "signature", "summary_entry"]


def signature(record: Mapping[str, Any]) -> str:
    """Two failures are the same when they break the same rule by the same steps on the same machine."""
    parts = [record.get("rule_id"), record.get("machine_kind"), record.get("steps")]
    key = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _failure(record: Mapping[str, Any], path: str | None) -> Any:
    from teeio_conformance.reports.model import Failure

    name = os.path.basename(path)[:-5] if path else "failure"
    return Failure.from_json(dict(record), name=name, origin=path or "failure")


def _level(rule_id: str) -> str:
    from teeio_conformance.conformance.rules import BY_ID

    rule = BY_ID.get(rule_id)
    return f" ({rule.level.value})" if rule is not None else ""


def card(record: Mapping[str, Any], path: str | None, *, same_as: str | None = None) -> str:
    """The failure as a dozen lines: rule, source, message, shrunk steps, record and replay command."""
    from teeio_conformance.reports.writer import replay_test_filename

    f = _failure(record, path)
    head = f"{f.rule_id}{_level(f.rule_id)} {f.rule_title}".rstrip()
    where = f"profile {f.profile}, machine {record.get('machine_kind') or f.machine}, SUT {f.sut}"
    if same_as is not None:
        lines = [head, f"  the same failure (rule and shrunk steps) as {same_as}; {where}"]
        if path:
            lines.append(f"  record: {path}")
        return "\n".join(lines)
    steps = [line for line in f.program_lines() if line not in ("state = Machine()", "state.teardown()")]
    lines = [
        head,
        f"  source: {f.rule_source or '-'}",
        f"  {where}",
        f"  broken by step {f.action!r}: {f.message}",
        f"  shrunk steps ({len(f.steps)}):",
        *(f"    {line}" for line in steps),
    ]
    if path:
        lines += [
            f"  record: {path}",
            f"  replay: {f.replay_command(record=path)}",
            f"  regression test (written at the end of the session): pytest "
            f"{os.path.join(os.path.dirname(path), replay_test_filename(f.name))}",
        ]
    else:
        lines.append("  record: none kept (run with --report-dir DIR to keep one, with a replay command)")
    return "\n".join(lines)


def summary_entry(record: Mapping[str, Any], path: str | None, key: str) -> dict[str, Any]:
    """What the end-of-session summary needs of one failure (JSON: it crosses xdist's channel)."""
    return {
        "key": key,
        "rule_id": record.get("rule_id"),
        "title": record.get("rule_title"),
        "test": record.get("test"),
        "steps": len(record.get("steps") or ()),
        "record": path,
    }


def grouped(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per distinct failure, naming every test it came from (and the first record)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for e in entries:
        groups.setdefault(str(e["key"]), []).append(e)
    out = []
    for same in groups.values():
        first = same[0]
        tests = ", ".join(str(e["test"]) for e in same)
        record = next((e["record"] for e in same if e.get("record")), None)
        out.append(
            f"{first['rule_id']} {first['title']}: {first['steps']} shrunk step(s), in {len(same)} test(s): {tests}"
            + (f"\n    record: {record}" if record else "")
        )
    return out
