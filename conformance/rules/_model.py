"""What a rule is, what it sees, and how the catalogue is checked after every step.

A rule sees exactly two things (architecture: "rules never import the reference implementation's
internals"): the **trace** -- the events of the step just taken and the history before it -- and
the **snapshot** of the stack before and after that step. Its check returns ``None`` when the step
did not touch what the rule is about, :data:`HELD` when the rule was exercised and held, or a
message saying how it was broken.

Rules are indexed by the operations they care about (``on``), so a step is checked only against
the rules its events can concern; rules with ``on=None`` look at every step's snapshots.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from teeio_conformance.contract.tiers import EVERYTHING, Needs, Offers, missing
from teeio_conformance.contract.trace import Event

__all__ = [
    "HELD",
    "Area",
    "Checker",
    "Level",
    "Observation",
    "Rule",
    "RuleViolation",
    "applicable",
    "fold_history",
    "make_rule",
    "violation_type",
]

HELD = ""
"""Returned by a check that was exercised and held."""


class Level(enum.Enum):
    MUST = "MUST"
    SHOULD = "SHOULD"
    PROFILE = "PROFILE"  # a platform's own requirement, for the profiles listed


class Area(enum.Enum):
    FLOW = "ordering of the flow"
    LIFE = "host object lifetimes"
    TDISP = "TDISP state"
    IDE = "IDE and keys"
    MMIO = "dmabuf and private MMIO"
    DMA = "DMA and MMIO access"
    CONF = "confidentiality and isolation"
    DOWN = "teardown convergence"
    ERR = "error contract"
    LIVE = "liveness: the lifecycle completes on the SUT"
    ATT = "attestation evidence"


ALL_PROFILES = frozenset({"tdx", "sev-tio", "cca"})


@attrs.frozen(kw_only=True)
class Observation:
    """One step as a rule sees it."""

    profile: str
    action: str  # the machine step's name (e.g. "guest_attest")
    events: Sequence[Event]  # events completed during this step, in sequence order
    history: Sequence[Event]  # every event before this step
    before: Any  # StackSnapshot before the step
    after: Any  # StackSnapshot after the step
    error: BaseException | None  # what the step raised, if anything
    memo: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)  # shared work between rules
    carry: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)  # kept across one run's steps

    def ops(self, callee: str, operation: str, *, ok: bool | None = None) -> list[Event]:
        return [
            e for e in self.events if e.callee == callee and e.operation == operation and (ok is None or e.ok == ok)
        ]

    def parent(self, ev: Event) -> Event | None:
        """The crossing ``ev`` happened inside (its caller's operation), if it is in this step."""
        best = None
        for e in self.events:
            if e.seq < ev.seq and e.depth == ev.depth - 1 and (best is None or e.seq > best.seq):
                best = e
        return best

    def ancestors(self, ev: Event) -> list[Event]:
        out, cur = [], self.parent(ev)
        while cur is not None:
            out.append(cur)
            cur = self.parent(cur)
        return out


Check = Callable[[Observation], "str | None"]


def fold_history(o: Observation, key: str, init: Callable[[], Any], step: Callable[[Any, Event], Any]) -> Any:
    """``step`` folded over ``o.history``, resumed where the previous step of the same run left off.

    A rule that needs a fact about the whole past (the last LOCK's nonce, which session owns the keys)
    would otherwise rescan the history at every step -- quadratic in the run's length. The checker
    keeps the fold's position and value in ``o.carry``; an observation without one folds from scratch.
    The value returned is shared with later steps: callers copy before they change it."""
    n = len(o.history)
    kept = o.carry.get(key)
    pos, acc = kept if kept is not None and kept[0] <= n else (0, init())
    for e in o.history[pos:]:
        acc = step(acc, e)
    o.carry[key] = (n, acc)
    return acc


@attrs.frozen(kw_only=True)
class Rule:
    id: str
    title: str
    area: Area
    level: Level
    source: str
    check: Check = attrs.field(repr=False, eq=False)
    profiles: frozenset[str] = ALL_PROFILES
    on: frozenset[str] | None = None  # "callee.operation" names that make this rule relevant
    validator_cases: tuple[str, ...] = ()
    doc: str = ""
    needs: Needs = attrs.field(factory=Needs)  # what it reads (contract/tiers.py); default: all a stack shows

    def applies_to(self, profile: str) -> bool:
        return profile in self.profiles

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "area": self.area.name,
            "level": self.level.value,
            "profiles": sorted(self.profiles),
            "source": self.source,
            "validator_cases": list(self.validator_cases),
            "on": sorted(self.on) if self.on else None,
            "doc": self.doc,
            "needs": {
                "crossings": None if self.needs.crossings is None else sorted(self.needs.crossings),
                "errors": self.needs.errors,
                "snapshots": sorted(self.needs.snapshots),
            },
        }


def applicable(rule: Rule, offers: Offers) -> bool:
    """Can ``rule`` judge a SUT that offers ``offers``? A rule that cannot is NOT APPLICABLE there: never
    checked, never a PASS, and (unlike NOT EXERCISED) no sign that the run missed something."""
    return not missing(rule.needs, offers)


class RuleViolation(AssertionError):
    """A rule of the catalogue was broken; subclassed per rule ID so Hypothesis shrinks per rule."""

    rule_id: str = ""

    def __init__(self, rule: Rule, message: str, action: str) -> None:
        super().__init__(f"[{rule.id}] {rule.title}\n  broken by step {action!r}: {message}\n  source: {rule.source}")
        self.rule = rule
        self.detail = message
        self.action = action


_VIOLATION_TYPES: dict[str, type[RuleViolation]] = {}


def violation_type(rule_id: str) -> type[RuleViolation]:
    """One exception class per rule, so a shrink never slips from one rule's failure to another's."""
    t = _VIOLATION_TYPES.get(rule_id)
    if t is None:
        name = "Violation_" + rule_id.replace("-", "_")
        t = type(name, (RuleViolation,), {"rule_id": rule_id})
        _VIOLATION_TYPES[rule_id] = t
    return t


class Checker:
    """Checks a catalogue step by step and counts, per rule, checks, hits and failures."""

    def __init__(
        self, rules: Iterable[Rule], profile: str, *, only: frozenset[str] | None = None, offers: Offers = EVERYTHING
    ) -> None:
        self.profile = profile
        chosen = [r for r in rules if r.applies_to(profile) and (only is None or r.id in only)]
        self.rules = [r for r in chosen if applicable(r, offers)]
        self.not_applicable: frozenset[str] = frozenset(r.id for r in chosen) - {r.id for r in self.rules}
        self._always = [r for r in self.rules if r.on is None]
        self._by_op: dict[str, list[Rule]] = {}
        for r in self.rules:
            for op in r.on or ():
                self._by_op.setdefault(op, []).append(r)
        self.checked: Counter[str] = Counter()
        self.exercised: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.carry: dict[str, Any] = {}  # the rules' history folds (fold_history), kept across steps

    def relevant(self, events: Sequence[Event]) -> list[Rule]:
        seen: dict[str, Rule] = {r.id: r for r in self._always}
        for e in events:
            for r in self._by_op.get(f"{e.callee}.{e.operation}", ()):
                seen.setdefault(r.id, r)
        return list(seen.values())

    def check(self, obs: Observation) -> list[tuple[Rule, str]]:
        broken = []
        for rule in self.relevant(obs.events):
            self.checked[rule.id] += 1
            result = rule.check(obs)
            if result is None:
                continue
            self.exercised[rule.id] += 1
            if result:
                self.failed[rule.id] += 1
                broken.append((rule, result))
        return broken


def make_rule(
    id: str,
    title: str,
    area: Area,
    level: Level,
    source: str,
    check: Any,
    *,
    profiles: Any = None,
    on: Any = None,
    cases: Any = (),
    doc: str = "",
    needs: Needs | None = None,
) -> Rule:
    """A :class:`Rule` from the catalogue modules' compact arguments (the doc defaults to the check's)."""
    kw: dict[str, Any] = {} if profiles is None else {"profiles": frozenset(profiles)}
    return Rule(
        id=id,
        title=title,
        area=area,
        level=level,
        source=source,
        check=check,
        on=frozenset(on) if on else None,
        validator_cases=tuple(cases),
        doc=doc or (check.__doc__ or ""),
        needs=needs or Needs(),
        **kw,
    )
