"""The emulator's rate-limit rule without HTTP, on a fake clock, at the documented values."""

from __future__ import annotations

import pytest

from skyward_ray.emulator.faults import RateLimitConfig, parse_rate_limits
from skyward_ray.emulator.ratelimit import RateLimiter
from skyward_ray.emulator.testing import ManualClock

CREATE = "PUT /api/v0/asks/{id}/"
SHOW = "GET /api/v0/instances/{id}/"
SEARCH = "POST /api/v0/bundles/"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=0.0)


@pytest.fixture
def limiter(clock: ManualClock) -> RateLimiter:
    return RateLimiter(now=clock)


DOCUMENTED = RateLimitConfig(enabled=True)


def test_interval_per_identity_and_refusals_do_not_restart_it(limiter: RateLimiter, clock: ManualClock) -> None:
    assert limiter.check(DOCUMENTED, SHOW, "k", "a") is None
    clock.now = 1.9
    refused = limiter.check(DOCUMENTED, SHOW, "k", "a")
    assert refused is not None and refused.threshold == 2.0 and refused.reason == "interval"
    assert limiter.check(DOCUMENTED, SHOW, "k2", "a") is None and limiter.check(DOCUMENTED, SHOW, "k", "b") is None
    clock.now = 2.0
    assert limiter.check(DOCUMENTED, SHOW, "k", "a") is None
    assert limiter.refused == {"interval": 1}


def test_create_penalty_restarts_with_each_refusal(limiter: RateLimiter, clock: ManualClock) -> None:
    assert limiter.check(DOCUMENTED, CREATE, "k", "a") is None
    clock.now = 4.5
    assert limiter.check(DOCUMENTED, CREATE, "k", "a") is None  # at the documented pace
    clock.now = 5.0
    assert limiter.check(DOCUMENTED, CREATE, "k", "a").reason == "interval"  # type: ignore[union-attr]
    clock.now = 16.9
    assert limiter.check(DOCUMENTED, CREATE, "k", "a").reason == "penalty"  # type: ignore[union-attr]
    clock.now = 28.8
    assert limiter.check(DOCUMENTED, CREATE, "k", "a") is not None
    clock.now = 40.8  # 12 s after the last refusal
    assert limiter.check(DOCUMENTED, CREATE, "k", "a") is None


def test_search_window_slides_per_address(limiter: RateLimiter, clock: ManualClock) -> None:
    for i in range(10):
        clock.now = float(i)
        assert limiter.check(DOCUMENTED, SEARCH, None, "a") is None
    refused = limiter.check(DOCUMENTED, SEARCH, "any-key", "a")
    assert refused is not None and refused.reason == "search" and refused.threshold == 6.0
    assert limiter.check(DOCUMENTED, SEARCH, None, "b") is None
    clock.now = 60.0
    assert limiter.check(DOCUMENTED, SEARCH, None, "a") is None
    assert limiter.check(DOCUMENTED, SEARCH, None, "a") is not None


def test_scale_and_off(limiter: RateLimiter, clock: ManualClock) -> None:
    scaled = RateLimitConfig(enabled=True, scale=0.1)
    assert scaled.interval(CREATE) == 0.45 and scaled.penalty_s == 1.2 and scaled.search_window_s == 6.0
    off = RateLimitConfig(enabled=False)
    assert all(limiter.check(off, SHOW, "k", "a") is None for _ in range(5))
    assert parse_rate_limits("documented") == (True, 1.0) and parse_rate_limits("off") == (False, 1.0)
    assert parse_rate_limits(" X0.25 ") == (True, 0.25)
    for bad in ("x", "x0", "x-1", "xnan", "xinf", "fast", "x1001"):
        with pytest.raises(ValueError, match="allowed: documented"):
            parse_rate_limits(bad)
