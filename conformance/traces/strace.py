"""Import a VMM's syscall log (``strace -f`` of QEMU) as trace events.

Record on the host, with the VM's whole life in the log::

    strace -f -tt -y -e trace=openat,close,ioctl,write -o qemu.strace qemu-system-x86_64 ...

The importer follows file descriptors (``/dev/kvm``, ``/dev/iommu``, ``/dev/vfio/devices/vfioN``, the PCI TSM
sysfs files ``/sys/bus/pci/devices/BDF/tsm/{connect,disconnect}``) and decodes ioctls by their number or name
(:mod:`.uapi`: ``KVM_RUN``, ``_IOC(_IOC_NONE, 0x3b, 0x90, 0)`` and ``0x3b90`` are all understood). It emits the
contract's crossings, caller ``vmm``:

=====================================================  ==================================================
syscall                                                event
=====================================================  ==================================================
``KVM_CREATE_VM`` -> fd N                              ``kvm.create_vm() -> "vm@fdN"``
first ``KVM_RUN`` on a vCPU of the VM                  ``kvm.run(vm)``
last vCPU fd of the VM closed / VM fd closed           ``kvm.stop(vm)`` / ``kvm.destroy_vm(vm)``
``KVM_SET_USER_MEMORY_REGION[2]``                      ``kvm.create_memslot(vm, gpa, None)`` (size 0: destroy)
``VFIO_DEVICE_BIND_IOMMUFD`` (``out_devid``)           ``vfio.open_device(path, None)`` > ``iommufd.bind_device``
``VFIO_DEVICE_ATTACH/DETACH_IOMMUFD_PT``               ``iommufd.attach(devid, pt_id)`` / ``iommufd.detach``
``close`` of a VFIO device fd / of ``/dev/iommu``      ``vfio.close_device(fd)`` / ``iommufd.close()``
``IOMMU_IOAS_ALLOC``, ``IOMMU_HWPT_ALLOC``             ``iommufd.ioas_alloc(vm)``, ``iommufd.hwpt_alloc(dev, pt)``
``IOMMU_VIOMMU_ALLOC``                                 ``iommufd.viommu_alloc(hwpt_id, vm) -> out_viommu_id``
``IOMMU_VDEVICE_ALLOC``                                ``iommufd.vdevice_alloc(viommu_id, dev_id, virt_id,
                                                       None) -> out_vdevice_id``
``IOMMU_DESTROY``                                      ``iommufd.destroy(id)``
``write`` to ``.../tsm/connect``, ``.../tsm/disconnect``  ``tsm.connect(BDF)``, ``tsm.disconnect(BDF)``
=====================================================  ==================================================

One process is one VM (QEMU): objects are attributed to the VM the log created last. Object IDs come from the
decoded structs strace prints (``{..., out_viommu_id=3}``); a log without struct decoding still gives the
order of calls, with IDs unknown (None). A failed call (``= -1 EBUSY (...)``) is an ``error`` event carrying the
errno's name: a syscall log has errnos, not the contract's typed errors, so it offers no ``errors`` tier, and no
snapshots at all. The rules that need them are NOT APPLICABLE to a log, never PASS.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import attrs

from teeio_conformance.conformance.traces.uapi import BY_NUMBER, IOCTLS
from teeio_conformance.contract.tiers import Offers
from teeio_conformance.contract.trace import Event
from teeio_conformance.contract.trace_file import (
    TracedEvent,
    TraceFileError,
    TraceHeader,
    encode_event,
    write_trace,
)

__all__ = ["STRACE_OFFERS", "add_arguments", "import_strace", "run"]

STRACE_OFFERS = Offers(
    crossings={
        "kvm.create_vm",
        "kvm.run",
        "kvm.stop",
        "kvm.destroy_vm",
        "kvm.create_memslot",
        "kvm.destroy_memslot",
        "vfio.open_device",
        "vfio.close_device",
        "iommufd.bind_device",
        "iommufd.attach",
        "iommufd.detach",
        "iommufd.close",
        "iommufd.ioas_alloc",
        "iommufd.hwpt_alloc",
        "iommufd.viommu_alloc",
        "iommufd.vdevice_alloc",
        "iommufd.destroy",
        "tsm.connect",
        "tsm.disconnect",
    },
    errors=False,
    snapshots=(),
)
"""What a VMM's syscall log shows: these crossings, errnos rather than typed errors, no state."""

_PREFIX = r"^(?:\[pid\s+(?P<pid>\d+)\]\s+|(?P<pid2>\d+)\s+)?(?:\d+:\d+:\d+(?:\.\d+)?\s+|\d+\.\d+\s+)?"
_CALL = re.compile(_PREFIX + r"(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>.*?)\s*$")
_UNFINISHED = re.compile(_PREFIX + r"(?P<name>\w+)\((?P<args>.*?)\s*<unfinished \.\.\.>\s*$")
_RESUMED = re.compile(_PREFIX + r"<\.\.\. (?P<name>\w+) resumed>(?P<args>.*)\)\s+=\s+(?P<ret>.*?)\s*$")
_RET = re.compile(r"^(?P<val>-?\d+|0x[0-9a-fA-F]+|\?)(?:\s+(?P<errno>E[A-Z0-9]+)(?:\s+\((?P<text>.*)\))?)?")
_FD = re.compile(r"^(?P<fd>-?\d+)(?:<(?P<path>[^>]*)>)?$")
_IOC = re.compile(r"^_IOC\(\s*(?P<dir>[_A-Z|]+)\s*,\s*(?P<type>\w+)\s*,\s*(?P<nr>\w+)\s*,\s*(?P<size>\w+)\s*\)$")
_FIELD = re.compile(r"(?P<key>[a-z_][a-z0-9_]*)=(?P<val>-?0x[0-9a-fA-F]+|-?\d+)")
_TSM_FILE = re.compile(r"/sys/(?:bus/pci/devices|devices/.*)/(?P<bdf>[0-9a-fA-F:.]+)/tsm/(?P<attr>connect|disconnect)$")
_DIRS = {"_IOC_NONE": 0, "_IOC_WRITE": 1, "_IOC_READ": 2}


def _split_args(text: str) -> list[str]:
    """Top-level comma split of strace's argument list (braces, brackets and quoted strings kept whole)."""
    out, depth, cur, quoted, escaped = [], 0, [], False, False
    for ch in text:
        if quoted:
            cur.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if cur or out:
        out.append("".join(cur).strip())
    return out


def _int(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _request(text: str) -> str | None:
    """An ioctl request as strace prints it -> the uapi name, or None for one the importer does not know."""
    text = text.strip()
    if text in IOCTLS:
        return text
    m = _IOC.match(text)
    if m is not None:
        direction = 0
        for part in m.group("dir").split("|"):
            direction |= _DIRS.get(part.strip(), 0)
        values = [_int(m.group(k)) for k in ("type", "nr", "size")]
        if None in values:
            return None
        t, nr, size = (v or 0 for v in values)
        return BY_NUMBER.get((direction << 30) | (size << 16) | (t << 8) | nr)
    number = _int(text.split("|")[0]) if text[:1].isdigit() else None
    return BY_NUMBER.get(number) if number is not None else None


def _fields(text: str) -> dict[str, int]:
    """``key=value`` pairs of the decoded structs of an argument (both sides of ``=>``; the output wins)."""
    return {m.group("key"): int(m.group("val"), 0) for m in _FIELD.finditer(text)}


def _string(text: str) -> str:
    text = text.strip()
    if text.startswith('"'):
        end = text.rfind('"')
        text = text[1:end] if end > 0 else text[1:]
    return text.encode("utf-8").decode("unicode_escape", errors="replace")


@attrs.define
class _State:
    name: str
    events: list[TracedEvent] = attrs.field(factory=list)
    fds: dict[int, tuple[str, Any]] = attrs.field(factory=dict)  # fd -> (kind, detail)
    vms: list[str] = attrs.field(factory=list)  # VMs created, newest last
    vcpus: dict[str, set[int]] = attrs.field(factory=dict)
    running: set[str] = attrs.field(factory=set)
    pending: dict[tuple[str, str], tuple[int, str]] = attrs.field(factory=dict)  # (pid, syscall) -> (line, args)

    def vm(self) -> str | None:
        return self.vms[-1] if self.vms else None

    def kind(self, fd: int | None) -> tuple[str | None, Any]:
        """What the fd was opened as, and the detail kept with it (path, VM, (attribute, BDF))."""
        return self.fds.get(fd, (None, None)) if fd is not None else (None, None)

    def emit(
        self,
        line: int,
        callee: str,
        operation: str,
        args: tuple[Any, ...],
        ret: tuple[Any, str | None, str],
        *,
        caller: str = "vmm",
        depth: int = 0,
    ) -> None:
        result, errno, text = ret
        ev = Event(
            seq=len(self.events),
            caller=caller,
            callee=callee,
            operation=operation,
            arguments=args,
            outcome="error" if errno else "ok",
            result=None if errno else result,
            error=errno,
            message=text if errno else "",
            depth=depth,
        )
        self.events.append(TracedEvent(event=ev, line=line, origin=f"{self.name}:{line}"))


def _ret(text: str) -> tuple[int | None, str | None, str]:
    m = _RET.match(text.strip())
    if m is None:
        return None, None, ""
    val = m.group("val")
    value = None if val == "?" else int(val, 0)
    errno = m.group("errno")
    return value, errno, f"{errno} ({m.group('text')})" if errno else ""


def _fd_of(text: str) -> tuple[int | None, str | None]:
    m = _FD.match(text.strip())
    if m is None:
        return None, None
    return int(m.group("fd")), m.group("path")


def _syscall(st: _State, line: int, name: str, args_text: str, ret_text: str) -> None:
    args = _split_args(args_text)
    value, errno, message = _ret(ret_text)
    ret = (value, errno, message)
    if name in ("open", "openat") and args:
        path = _string(args[1] if name == "openat" and len(args) > 1 else args[0])
        if errno or value is None:
            return
        tsm = _TSM_FILE.search(path)
        if path == "/dev/kvm":
            st.fds[value] = ("kvm", None)
        elif path == "/dev/iommu":
            st.fds[value] = ("iommufd", None)
        elif path.startswith("/dev/vfio/devices/"):
            st.fds[value] = ("vfio", path)
        elif tsm is not None:
            st.fds[value] = ("tsm", (tsm.group("attr"), tsm.group("bdf")))
        return
    if name == "write" and args:
        fd, _ = _fd_of(args[0])
        kind, detail = st.kind(fd)
        if kind == "tsm":
            attr, bdf = detail
            st.emit(line, "tsm", attr, (bdf,), (None, errno, message))
        return
    if name == "close" and args:
        fd, _ = _fd_of(args[0])
        if fd is None or errno:
            return
        kind, detail = st.kind(fd)
        st.fds.pop(fd, None)
        if kind == "vfio_bound":
            st.emit(line, "vfio", "close_device", (fd,), ret)
        elif kind == "iommufd":
            st.emit(line, "iommufd", "close", (), ret)
        elif kind == "vm":
            if detail in st.running:
                st.running.discard(detail)
            st.emit(line, "kvm", "destroy_vm", (detail,), ret)
        elif kind == "vcpu":
            cpus = st.vcpus.get(detail, set())
            cpus.discard(fd)
            if not cpus and detail in st.running:
                st.running.discard(detail)
                st.emit(line, "kvm", "stop", (detail,), (None, None, ""))
        return
    if name != "ioctl" or len(args) < 2:
        return
    fd, _ = _fd_of(args[0])
    request = _request(args[1])
    if fd is None or request is None:
        return
    f = _fields(args[2]) if len(args) > 2 else {}
    kind, detail = st.kind(fd)
    vm = st.vm()
    if request == "KVM_CREATE_VM":
        name_vm = f"vm@fd{value}"
        st.emit(line, "kvm", "create_vm", (), (name_vm, errno, message))
        if not errno and value is not None:
            st.fds[value] = ("vm", name_vm)
            st.vms.append(name_vm)
    elif request == "KVM_CREATE_VCPU" and kind == "vm":
        if not errno and value is not None:
            st.fds[value] = ("vcpu", detail)
            st.vcpus.setdefault(detail, set()).add(value)
    elif request == "KVM_RUN":
        owner = detail if kind == "vcpu" else vm
        if owner is not None and owner not in st.running:
            st.running.add(owner)
            st.emit(line, "kvm", "run", (owner,), (None, errno, message))
    elif request in ("KVM_SET_USER_MEMORY_REGION", "KVM_SET_USER_MEMORY_REGION2"):
        owner = detail if kind == "vm" else vm
        if f.get("memory_size", 1) == 0:
            st.emit(line, "kvm", "destroy_memslot", (f.get("slot"),), (None, errno, message))
        else:
            st.emit(
                line, "kvm", "create_memslot", (owner, f.get("guest_phys_addr"), None), (f.get("slot"), errno, message)
            )
    elif request == "VFIO_DEVICE_BIND_IOMMUFD":
        devid = f.get("out_devid")
        st.emit(line, "vfio", "open_device", (detail, None), (fd, errno, message))
        st.emit(line, "iommufd", "bind_device", (detail, None), (devid, errno, message), caller="vfio", depth=1)
        if not errno:
            st.fds[fd] = ("vfio_bound", detail)
    elif request == "VFIO_DEVICE_ATTACH_IOMMUFD_PT":
        st.emit(line, "iommufd", "attach", (None, f.get("pt_id")), (None, errno, message))
    elif request == "VFIO_DEVICE_DETACH_IOMMUFD_PT":
        st.emit(line, "iommufd", "detach", (None,), (None, errno, message))
    elif request == "IOMMU_IOAS_ALLOC":
        st.emit(line, "iommufd", "ioas_alloc", (vm,), (f.get("out_ioas_id"), errno, message))
    elif request == "IOMMU_HWPT_ALLOC":
        st.emit(
            line, "iommufd", "hwpt_alloc", (f.get("dev_id"), f.get("pt_id")), (f.get("out_hwpt_id"), errno, message)
        )
    elif request == "IOMMU_VIOMMU_ALLOC":
        st.emit(line, "iommufd", "viommu_alloc", (f.get("hwpt_id"), vm), (f.get("out_viommu_id"), errno, message))
    elif request == "IOMMU_VDEVICE_ALLOC":
        st.emit(
            line,
            "iommufd",
            "vdevice_alloc",
            (f.get("viommu_id"), f.get("dev_id"), f.get("virt_id"), None),
            (f.get("out_vdevice_id"), errno, message),
        )
    elif request == "IOMMU_DESTROY":
        st.emit(line, "iommufd", "destroy", (f.get("id"),), (None, errno, message))


def import_strace(lines: Iterable[str], *, name: str = "strace") -> tuple[TraceHeader, list[TracedEvent]]:
    """The events of an ``strace -f`` log; every event keeps its log line (``origin``). Lines the importer does
    not understand are skipped (a log holds far more than the calls it maps); a log with none of them is an
    error (the wrong file, or strace run without ``-f`` on the VMM)."""
    st = _State(name=name)
    seen = 0
    for n, raw in enumerate(lines, start=1):
        text = raw.rstrip("\n")
        if not text.strip() or text.lstrip().startswith(("+++", "---")):
            continue
        m = _UNFINISHED.match(text)
        if m is not None:
            seen += 1
            parts = _split_args(m.group("args"))
            if m.group("name") == "ioctl" and len(parts) > 1 and _request(parts[1]) == "KVM_RUN":
                _syscall(st, n, "ioctl", m.group("args"), "0")  # KVM_RUN blocks while the guest runs: it ran
            else:  # the call is judged where it started, with what it returned when it resumed
                st.pending[(m.group("pid") or m.group("pid2") or "", m.group("name"))] = (n, m.group("args"))
            continue
        m = _RESUMED.match(text)
        if m is not None:
            start = st.pending.pop((m.group("pid") or m.group("pid2") or "", m.group("name")), None)
            if start is not None:
                _syscall(st, start[0], m.group("name"), start[1] + m.group("args"), m.group("ret"))
            continue
        m = _CALL.match(text)
        if m is None:
            continue
        seen += 1
        _syscall(st, n, m.group("name"), m.group("args"), m.group("ret"))
    if not seen:
        raise TraceFileError(f"{name}: no system call in the strace format (pid? time? name(args) = result)")
    # a call counts from the line it started on (a resumed call is emitted late): seq is start order
    ordered = sorted(st.events, key=lambda t: (t.line, t.event.seq))
    events = [attrs.evolve(t, event=attrs.evolve(t.event, seq=i)) for i, t in enumerate(ordered)]
    header = TraceHeader(profile=None, offers=STRACE_OFFERS, source=f"strace log {name}")
    return header, events


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", metavar="LOG", help="an `strace -f` log of the VMM (see docs/sut-contract.md)")
    parser.add_argument("--profile", default=None, help="platform profile to record in the header")
    parser.add_argument("-o", "--output", default="-", metavar="FILE", help="the trace file to write (default: -)")


def run(args: argparse.Namespace) -> int:
    """0 when written; 2 for an unreadable log (one line on stderr)."""
    try:
        text = Path(args.log).read_text(encoding="utf-8", errors="replace")
        header, events = import_strace(text.splitlines(), name=str(args.log))
    except (OSError, TraceFileError) as exc:
        sys.stderr.write(f"teeio-conformance import-strace: {exc}\n")
        return 2
    header = attrs.evolve(header, profile=args.profile)
    out: IO[str]
    try:
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        sys.stderr.write(f"teeio-conformance import-strace: cannot write {args.output}: {exc.strerror or exc}\n")
        return 2
    try:
        n = write_trace(out, header, (encode_event(t.event, origin=t.origin) for t in events))
    finally:
        if out is not sys.stdout:
            out.close()
    sys.stderr.write(f"teeio-conformance import-strace: {n} events from {args.log}\n")
    return 0
