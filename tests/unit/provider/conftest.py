"""The provider's unit tests share an in-memory Vast client and a manual clock per test."""

from __future__ import annotations

import pytest
from support.fake_vast_client import FakeVastClient

from skyward_ray.emulator.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake() -> FakeVastClient:
    return FakeVastClient()
