"""Every tee-io-validator case, probed: is the case really checked by the rule that cites it? (issue 14)

For each of the 43 cases of ``../shared/design/teeio-validator-cases.md`` a *probe* builds the case's
precondition on the reference device (truthfully), then sends the case's stimulus to a device that lies
in exactly the way the case forbids -- the answer rewritten on the wire, nothing else changed -- with the
whole catalogue checked. The case is *caught* when a rule that cites it fails on that step. A case with
no assertion a device can break (``Test.IdeStream``), or whose expectation needs what no snapshot shows
(``KeyProg.6``: which streams a port has), says so instead.

``python -m teeio_conformance.conformance.validator_cases`` prints the table (``docs/validator-cases.md``
is that output; a test compares them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import attrs

from teeio_conformance.contract import ide_km as km
from teeio_conformance.contract.tdisp import codec as td

__all__ = ["CASES", "Case", "ProbeResult", "probe", "render_markdown"]

IV = (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
E = td.ErrorCode
Lie = Callable[[bytes, bytes | None], bytes | None]  # (request, true answer) -> the answer sent


@attrs.frozen
class Case:
    id: str
    setup: str  # "none" | "nokeys" | "keys" | "locked" | "run" | "stopped" | "two_sessions" | "ended"
    stimulus: str  # a key of _STIMULI
    lie: Lie | None  # None: not checkable by a device probe (see ``why``)
    violates: str  # what the lying answer does, in the case's terms
    why: str = ""


@attrs.frozen
class ProbeResult:
    case: str
    citing: tuple[str, ...]
    broken: tuple[str, ...]
    caught: bool
    detail: str


def _tdisp_lie(make: Callable[[Any, Any], Any]) -> Lie:
    def lie(req: bytes, resp: bytes | None) -> bytes | None:
        r = td.decode_request(req)
        return td.encode(make(r, td.decode_response(resp) if resp else None))

    return lie


def _err(code: int) -> Lie:
    return _tdisp_lie(lambda r, _: td.TdispError(interface_id=r.interface_id, error_code=code))


def _state(s: td.TdiState) -> Lie:
    return _tdisp_lie(lambda r, _: td.DeviceInterfaceState(interface_id=r.interface_id, tdi_state=s))


_LOCK_OK = _tdisp_lie(
    lambda r, _: td.LockInterfaceResponse(interface_id=r.interface_id, start_interface_nonce=b"\7" * 32)
)
_START_OK = _tdisp_lie(lambda r, _: td.StartInterfaceResponse(interface_id=r.interface_id))
_REPORT = _tdisp_lie(
    lambda r, _: td.DeviceInterfaceReport(
        interface_id=r.interface_id, portion=b"\0" * max(1, r.length), remainder_length=0
    )
)


def _report_too_long(r: Any, true: Any) -> Any:
    return td.DeviceInterfaceReport(interface_id=r.interface_id, portion=b"\0" * (r.length + 1), remainder_length=0)


def _report_reserved_bits(r: Any, true: Any) -> Any:
    rep = td.InterfaceReport.decode(true.portion)
    return attrs.evolve(true, portion=attrs.evolve(rep, interface_info=rep.interface_info | 0x100).encode())


def _two_versions(r: Any, _: Any) -> Any:
    return td.TdispVersion(interface_id=r.interface_id, versions=(td.TDISP_VERSION_1_0, 0x11))


def _dsm_caps(r: Any, true: Any) -> Any:
    return attrs.evolve(true, dsm_caps=1)


def _km_lie(make: Callable[[Any, Any], Any | None]) -> Lie:
    def lie(req: bytes, resp: bytes | None) -> bytes | None:
        out = make(
            km.decode(req) if req[:1] != bytes([km.ObjectId.KEY_PROG]) or len(req) >= 40 else None,
            km.decode(resp) if resp else None,
        )
        return None if out is None else km.encode(out)

    return lie


def _kp(status: km.KpAckStatus) -> Lie:
    def lie(req: bytes, resp: bytes | None) -> bytes | None:
        stream, kss, port = req[1], req[4], req[5]
        return km.encode(km.KpAck(stream_id=stream, status=status, key_sub_stream=kss, port_index=port))

    return lie


_DROP: Lie = lambda req, resp: None  # noqa: E731
_GOSTOP_WRONG_ECHO = _km_lie(
    lambda r, _: km.KGoStopAck(stream_id=r.stream_id + 1, key_sub_stream=r.key_sub_stream, port_index=r.port_index)
)
_QUERY_WRONG_PORT = _km_lie(lambda r, t: attrs.evolve(t, port_index=t.port_index + 1))
_ANSWER_QUERY = _km_lie(lambda r, _: km.QueryResp(port_index=0, dev_func_num=0, bus_num=0, segment=0, max_port_index=0))


def _c(id: str, setup: str, stimulus: str, lie: Lie | None, violates: str, why: str = "") -> Case:
    return Case(id, setup, stimulus, lie, violates, why)


LOCKED, RUN, UNL = td.TdiState.CONFIG_LOCKED, td.TdiState.RUN, td.TdiState.CONFIG_UNLOCKED
CASES: tuple[Case, ...] = (
    _c("Version.1", "none", "version", _tdisp_lie(_two_versions), "VERSION lists two versions"),
    _c("Capabilities.1", "none", "caps", _tdisp_lie(_dsm_caps), "DSM_CAPS = 1"),
    _c("LockInterface.1", "keys", "lock", _err(E.INVALID_REQUEST), "a valid LOCK refused INVALID_REQUEST"),
    _c("LockInterface.2", "nokeys", "lock", _LOCK_OK, "LOCK without keys succeeds"),
    _c("LockInterface.3", "locked", "lock", _LOCK_OK, "LOCK in CONFIG_LOCKED succeeds"),
    _c("LockInterface.4", "run", "lock", _LOCK_OK, "LOCK in RUN succeeds"),
    _c("DeviceReport.1", "locked", "report", _err(E.INVALID_REQUEST), "a valid report fetch refused"),
    _c("DeviceReport.2", "run", "report", _tdisp_lie(_report_too_long), "PORTION_LENGTH above LENGTH"),
    _c("DeviceReport.3", "locked_fetched", "report_bad_offset", _REPORT, "OFFSET beyond the report answered"),
    _c("DeviceReport.4", "none", "report", _REPORT, "a report served in CONFIG_UNLOCKED"),
    _c(
        "DeviceReport.5", "locked", "report_whole", _tdisp_lie(_report_reserved_bits), "INTERFACE_INFO reserved bit set"
    ),
    _c("DeviceState.1", "none", "state", _state(LOCKED), "CONFIG_UNLOCKED reported as CONFIG_LOCKED"),
    _c("DeviceState.2", "locked", "state", _state(RUN), "CONFIG_LOCKED reported as RUN"),
    _c("DeviceState.3", "run", "state", _state(LOCKED), "RUN reported as CONFIG_LOCKED"),
    _c("DeviceState.4", "stopped", "state", _state(RUN), "after STOP, RUN reported"),
    _c("StartInterface.1", "locked", "start", _err(E.INVALID_NONCE), "START with the LOCK nonce refused"),
    _c("StartInterface.2", "locked", "start_bad_nonce", _START_OK, "START with an inverted nonce succeeds"),
    _c("StartInterface.3", "stopped", "start_stale", _START_OK, "START after STOP succeeds"),
    _c("StartInterface.4", "run", "start", _START_OK, "START in RUN succeeds"),
    _c("StopInterface.1", "run", "stop", _err(E.UNSPECIFIED), "STOP in RUN refused"),
    _c("StopInterface.2", "locked", "stop", _err(E.UNSPECIFIED), "STOP in CONFIG_LOCKED refused"),
    _c("StopInterface.3", "keys", "stop", _err(E.INVALID_INTERFACE_STATE), "STOP in CONFIG_UNLOCKED refused (tdx)"),
    _c("Query.1", "session", "query", _QUERY_WRONG_PORT, "QUERY_RESP echoes another port"),
    _c("Query.2", "session", "query", _DROP, "QUERY of MaxPortIndex (0) dropped"),
    _c("KeyProg.1", "keys", "key_prog", _kp(km.KpAckStatus.UNSUPPORTED_VALUE), "a valid KEY_PROG refused"),
    _c("KeyProg.2", "keys", "key_prog_short", _kp(km.KpAckStatus.SUCCESS), "a cut KEY_PROG acked SUCCESS"),
    _c("KeyProg.3", "keys", "key_prog_port", _kp(km.KpAckStatus.SUCCESS), "port beyond MaxPortIndex acked SUCCESS"),
    _c("KeyProg.4", "keys", "key_prog_substream", _kp(km.KpAckStatus.SUCCESS), "sub-stream 3 acked SUCCESS"),
    _c("KeyProg.5", "keys", "key_prog_iv", _kp(km.KpAckStatus.SUCCESS), "IFV 2 acked SUCCESS"),
    _c(
        "KeyProg.6",
        "keys",
        "key_prog_stream",
        None,
        "another stream acked SUCCESS",
        "not checkable: which streams a port has is in no snapshot or answer (QUERY_RESP's registers carry no "
        "stream IDs here), so a SUCCESS for stream 1 cannot be told from a device that has it",
    ),
    _c("KSetGo.1", "programmed", "go", _DROP, "K_SET_GO K0 after KEY_PROG dropped"),
    _c("KSetGo.2", "programmed_k1", "go_k1", _GOSTOP_WRONG_ECHO, "K_GOSTOP_ACK echoes another stream"),
    _c("KSetGo.3", "keys_k1", "go_k1", _DROP, "phase 2: GO K1 after its KEY_PROG dropped"),
    _c("KSetGo.4", "keys_k1_back", "go", _DROP, "phase 2: GO K0 after its KEY_PROG dropped"),
    _c("KSetStop.1", "keys", "stop_k0", _GOSTOP_WRONG_ECHO, "K_GOSTOP_ACK echoes another stream"),
    _c("KSetStop.2", "keys_k1", "stop_k1", _DROP, "K_SET_STOP K1 dropped"),
    _c("KSetStop.3", "keys_k1", "stop_k1", _GOSTOP_WRONG_ECHO, "after a refresh, K_SET_STOP K1 misechoed"),
    _c("KSetStop.4", "keys_k1_back", "stop_k0", _DROP, "after a refresh back, K_SET_STOP K0 dropped"),
    _c("SpdmSession.1", "two_sessions", "query_second", _ANSWER_QUERY, "session Y's QUERY answered"),
    _c("SpdmSession.2", "ended", "query_second", _DROP, "after X ended, Y's QUERY dropped"),
    _c(
        "Test.IdeStream",
        "keys",
        "none",
        None,
        "-",
        "not checkable: the case asserts nothing (it dumps registers; k=1 always passes)",
    ),
    _c("Test.KeyRefresh", "keys", "refresh_k1", _DROP, "the refresh's K_SET_GO K1 dropped"),
    _c("Test.KeyRefreshKs1", "keys_k1", "refresh_k0", _DROP, "the refresh's K_SET_GO K0 dropped"),
)


class _Probe:
    """One probe: the reference device (lying on the armed request only) and a checker over it."""

    def __init__(self, profile: str) -> None:
        from teeio_conformance.conformance.harness import StepRunner
        from teeio_conformance.conformance.machines.device import DEVICE_RULES, DeviceStack
        from teeio_conformance.reference_impl.device.device import Device, DeviceConfig

        probe = self

        class Liar(Device):
            def handle_vendor_message(
                self, protocol_id: int, message: bytes, *, session_id: int | None
            ) -> bytes | None:
                true = super().handle_vendor_message(protocol_id, message, session_id=session_id)
                lie, probe.lie = probe.lie, None
                return true if lie is None else lie(bytes(message), true)

        self.lie: Lie | None = None
        self.stack = DeviceStack(
            lambda trace, p: Liar(trace, DeviceConfig(num_vfs=1, stop_in_unlocked_idempotent=p == "tdx")), profile
        )
        self.dev = self.stack.device
        self.rid = self.dev.pf_rid
        self.run = StepRunner(self.stack, profile, only=DEVICE_RULES, timeout=5.0)
        self.sid: int | None = None
        self.other: int | None = None
        self.nonce = b""

    def send(self, action: str, protocol: int, msg: Any, sid: int | None = None) -> Any:
        raw = td.encode(msg) if protocol == 1 else km.encode(msg) if not isinstance(msg, bytes) else msg
        result, _ = self.run.step(action, self.dev.handle_vendor_message, protocol, raw, session_id=sid or self.sid)
        return result

    def iid(self) -> td.InterfaceId:
        return td.InterfaceId(function_id=self.rid)

    def connect(self) -> None:
        self.sid, _ = self.run.step("spdm_connect", self.dev.spdm_connect)

    def keys(self, key_set: int = 0, go: bool = True) -> None:
        self.send("query", 0, km.Query(port_index=0))
        for slot in _slots(key_set):
            self.send("key_prog", 0, km.KeyProg(stream_id=0, key_sub_stream=slot, port_index=0, key=bytes(32), iv=IV))
        if go:
            for slot in _slots(key_set):
                self.send("go", 0, km.KSetGo(stream_id=0, key_sub_stream=slot, port_index=0))
            self.run.step("ide_enable", self.dev.ide_enable, True)

    def lock(self) -> None:
        resp = td.decode_response(
            self.send(
                "lock",
                1,
                td.LockInterface(
                    interface_id=self.iid(),
                    flags=0,
                    default_stream_id=0,
                    mmio_reporting_offset=0,
                    bind_p2p_address_mask=0,
                ),
            )
        )
        self.nonce = getattr(resp, "start_interface_nonce", b"")

    def setup(self, what: str) -> None:
        if what == "none":
            self.connect()
            return
        self.connect()
        if what in ("session", "nokeys"):
            return
        if what == "two_sessions":
            self.keys()
            self.other, _ = self.run.step("spdm_connect", self.dev.spdm_connect)
            return
        if what == "ended":
            self.keys()
            self.other, _ = self.run.step("spdm_connect", self.dev.spdm_connect)
            self.run.step("spdm_end", self.dev.spdm_end, self.sid)
            return
        if what in ("programmed", "programmed_k1"):
            self.keys(0, go=what == "programmed")
            if what == "programmed_k1":
                self.keys(1, go=False)
            return
        self.keys()
        if what in ("keys_k1", "keys_k1_back"):
            self.keys(1, go=False)
            for slot in _slots(1):
                self.send("go", 0, km.KSetGo(stream_id=0, key_sub_stream=slot, port_index=0))
            if what == "keys_k1_back":
                self.keys(0, go=False)
            return
        if what in ("locked", "locked_fetched", "run", "stopped"):
            self.lock()
            if what == "locked_fetched":
                self.send("report", 1, td.GetDeviceInterfaceReport(interface_id=self.iid(), offset=0, length=0x400))
            if what == "run":
                self.send("start", 1, td.StartInterface(interface_id=self.iid(), start_interface_nonce=self.nonce))
            if what == "stopped":
                self.send("stop", 1, td.StopInterface(interface_id=self.iid()))

    def stimulus(self, what: str, lie: Lie | None) -> None:
        i = self.iid()
        s0, s1 = _slots(0)[0], _slots(1)[0]
        nonce = self.nonce or bytes(32)
        msgs: dict[str, tuple[int, Any, int | None]] = {
            "version": (1, td.GetTdispVersion(interface_id=i), None),
            "caps": (1, td.GetTdispCapabilities(interface_id=i, tsm_caps=0), None),
            "lock": (
                1,
                td.LockInterface(
                    interface_id=i, flags=0, default_stream_id=0, mmio_reporting_offset=0, bind_p2p_address_mask=0
                ),
                None,
            ),
            "report": (1, td.GetDeviceInterfaceReport(interface_id=i, offset=0, length=0x40), None),
            "report_whole": (1, td.GetDeviceInterfaceReport(interface_id=i, offset=0, length=0x400), None),
            "report_bad_offset": (1, td.GetDeviceInterfaceReport(interface_id=i, offset=0xFFFF, length=1), None),
            "state": (1, td.GetDeviceInterfaceState(interface_id=i), None),
            "start": (1, td.StartInterface(interface_id=i, start_interface_nonce=nonce), None),
            "start_bad_nonce": (
                1,
                td.StartInterface(interface_id=i, start_interface_nonce=bytes(b ^ 0xFF for b in nonce)),
                None,
            ),
            "start_stale": (1, td.StartInterface(interface_id=i, start_interface_nonce=nonce), None),
            "stop": (1, td.StopInterface(interface_id=i), None),
            "query": (0, km.Query(port_index=0), None),
            "query_second": (0, km.Query(port_index=0), self.other),
            "key_prog": (0, km.KeyProg(stream_id=0, key_sub_stream=s0, port_index=0, key=bytes(32), iv=IV), None),
            "key_prog_short": (
                0,
                km.encode(km.KeyProg(stream_id=0, key_sub_stream=s0, port_index=0, key=bytes(32), iv=IV))[:-8],
                None,
            ),
            "key_prog_port": (0, km.KeyProg(stream_id=0, key_sub_stream=s0, port_index=1, key=bytes(32), iv=IV), None),
            "key_prog_substream": (
                0,
                km.KeyProg(stream_id=0, key_sub_stream=0x30, port_index=0, key=bytes(32), iv=IV),
                None,
            ),
            "key_prog_iv": (
                0,
                km.KeyProg(stream_id=0, key_sub_stream=s0, port_index=0, key=bytes(32), iv=km.ifv_to_wire(2)),
                None,
            ),
            "key_prog_stream": (
                0,
                km.KeyProg(stream_id=1, key_sub_stream=s0, port_index=0, key=bytes(32), iv=IV),
                None,
            ),
            "go": (0, km.KSetGo(stream_id=0, key_sub_stream=s0, port_index=0), None),
            "go_k1": (0, km.KSetGo(stream_id=0, key_sub_stream=s1, port_index=0), None),
            "stop_k0": (0, km.KSetStop(stream_id=0, key_sub_stream=s0, port_index=0), None),
            "stop_k1": (0, km.KSetStop(stream_id=0, key_sub_stream=s1, port_index=0), None),
        }
        if what == "none":
            return
        if what in ("refresh_k1", "refresh_k0"):
            ks = 1 if what == "refresh_k1" else 0
            self.keys(ks, go=False)
            protocol, msg, sid = 0, km.KSetGo(stream_id=0, key_sub_stream=_slots(ks)[0], port_index=0), None
        else:
            protocol, msg, sid = msgs[what]
        self.lie = lie
        self.send(f"probe_{what}", protocol, msg, sid)


def _slots(key_set: int) -> list[int]:
    return [
        km.KeySubStream(key_set=km.KeySet(key_set), direction=d, sub_stream=s).to_byte()
        for d in km.Direction
        for s in km.SubStream
    ]


def probe(case: Case, *, profile: str = "tdx", lie: bool = True) -> ProbeResult:
    """Run ``case``'s probe (with the lie, or truthfully to check the probe itself is clean)."""
    from teeio_conformance.conformance.rules import CATALOGUE, RuleViolation

    citing = tuple(r.id for r in CATALOGUE if case.id in r.validator_cases)
    p = _Probe(profile)
    try:
        p.setup(case.setup)
    except RuleViolation as exc:
        return ProbeResult(case.id, citing, (exc.rule.id,), False, f"setup broke {exc.rule.id}: {exc.detail}")
    try:
        p.stimulus(case.stimulus, case.lie if lie else None)
    except RuleViolation as exc:
        broken = (exc.rule.id, *getattr(exc, "also_broken", ()))
        return ProbeResult(case.id, citing, broken, any(r in citing for r in broken), exc.detail)
    return ProbeResult(case.id, citing, (), False, "no rule failed")


def render_markdown(profile: str = "tdx") -> str:
    rows = [probe(c, profile=profile) for c in CASES]
    checkable = [(c, r) for c, r in zip(CASES, rows, strict=True) if c.lie is not None]
    caught = sum(r.caught for _, r in checkable)
    lines = [
        "# tee-io-validator cases: cited, probed, caught",
        "",
        "Generated by `python -m teeio_conformance.conformance.validator_cases` (profile tdx); do not edit by hand.",
        "Each probe builds the case's precondition on the reference device, then sends the case's stimulus to",
        "a device that answers it the way the case forbids (and nothing else); the whole catalogue is checked.",
        f"{len(CASES)} cases; {len(checkable)} checkable by a device probe; {caught} of them caught by a rule that "
        "cites the case.",
        "",
        "| Case | Citing rule(s) | Probe: the lying answer | Rules that failed | Caught by a citing rule |",
        "|---|---|---|---|---|",
    ]
    for c, r in zip(CASES, rows, strict=True):
        verdict = "yes" if r.caught else ("n/a: " + c.why if c.lie is None else "NO")
        lines.append(
            f"| {c.id} | {', '.join(r.citing) or '-'} | {c.violates} | {', '.join(r.broken) or '-'} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(render_markdown())
