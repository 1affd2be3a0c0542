"""When a failed attempt is tried again, and after how long: the one retry rule of the client.

Backoff is exponential with full jitter; a positive ``Retry-After`` replaces it; a 429 without one waits the
endpoint's penalty plus jitter. No retry starts after the call's deadline, counted from its first slot.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import tenacity

from skyward_ray.vast.endpoints import Endpoint, RetryPolicy
from skyward_ray.vast.errors import QuotaExceededError, RateLimitedError, ServerError, TransportError, VastError
from skyward_ray.vast.pacing import PaceLimits

log = logging.getLogger(__name__)


@dataclass
class CallState:
    """What the attempts of one logical call share: the retry deadline, set once the first attempt has its slot."""

    deadline: float = math.inf
    first_slot: float = 0.0

    def start(self, now: float, deadline_s: float) -> None:
        """Count the deadline from the first slot, not from the time spent queueing for it."""
        if self.deadline == math.inf:
            self.first_slot = now
            self.deadline = now + deadline_s

    def shorten(self, seconds: float) -> None:
        """End retrying ``seconds`` after the first slot (a server that never answered: likely a wrong URL)."""
        self.deadline = min(self.deadline, self.first_slot + seconds)


def is_retryable(endpoint: Endpoint, exc: BaseException) -> bool:
    """THE retry rule: rate limits always (never the daily quota); transport errors and 5xx per the endpoint's
    :class:`RetryPolicy`, transport errors of a ``ONCE`` endpoint only when the request never left."""
    if isinstance(exc, QuotaExceededError):
        return False
    if isinstance(exc, RateLimitedError):
        return True
    if isinstance(exc, TransportError):
        return endpoint.retry is RetryPolicy.IDEMPOTENT or not exc.request_sent
    if isinstance(exc, ServerError):
        # Any 5xx of an idempotent call is safe to repeat (a teardown must survive one bad answer); a call that
        # creates something is never repeated after a 5xx, whose outcome is unknown.
        return endpoint.retry is RetryPolicy.IDEMPOTENT and (exc.status or 0) >= 500
    return False


@dataclass(frozen=True)
class Backoff:
    """The wait before a retry: ``uniform(0, min(cap, base * 2**n))``, or what the failure itself asks for."""

    base_s: float
    cap_s: float
    rng: random.Random
    limits: PaceLimits

    def wait(self, endpoint: Endpoint, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, VastError) and exc.retry_after:
            return exc.retry_after  # "Retry-After: 0" falls through to the jitter, so it cannot cause a tight loop
        if isinstance(exc, RateLimitedError):
            # Vast sends no Retry-After: stay away at least the endpoint's interval (its penalty for creates), plus
            # jitter so that callers refused together do not come back together.
            penalty = self.limits.penalty(str(endpoint))
            if penalty > 0:
                spread = min(self.cap_s, max(self.base_s, penalty / 4))
                return penalty + self.rng.uniform(0.0, spread)
        ceiling = min(self.cap_s, self.base_s * 2 ** (state.attempt_number - 1))
        return self.rng.uniform(0.0, ceiling)


def log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.info("retrying in %.2fs (attempt %d failed): %s", state.upcoming_sleep, state.attempt_number, exc)


def retrying(
    endpoint: Endpoint,
    call: CallState,
    backoff: Backoff,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> tenacity.Retrying:
    """The retry loop of one logical call: retry what :func:`is_retryable` allows, until ``call.deadline``."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda exc: is_retryable(endpoint, exc)),
        wait=lambda state: backoff.wait(endpoint, state),
        stop=lambda state: clock() + state.upcoming_sleep >= call.deadline,
        sleep=sleep,
        before_sleep=log_retry,
        reraise=True,
    )
