"""The typed error tree every actor of the stack raises.

One root, :class:`StackError`, split by whose fault it is (the h11 idea of Local vs Remote
protocol errors):

* :class:`CallerError` -- the caller misused an API: wrong state, unknown handle, busy object.
  The callee refused and *changed nothing*. Each carries the errno the Linux code returns in the
  same situation, so a rule can compare an adapter's errors with the kernel's.
* :class:`AccessFault` -- a DMA or MMIO access was refused by the IOMMU, KVM or the device.
  Not a misuse: the hardware fences the access and records a fault.
* :class:`ConformanceViolation` -- the component under test broke a promise it had made
  (an answer that does not decode, an unexpected exception).
* :class:`CodecError` -- bytes that do not decode as the message they claim to be.

TDISP and IDE_KM failures on the wire are *responses* with spec error codes, not exceptions.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "AccessFault",
    "AlreadyExists",
    "AttestationRejected",
    "Busy",
    "CallerError",
    "CodecError",
    "ConformanceViolation",
    "FirmwareError",
    "InvalidArgument",
    "InvalidState",
    "NotFound",
    "PermissionDenied",
    "StackError",
    "Unsupported",
]


class StackError(Exception):
    """Root of every error the reference stack raises on purpose."""

    errno: int = _errno.EIO


class CallerError(StackError):
    """The caller asked for something it may not have; nothing changed."""


class InvalidState(CallerError):
    """The object is not in a state where this operation is legal (-EINVAL)."""

    errno = _errno.EINVAL


class InvalidArgument(CallerError):
    """An argument is out of range or malformed (-EINVAL)."""

    errno = _errno.EINVAL


class Busy(CallerError):
    """The object is held by someone else or still in use (-EBUSY)."""

    errno = _errno.EBUSY


class NotFound(CallerError):
    """No object has that handle, or it is being destroyed (-ENOENT)."""

    errno = _errno.ENOENT


class AlreadyExists(CallerError):
    """An object of that kind already exists where only one may (-EEXIST)."""

    errno = _errno.EEXIST


class PermissionDenied(CallerError):
    """The caller may never do this, whatever the state (-EPERM)."""

    errno = _errno.EPERM


class Unsupported(CallerError):
    """The platform or device does not offer this operation (-ENXIO)."""

    errno = _errno.ENXIO


class FirmwareError(StackError):
    """A component below failed the call (a TSM firmware error, an I/O error, a failed allocation) -- not a
    refusal: it may come after part of the work was done, so callers cannot assume nothing changed; what
    they leave behind is judged by the rules. The fail-nth walk injects it (-EIO)."""

    errno = _errno.EIO


class AccessFault(StackError):
    """A DMA or MMIO access was refused; the fault is recorded where the host can see it."""

    errno = _errno.EFAULT


class AttestationRejected(StackError):
    """The guest refused the device's evidence: it does not verify, or its ranges do not fit the guest's
    view. Not a refused call: the exchange that produced the evidence stands (on SEV-TIO it started the
    TDI), only the guest will not go on to accept it."""

    errno = _errno.EACCES


class ConformanceViolation(StackError):
    """A component broke a promise (garbage answer, unexpected exception, hang)."""


class CodecError(StackError):
    """Bytes that do not decode; ``code`` is the spec error code to answer with, if any."""

    errno = _errno.EINVAL

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
