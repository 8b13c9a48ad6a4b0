"""The recorded-trace file: trace events as ndjson, one JSON object a line (format ``teeio-trace/1``).

What ``teeio-conformance export-trace`` writes, what ``check-trace`` reads, and what an importer (a syscall
log, a QEMU trace) or an adapter of a real system produces. docs/sut-contract.md ("Recorded traces") is the
reference; in short:

* an optional first line, the header: ``{"format": "teeio-trace/1", "profile": "tdx", "offers": {...},
  "source": "..."}`` -- ``offers`` says what the recording can show (:class:`~.tiers.Offers` as JSON:
  ``crossings`` a list or null for all, ``errors`` a bool, ``snapshots`` a list);
* then one event a line: ``seq, caller, callee, operation, arguments, keywords, outcome, result, error,
  message, depth, step`` as in :class:`~.trace.Event`, plus optional ``action`` / ``action_seq`` (the machine
  step the event belongs to) and ``origin`` (where the recorder saw it, e.g. ``qemu.strace:41``).

Values keep their types through the file: JSON scalars as they are, and tagged objects for the rest --
``{"$bytes": hex}``, ``{"$tuple": [...]}``, ``{"$set": [...]}``, ``{"$dict": [[k, v], ...]}``,
``{"$enum": "module:Class", "name": N}``, ``{"$object": "module:Class", "fields": {...}}``. Objects of the
contract's own types (a GuestRequest, a TLP) come back as those types; any other object comes back as a
:class:`Record` with the same fields, enough for a rule that reads attributes.
"""

from __future__ import annotations

import enum
import importlib
import itertools
import json
from collections.abc import Iterable
from typing import IO, Any

import attrs

from teeio_conformance.contract.errors import CodecError, StackError
from teeio_conformance.contract.tiers import Offers
from teeio_conformance.contract.trace import Event

__all__ = [
    "FORMAT",
    "Record",
    "TraceFileError",
    "TraceHeader",
    "TracedEvent",
    "decode_value",
    "encode_event",
    "encode_value",
    "offers_from_json",
    "offers_to_json",
    "read_trace",
    "write_trace",
]

FORMAT = "teeio-trace/1"
_CONTRACT = "teeio_conformance.contract."
_MAX_DEPTH = 32


class TraceFileError(CodecError):
    """A trace file line that is not an event of the schema; the message names the line."""


class Record:
    """An object of a type outside the contract, as the trace file kept it: its type name and fields."""

    def __init__(self, type_name: str, fields: dict[str, Any]) -> None:
        self._type = type_name
        self._fields = dict(fields)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_fields"][name]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('_type', 'Record')} has no field {name!r}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and (self._type, self._fields) == (other._type, other._fields)

    def __hash__(self) -> int:
        return hash(self._type)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._fields.items())
        return f"{self._type.rpartition(':')[2]}({inner})"


def _qualname(t: type) -> str:
    return f"{t.__module__}:{t.__qualname__}"


def encode_value(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON data that :func:`decode_value` turns back into an equal value (types kept)."""
    if _depth > _MAX_DEPTH:
        return {"$repr": repr(value)[:200]}
    if isinstance(value, enum.Enum):  # before int: an IntEnum keeps its type
        return {"$enum": _qualname(type(value)), "name": value.name}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, list):
        return [encode_value(v, _depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode_value(v, _depth + 1) for v in value]}
    if isinstance(value, set | frozenset):
        return {"$set": sorted((encode_value(v, _depth + 1) for v in value), key=repr)}
    if isinstance(value, dict):
        return {"$dict": [[encode_value(k, _depth + 1), encode_value(v, _depth + 1)] for k, v in value.items()]}
    if isinstance(value, Record):
        return {"$object": value._type, "fields": {k: encode_value(v, _depth + 1) for k, v in value._fields.items()}}
    if attrs.has(type(value)):
        fields = {f.name: encode_value(getattr(value, f.name), _depth + 1) for f in attrs.fields(type(value))}
        return {"$object": _qualname(type(value)), "fields": fields}
    handle = getattr(value, "handle", None)
    if isinstance(handle, str | int):
        return handle
    return {"$repr": repr(value)[:200]}


def _contract_type(name: str) -> Any:
    """The contract's class ``module:Qual`` names, or None (only the contract package is ever imported)."""
    module, _, qual = name.partition(":")
    if not module.startswith(_CONTRACT) or not qual or "." in qual:
        return None
    try:
        return getattr(importlib.import_module(module), qual, None)
    except ImportError:
        return None


def decode_value(data: Any, _depth: int = 0) -> Any:
    """The value :func:`encode_value` encoded. Raises :class:`TraceFileError` on a malformed tag."""
    if _depth > _MAX_DEPTH:
        raise TraceFileError("value nested too deeply")
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if isinstance(data, list):
        return [decode_value(v, _depth + 1) for v in data]
    if not isinstance(data, dict):
        raise TraceFileError(f"not a value of the trace schema: {data!r:.80}")
    try:
        if "$bytes" in data:
            return bytes.fromhex(data["$bytes"])
        if "$tuple" in data:
            return tuple(decode_value(v, _depth + 1) for v in data["$tuple"])
        if "$set" in data:
            return frozenset(decode_value(v, _depth + 1) for v in data["$set"])
        if "$dict" in data:
            return {decode_value(k, _depth + 1): decode_value(v, _depth + 1) for k, v in data["$dict"]}
        if "$enum" in data:
            cls = _contract_type(str(data["$enum"]))
            if isinstance(cls, type) and issubclass(cls, enum.Enum) and data["name"] in cls.__members__:
                return cls[data["name"]]
            return str(data["name"])
        if "$object" in data:
            name = str(data["$object"])
            fields = {str(k): decode_value(v, _depth + 1) for k, v in dict(data["fields"]).items()}
            cls = _contract_type(name)
            if isinstance(cls, type) and attrs.has(cls):
                try:
                    return cls(**fields)
                except (TypeError, ValueError, StackError):
                    pass  # a field the type refuses: keep the data as a record
            return Record(name, fields)
        if "$repr" in data:
            return str(data["$repr"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceFileError(f"malformed tagged value {data!r:.80}: {exc}") from exc
    raise TraceFileError(f"an object value must be tagged ($bytes, $tuple, $set, $dict, $enum, $object): {data!r:.80}")


@attrs.frozen(kw_only=True)
class TraceHeader:
    format: str = FORMAT
    profile: str | None = None
    offers: Offers | None = None  # None: a full trace (every crossing, typed errors, no snapshots)
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "profile": self.profile, "source": self.source}
        if self.offers is not None:
            out["offers"] = offers_to_json(self.offers)
        return out


@attrs.frozen(kw_only=True)
class TracedEvent:
    """One event of a trace file and where it came from."""

    event: Event
    line: int  # line of the trace file (1-based)
    action: str | None = None
    action_seq: int | None = None
    origin: str | None = None  # where the recorder saw it (an importer's source line)


def offers_to_json(offers: Offers) -> dict[str, Any]:
    return {
        "crossings": None if offers.crossings is None else sorted(offers.crossings),
        "errors": offers.errors,
        "snapshots": sorted(offers.snapshots),
    }


def offers_from_json(data: Any) -> Offers:
    if not isinstance(data, dict):
        raise TraceFileError(f"'offers' must be an object, got {data!r:.80}")
    try:
        return Offers(
            crossings=data.get("crossings"), errors=bool(data.get("errors", True)), snapshots=data.get("snapshots", ())
        )
    except (TypeError, ValueError, StackError) as exc:  # InvalidArgument from the tiers' converters
        raise TraceFileError(f"bad 'offers': {exc}") from exc


def encode_event(
    ev: Event, *, action: str | None = None, action_seq: int | None = None, origin: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": ev.seq,
        "caller": ev.caller,
        "callee": ev.callee,
        "operation": ev.operation,
        "arguments": [encode_value(a) for a in ev.arguments],
        "keywords": {k: encode_value(v) for k, v in ev.keywords},
        "outcome": ev.outcome,
        "result": encode_value(ev.result),
        "error": ev.error,
        "message": ev.message,
        "depth": ev.depth,
        "step": ev.step,
    }
    if action is not None:
        out["action"] = action
        out["action_seq"] = action_seq
    if origin is not None:
        out["origin"] = origin
    return out


def write_trace(fh: IO[str], header: TraceHeader, lines: Iterable[dict[str, Any]]) -> int:
    """Write the header and the encoded events; return how many events were written."""
    fh.write(json.dumps(header.to_json(), sort_keys=True) + "\n")
    n = 0
    for obj in lines:
        fh.write(json.dumps(obj, sort_keys=True) + "\n")
        n += 1
    return n


def _field(obj: dict[str, Any], key: str, kinds: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in obj:
        if default is ...:
            raise TraceFileError(f"{where}: field {key!r} is missing")
        return default
    value = obj[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is int):
        raise TraceFileError(f"{where}: field {key!r} must be {kinds}, got {value!r:.60}")
    return value


def _decode_event(obj: Any, where: str, line: int) -> TracedEvent:
    if not isinstance(obj, dict):
        raise TraceFileError(f"{where}: an event must be a JSON object")
    outcome = _field(obj, "outcome", str, where, "ok")
    if outcome not in ("ok", "error"):
        raise TraceFileError(f"{where}: field 'outcome' must be 'ok' or 'error', got {outcome!r}")
    try:
        arguments = tuple(decode_value(a) for a in _field(obj, "arguments", list, where, []))
        keywords = tuple((str(k), decode_value(v)) for k, v in _field(obj, "keywords", dict, where, {}).items())
        result = decode_value(obj.get("result"))
    except TraceFileError as exc:
        raise TraceFileError(f"{where}: {exc}") from exc
    ev = Event(
        seq=_field(obj, "seq", int, where),
        caller=_field(obj, "caller", str, where),
        callee=_field(obj, "callee", str, where),
        operation=_field(obj, "operation", str, where),
        arguments=arguments,
        keywords=keywords,
        outcome=outcome,
        result=result,
        error=_field(obj, "error", (str, type(None)), where, None),
        message=_field(obj, "message", str, where, ""),
        depth=_field(obj, "depth", int, where, 0),
        step=_field(obj, "step", (str, type(None)), where, None),
    )
    return TracedEvent(
        event=ev,
        line=line,
        action=_field(obj, "action", (str, type(None)), where, None),
        action_seq=_field(obj, "action_seq", (int, type(None)), where, None),
        origin=_field(obj, "origin", (str, type(None)), where, None),
    )


def read_trace(lines: Iterable[str], *, name: str = "trace") -> tuple[TraceHeader, list[TracedEvent]]:
    """Parse a trace file; events come back sorted by ``seq`` (each keeps its line). Raises TraceFileError
    naming the line for anything that is not the schema, and for two events with one seq."""
    header = TraceHeader()
    events: list[TracedEvent] = []
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{name}:{n}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceFileError(f"{where}: not JSON ({exc.msg}, column {exc.colno})") from exc
        if isinstance(obj, dict) and "format" in obj:
            if obj["format"] != FORMAT:
                raise TraceFileError(f"{where}: format {obj['format']!r} is not {FORMAT!r}")
            if events:
                raise TraceFileError(f"{where}: the header must come before the first event")
            offers = offers_from_json(obj["offers"]) if obj.get("offers") is not None else None
            profile = obj.get("profile")
            header = TraceHeader(
                profile=profile if isinstance(profile, str) else None, offers=offers, source=str(obj.get("source", ""))
            )
            continue
        events.append(_decode_event(obj, where, n))
    events.sort(key=lambda t: t.event.seq)
    for a, b in itertools.pairwise(events):
        if a.event.seq == b.event.seq:
            raise TraceFileError(f"{name}:{b.line}: seq {b.event.seq} already used on line {a.line}")
    return header, events
