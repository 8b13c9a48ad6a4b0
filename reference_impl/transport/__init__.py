"""Talking to a device in another process: the spdm-emu socket protocol (framing, server, client).

* :mod:`.framing` -- bytes only: the spdm-emu socket frame, the PCI DOE data object, the SPDM VCA
  messages and the PCI-SIG VENDOR_DEFINED wrapping that carries TDISP and IDE_KM.
* :mod:`.server` -- serves a :class:`VendorResponder` on a loopback TCP port (``serve-device``).
* :mod:`.client` -- the requester side (:class:`~.client.EmuClient`) and adapters that make a remote
  responder look like a local one.

This module holds only the interfaces, so every submodule can import it without a cycle.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["PROTOCOL_IDE_KM", "PROTOCOL_TDISP", "SessionOpener", "SpdmIdentity", "VendorResponder"]

PROTOCOL_IDE_KM = 0
"""PCI-SIG protocol ID of IDE_KM inside a VENDOR_DEFINED message (PCIe 6.x §6.33.3)."""
PROTOCOL_TDISP = 1
"""PCI-SIG protocol ID of TDISP inside a VENDOR_DEFINED message (PCIe 6.x §11.3.1)."""


@runtime_checkable
class VendorResponder(Protocol):
    """What the socket server wraps: a device answering TDISP / IDE_KM messages.

    ``handle_vendor_message`` gets the message without its protocol-ID byte and returns the answer
    without it too; ``None`` means the device dropped the message (IDE_KM allows that). ``session_id``
    names the SPDM session the message arrived on; ``end_session`` says that session is gone (its
    connection closed), so the device can do what the spec asks when a session ends.
    """

    @property
    def function_ids(self) -> tuple[int, ...]:
        """INTERFACE_ID FUNCTION_ID of every TDI the responder serves."""
        ...

    def handle_vendor_message(self, protocol_id: int, message: bytes, *, session_id: int | None) -> bytes | None: ...

    def end_session(self, session_id: int) -> None: ...


@runtime_checkable
class SessionOpener(Protocol):
    """Optional: a responder that numbers its own SPDM sessions.

    When the responder has ``spdm_connect``, the server calls it as a connection completes VCA and
    uses the returned ID for that connection, instead of its own counter (the reference device
    checks IDE_KM messages against the sessions it opened).
    """

    def spdm_connect(self) -> int: ...


@runtime_checkable
class SpdmIdentity(Protocol):
    """Optional: a responder with its own SPDM identity for secure sessions.

    ``certificate_chain`` is the DER chain, root first; ``spdm_sign`` signs with the leaf key (ECDSA, DER
    signature) over SHA-384 -- or over ``hash_name`` ("sha256"), which the server passes only when it serves
    a cipher suite with SHA-256, so an identity that only ever signs SHA-384 may leave it out. The leaf's
    curve must be the served suite's (P-384 by default). A responder without one is served under a fixed
    reference identity.
    """

    def certificate_chain(self) -> tuple[bytes, ...]: ...

    def spdm_sign(self, data: bytes, hash_name: str = "sha384") -> bytes: ...
