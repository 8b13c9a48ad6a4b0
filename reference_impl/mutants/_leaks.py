"""Leak mutants (issue 14): each leaks a function of the guest's secret, never its bytes, so the byte
search of CONF-01 does not see it; the noninterference test (CONF-04) must."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Any

from teeio_conformance.reference_impl.kvm import PAGE, Kvm
from teeio_conformance.reference_impl.vmm import Vmm


class KvmHashesSecretIntoShared(Kvm):
    """At KVM run, a digest of the guest's private page lands in its first shared page (a hashed leak)."""

    def run(self, vm: str) -> None:
        super().run(vm)
        v = self._vms[vm]
        digest = hashlib.sha256(bytes(v.memory[:PAGE])).digest()[:8]
        base = v.private_pages * PAGE
        v.memory[base + 64 : base + 72] = digest


class VmmLogsMemoryChecksum(Vmm):
    """The VMM returns a CRC of the whole guest memory from run(), private pages included: a host-visible
    crossing whose value depends on the secret."""

    def run(self, vm: str) -> int:  # type: ignore[override]
        super().run(vm)
        return zlib.crc32(bytes(self._kvm._vms[vm].memory))


class KvmLeaksOnDestroy(Kvm):
    """When a VM stops, its secret is written, reversed and XORed, into its shared memory, and the destroy
    scrubs only the private pages -- visible to the host after the VM is gone."""

    def stop(self, vm: str) -> None:
        super().stop(vm)
        v = self._vms[vm]
        leaked = bytes(b ^ 0x5A for b in reversed(bytes(v.memory[:32])))
        base = v.private_pages * PAGE
        v.memory[base + 128 : base + 160] = leaked

    def _destroy(self, v: Any) -> None:
        shared = bytes(v.memory[v.private_pages * PAGE :])
        super()._destroy(v)
        v.memory[v.private_pages * PAGE :] = shared


def mutants(m: Callable[..., Any]) -> list[Any]:
    ni = "noninterference"
    return [
        m(
            "kvm-hashes-secret-into-shared",
            "CONF-04",
            ni,
            "tdx",
            KvmHashesSecretIntoShared.__doc__,
            overrides={"kvm_factory": KvmHashesSecretIntoShared},
        ),
        m(
            "vmm-logs-memory-checksum",
            "CONF-04",
            ni,
            "sev-tio",
            VmmLogsMemoryChecksum.__doc__,
            overrides={"vmm_factory": VmmLogsMemoryChecksum},
        ),
        m(
            "kvm-leaks-on-destroy",
            "CONF-04",
            ni,
            "cca",
            KvmLeaksOnDestroy.__doc__,
            overrides={"kvm_factory": KvmLeaksOnDestroy},
        ),
    ]
