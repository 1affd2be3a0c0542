"""Vast's documented rate limits as a pure rule (no HTTP): per endpoint and identity minimum intervals, the create
penalty, and the per-address search budget. The HTTP layer asks :meth:`RateLimiter.check` before serving a call.

Time is real (``time.monotonic`` unless a test injects a clock), not the market clock: Vast's limits are wall-clock
limits, and a market clock sped up or frozen for a test must not loosen or freeze them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from skyward_ray.emulator.documented import PENALIZED_ENDPOINTS, SEARCH_ENDPOINTS, SEARCH_REQUESTS
from skyward_ray.emulator.faults import RateLimitConfig


@dataclass(frozen=True)
class Refusal:
    """Why a call was refused: ``threshold`` is the interval the 429 body names; ``reason`` one of ``interval``,
    ``penalty``, ``search``."""

    threshold: float
    reason: str


class RateLimiter:
    """Remembers accepted calls per (API key, client address, endpoint) and searches per client address."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str, str], float] = {}
        self._penalty_until: dict[tuple[str, str, str], float] = {}
        self._searches: dict[str, deque[float]] = {}
        self.refused: Counter[str] = Counter()

    def reset(self) -> None:
        with self._lock:
            self._last.clear()
            self._penalty_until.clear()
            self._searches.clear()
            self.refused.clear()

    def check(self, config: RateLimitConfig, endpoint: str, key: str | None, address: str) -> Refusal | None:
        """None when the call may go ahead (and it is then counted), else the refusal."""
        if not config.enabled:
            return None
        refusal = self._check(config, endpoint, key or "", address, self._now())
        if refusal is not None:
            with self._lock:
                self.refused[refusal.reason] += 1
        return refusal

    def _check(self, config: RateLimitConfig, endpoint: str, key: str, address: str, now: float) -> Refusal | None:
        if endpoint in SEARCH_ENDPOINTS and endpoint not in config.per_endpoint:
            # search_offers.yaml: 10 requests per minute per IP address. A sliding window over the accepted searches
            # of one client address, whatever the key (anonymous searches count too).
            window = config.search_window_s
            with self._lock:
                accepted = self._searches.setdefault(address, deque())
                while accepted and now - accepted[0] >= window:
                    accepted.popleft()
                if len(accepted) >= SEARCH_REQUESTS:
                    return Refusal(window / SEARCH_REQUESTS, "search")
                accepted.append(now)
            return None
        interval = config.interval(endpoint)
        identity = (key, address, endpoint)
        with self._lock:
            if endpoint in PENALIZED_ENDPOINTS:
                # The create's "penalty: 12", as read here: a create refused for coming inside its 4.5 s interval
                # puts that identity in a penalty box, and every create until 12 s after the LAST refused one is
                # refused too (each refusal restarts the 12 s). A client that waits the 12 s after a 429 gets
                # through; one that keeps retrying sooner stays refused.
                until = self._penalty_until.get(identity)
                if until is not None and now < until:
                    self._penalty_until[identity] = now + config.penalty_s
                    return Refusal(interval, "penalty")
            if interval <= 0:
                return None
            last = self._last.get(identity)
            if last is not None and now - last < interval:
                # Only accepted calls move the interval: a refused call does not restart it (except the penalty).
                if endpoint in PENALIZED_ENDPOINTS:
                    self._penalty_until[identity] = now + config.penalty_s
                return Refusal(interval, "interval")
            self._last[identity] = now
        return None
