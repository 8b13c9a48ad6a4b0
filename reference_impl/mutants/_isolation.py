"""Isolation mutants (issue 14): each lets a function of VM A's secret reach another VM -- its private memory, its
MMIO reads, the errors it gets -- never the bytes themselves, so no byte search finds it; CONF-05 (the isolation
differential, ``conformance/isolation.py``) must."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Any

from teeio_conformance.contract.errors import InvalidState
from teeio_conformance.reference_impl.kvm import PAGE, Kvm, VmState


class KvmRecyclesPrivatePage(Kvm):
    """A new VM's third private page is the page the previous VM's secret sat in, handed over without a scrub
    (reversed and XORed on the way): VM B's private memory holds a function of VM A's secret."""

    def create_vm(self) -> str:
        before = list(self._vms.values())
        name = super().create_vm()
        if before:
            stale = bytes(b ^ 0xA5 for b in reversed(bytes(before[-1].memory[:32])))
            self._vms[name].memory[2 * PAGE : 2 * PAGE + 32] = stale
        return name


class KvmMmioStaleContext(Kvm):
    """Guest MMIO loads of every VM but the first come back XORed with a pad derived from the first VM's private
    page (a decryption context left from VM A): what VM B reads depends on VM A's secret."""

    def guest_mmio_read(self, vm: str, gpa: int, length: int) -> bytes:
        data = super().guest_mmio_read(vm, gpa, length)
        first = next(iter(self._vms.values()))
        if first.name == vm:
            return data
        pad = hashlib.blake2b(bytes(first.memory[:PAGE]), digest_size=64).digest()
        return bytes(a ^ pad[i % len(pad)] for i, a in enumerate(data))


class KvmErrorCarriesContext(Kvm):
    """Refusing a guest MMIO access of a VM that is not running, KVM names the "last context" it had loaded: a
    CRC of another VM's private page. VM B's error message depends on VM A's secret."""

    def _running(self, vm: str) -> Any:
        v = self._vm(vm)
        if v.state is not VmState.RUNNING:
            other = next((o for o in self._vms.values() if o.name != vm), None)
            tag = f" (last context {zlib.crc32(bytes(other.memory[:PAGE])):08x})" if other is not None else ""
            raise InvalidState(f"{vm} is not running{tag}")
        return v


def mutants(m: Callable[..., Any]) -> list[Any]:
    iso = "isolation"
    return [
        m(
            "kvm-recycles-private-page",
            "CONF-05",
            iso,
            "tdx",
            KvmRecyclesPrivatePage.__doc__,
            overrides={"kvm_factory": KvmRecyclesPrivatePage},
        ),
        m(
            "kvm-mmio-stale-context",
            "CONF-05",
            iso,
            "sev-tio",
            KvmMmioStaleContext.__doc__,
            overrides={"kvm_factory": KvmMmioStaleContext},
        ),
        m(
            "kvm-error-carries-context",
            "CONF-05",
            iso,
            "cca",
            KvmErrorCarriesContext.__doc__,
            overrides={"kvm_factory": KvmErrorCarriesContext},
        ),
    ]
