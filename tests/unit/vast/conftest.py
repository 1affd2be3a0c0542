"""The client's unit tests share one scripted HTTP-level Vast per test."""

from __future__ import annotations

import pytest
from support.fake_vast_http import FakeVastHttp


@pytest.fixture
def fake() -> FakeVastHttp:
    """A fresh scripted server; a test queues the answers it needs with ``fake.on(...)``."""
    return FakeVastHttp()
