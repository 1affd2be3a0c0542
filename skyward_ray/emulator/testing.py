"""Test helpers for anyone who needs a Vast marketplace: a context manager around :class:`EmulatorServer` and a
bounded poll.

    from skyward_ray.emulator.testing import running_emulator, wait_until

    @pytest.fixture
    def emulator():
        with running_emulator(boot_delay_s=0.2) as emu:
            yield emu
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from skyward_ray.emulator.server import EmulatorServer

T = TypeVar("T")


@contextmanager
def running_emulator(**kwargs: Any) -> Iterator[EmulatorServer]:
    """A started emulator (``EmulatorServer(**kwargs)``), stopped on exit even when the body fails."""
    server = EmulatorServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(condition: Callable[[], T], *, timeout_s: float = 10.0, interval_s: float = 0.02,
               what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
