"""SUT factories that end a run in each way a run can end (tests/reports/test_run_endings.py)."""

from __future__ import annotations

import time
from typing import Any


def _stack(**kw: Any) -> Any:
    from teeio_conformance.reference_impl.stack import make_sut

    return make_sut(**kw)


def factory_raises(**kw: Any) -> Any:
    raise RuntimeError("no SUT today")


def _raising(exc: BaseException) -> Any:
    def factory(**kw: Any) -> Any:
        stack = _stack(**kw)

        def create_vm() -> str:
            raise exc

        stack.create_vm = create_vm
        return stack

    return factory


raises_keyboard_interrupt = _raising(KeyboardInterrupt())
raises_system_exit = _raising(SystemExit(3))
raises_generator_exit = _raising(GeneratorExit())


def hangs(**kw: Any) -> Any:
    """create_vm never returns: it catches every alarm and sleeps on."""
    stack = _stack(**kw)

    def create_vm() -> str:
        while True:
            try:
                time.sleep(10)
            except BaseException:
                pass

    stack.create_vm = create_vm
    return stack


def sleeps(**kw: Any) -> Any:
    """create_vm takes a minute (the run is interrupted meanwhile)."""
    stack = _stack(**kw)
    slow = stack.create_vm

    def create_vm() -> str:
        print("teeio-test: in create_vm", flush=True)
        time.sleep(60)
        return str(slow())

    stack.create_vm = create_vm
    return stack
