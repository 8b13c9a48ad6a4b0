"""Loading the system under test named by ``--sut module:factory``.

The factory is called once per example as ``factory(profile=..., num_devices=..., num_vfs=...)``
and must return an object meeting the SUT contract of ``docs/sut-contract.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_DEVICE", "DEFAULT_SCENARIO", "DEFAULT_SUT", "SutLoadError", "load_factory"]

DEFAULT_SUT = "teeio_conformance.reference_impl.stack:make_sut"
DEFAULT_DEVICE = "teeio_conformance.reference_impl.stack:make_device"
"""The device machine's default ``device_factory(trace, profile)``, named (not imported) like the default SUT."""
DEFAULT_SCENARIO = "teeio_conformance.reference_impl.lifecycle:run_lifecycle"
"""The lifecycle ``export-trace --flow`` plays on a stack (flow.md's corrected steps, through the contract)."""


class SutLoadError(ValueError):
    """``--sut`` does not name an importable callable."""


def load_factory(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SutLoadError(f"--sut must look like 'package.module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SutLoadError(f"--sut {spec!r}: cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise SutLoadError(f"--sut {spec!r}: {module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise SutLoadError(f"--sut {spec!r}: {attr!r} is not callable")
    return obj
