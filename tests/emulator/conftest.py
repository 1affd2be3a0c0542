"""Fixtures for tests that talk to a running emulator over loopback HTTP.

Rate limits: the emulator enforces Vast's documented limits by default. These fixtures run it at ``x0.1`` (every
interval, the create penalty and the search window divided by ten) and set ``SKYWARD_VAST_RATE_SCALE=0.1`` so our
client's pacer keeps the same scaled pace: the tests here are about behaviour other than the limits, and the real
intervals would make each of them wait tens of seconds. A module sets ``EMULATOR_RATE_LIMITS`` to choose otherwise
(and says why there); the limits themselves are tested at their documented values in test_documented_limits.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from support.emulator_wire import FROZEN_BOOT_S

from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import running_emulator

SCALED_RATE_LIMITS = "x0.1"


def _rate_limits(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    mode = str(getattr(request.module, "EMULATOR_RATE_LIMITS", SCALED_RATE_LIMITS))
    if mode.startswith("x"):
        monkeypatch.setenv("SKYWARD_VAST_RATE_SCALE", mode[1:])  # our client paces to the same scaled table
    return mode


@pytest.fixture
def emulator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    """The default market on a real clock; instances run 0.2 s after they are rented."""
    with running_emulator(seed=0, boot_delay_s=0.2, rate_limits=_rate_limits(request, monkeypatch)) as emu:
        yield emu


@pytest.fixture
def frozen(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    """The default market on a frozen clock: nothing happens until the test advances time (rate limits run on real
    time whatever the market clock does)."""
    with running_emulator(seed=0, boot_delay_s=FROZEN_BOOT_S, clock=Clock(scale=0),
                          rate_limits=_rate_limits(request, monkeypatch)) as emu:
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
