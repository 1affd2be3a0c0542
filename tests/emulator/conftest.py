"""Fixtures for tests that talk to a running emulator over loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from emulator_wire import FROZEN_BOOT_S

from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import running_emulator


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """The default market on a real clock; instances run 0.2 s after they are rented."""
    with running_emulator(seed=0, boot_delay_s=0.2) as emu:
        yield emu


@pytest.fixture
def frozen() -> Iterator[EmulatorServer]:
    """The default market on a frozen clock: nothing happens until the test advances time."""
    with running_emulator(seed=0, boot_delay_s=FROZEN_BOOT_S, clock=Clock(scale=0)) as emu:
        yield emu


def _client(emu: EmulatorServer) -> httpx.Client:
    return httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.api_key}"}, timeout=30)


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    with _client(emulator) as client:
        yield client


@pytest.fixture
def frozen_api(frozen: EmulatorServer) -> Iterator[httpx.Client]:
    with _client(frozen) as client:
        yield client
