"""Client-side pacing to Vast's documented per-endpoint limits, one book per identity shared by the whole process.

Vast refuses a call inside an endpoint's minimum interval with a 429 and no ``Retry-After``; here every caller books
the next free slot under a short lock and sleeps outside it, so N threads start one interval apart with no burst,
and a 429 moves the waiting slots behind the endpoint's penalty (12 s for a create).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from skyward_ray.errors import ConfigError

CREATE_KEY = "PUT /api/v0/asks/{id}/"
SEARCH_KEY = "POST /api/v0/bundles/"
RATE_SCALE_ENV = "SKYWARD_VAST_RATE_SCALE"

# Minimum seconds between two calls of one endpoint by one identity (vast-ai/docs, x-rate-limit).
DOCUMENTED_INTERVALS_S: Mapping[str, float] = MappingProxyType(
    {
        CREATE_KEY: 4.5,
        "GET /api/v1/instances/": 1.0,
        "GET /api/v0/instances/{id}/": 2.0,
        "DELETE /api/v0/instances/{id}/": 3.0,
        "PUT /api/v0/instances/{id}/": 1.0,
        "PUT /api/v0/instances/bid_price/{id}/": 5.5,
        "PUT /api/v0/instances/reboot/{id}/": 1.0,
        "PUT /api/v0/instances/recycle/{id}/": 1.0,
        "POST /api/v0/ssh/": 1.0,
        "PUT /api/v0/ssh/{id}/": 1.0,
        "DELETE /api/v0/instances/{id}/ssh/{key}/": 2.0,
    }
)
# Not in Vast's table, paced anyway [inferred]: the legacy unpaged instance list (the provider's refresh) as the v1
# list it predates, one call per second (the emulator infers the same).
INFERRED_INTERVALS_S: Mapping[str, float] = MappingProxyType({"GET /api/v0/instances/": 1.0})
# How long an endpoint stays closed after Vast refused a call of it for coming too early: a create refused blocks
# that identity's next create until 12 s after the refused call.
DOCUMENTED_PENALTIES_S: Mapping[str, float] = MappingProxyType({CREATE_KEY: 12.0})


@dataclass(frozen=True)
class Window:
    """At most ``calls`` starts in any ``seconds``."""

    calls: int
    seconds: float


# Search: at most 10 calls in any 60 s (a sliding window).
DOCUMENTED_WINDOWS: Mapping[str, Window] = MappingProxyType({SEARCH_KEY: Window(10, 60.0)})
# Limited per client address, not per key: every key of the process shares one book for these (:func:`per_address`).
PER_ADDRESS_KEYS = frozenset({SEARCH_KEY})
# Added to every interval and window: Vast sees arrivals, which differ from our starts by each request's latency.
DEFAULT_MARGIN_S = 0.1


def resolve_rate_scale(value: float | None = None) -> float:
    """``value``, else ``$SKYWARD_VAST_RATE_SCALE``, else 1.0; it must be a finite number > 0."""
    source = "rate_scale"
    raw: object = value
    if value is None:
        text = os.environ.get(RATE_SCALE_ENV, "").strip()
        if not text:
            return 1.0
        source, raw = f"${RATE_SCALE_ENV}", text
        try:
            value = float(text)
        except ValueError:
            value = math.nan
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"{source} = {raw!r} is not allowed: use a number > 0 that multiplies Vast's documented intervals "
            "(1 = as documented, 0.1 = ten times faster, for a test server only)"
        )
    return float(value)


@dataclass(frozen=True)
class PaceLimits:
    """The table a client paces by. Keys are ``"METHOD /template"`` endpoint strings."""

    intervals: Mapping[str, float] = field(
        default_factory=lambda: {**DOCUMENTED_INTERVALS_S, **INFERRED_INTERVALS_S}
    )
    penalties: Mapping[str, float] = field(default_factory=lambda: dict(DOCUMENTED_PENALTIES_S))
    windows: Mapping[str, Window] = field(default_factory=lambda: dict(DOCUMENTED_WINDOWS))
    floor_s: float = 0.0  # minimum interval of every endpoint, documented or not
    margin_s: float = DEFAULT_MARGIN_S

    @classmethod
    def documented(
        cls,
        *,
        rate_scale: float | None = None,
        min_interval_s: float | Mapping[str, float] = 0.0,
        known_keys: frozenset[str] | None = None,
    ) -> PaceLimits:
        """Vast's table scaled by ``rate_scale`` (see :func:`resolve_rate_scale`), then ``min_interval_s`` applied.

        ``min_interval_s`` as a number is a floor for every endpoint (0 = the documented table alone). As a mapping,
        each key replaces that endpoint's documented rule (interval and window; 0 stops pacing it) and ``"*"`` is the
        floor for the others. Overrides are seconds, not scaled. ``known_keys`` lists the keys a mapping may use.
        """
        limits = cls().scaled(resolve_rate_scale(rate_scale))
        return limits.overridden(min_interval_s, known_keys=known_keys)

    def scaled(self, factor: float) -> PaceLimits:
        """Every interval, penalty and window length multiplied by ``factor``. The margin stays: it covers latency
        jitter, which a faster test server does not shrink."""
        return replace(
            self,
            intervals={k: v * factor for k, v in self.intervals.items()},
            penalties={k: v * factor for k, v in self.penalties.items()},
            windows={k: Window(w.calls, w.seconds * factor) for k, w in self.windows.items()},
            floor_s=self.floor_s * factor,
        )

    def overridden(
        self, min_interval_s: float | Mapping[str, float], *, known_keys: frozenset[str] | None = None
    ) -> PaceLimits:
        if isinstance(min_interval_s, Mapping):
            table = dict(min_interval_s)
            allowed = (known_keys or frozenset()) | frozenset(self.intervals) | frozenset(self.windows) | {"*"}
            unknown = sorted(set(table) - allowed)
            if unknown:
                raise ConfigError(
                    f"min_interval_s key {unknown[0]!r} is not allowed: use '*' or one of {sorted(allowed - {'*'})}"
                )
            floor = table.pop("*", self.floor_s)
        else:
            table, floor = {}, min_interval_s
        for key, value in [*table.items(), ("*", floor)]:
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 or math.isinf(value):
                raise ConfigError(f"min_interval_s[{key!r}] = {value!r} is not allowed: use seconds >= 0")
        return replace(
            self,
            intervals={**self.intervals, **{k: float(v) for k, v in table.items()}},
            windows={k: w for k, w in self.windows.items() if k not in table},
            floor_s=float(floor),
        )

    def interval(self, key: str) -> float:
        """Seconds between two starts of ``key`` (0 = not paced)."""
        return max(self.intervals.get(key, 0.0), self.floor_s)

    def window(self, key: str) -> Window | None:
        return self.windows.get(key)

    def penalty(self, key: str) -> float:
        """Seconds to stay away from ``key`` after Vast refused it without saying how long: at least its interval."""
        return max(self.penalties.get(key, 0.0), self.interval(key))

    def paced(self, key: str) -> bool:
        return self.interval(key) > 0 or key in self.windows


def per_address(base_url: str) -> str:
    """The identity of limits Vast counts per client address (search): the server alone, whatever the key."""
    return f"{base_url.rstrip('/')}#address"


def identity_of(base_url: str, api_key: str) -> str:
    """What Vast limits by, as far as one process can tell: the server and the key (hashed; the key itself is never
    kept). The client address is the same for every caller in the process."""
    digest = hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16] if api_key else "anonymous"
    return f"{base_url.rstrip('/')}#{digest}"


class Ticket:
    """One booked start. ``slot`` may move later (never earlier) when a 429 closes the endpoint for a while."""

    __slots__ = ("key", "slot")

    def __init__(self, key: str, slot: float) -> None:
        self.key = key
        self.slot = slot

    def __repr__(self) -> str:
        return f"Ticket({self.key!r}, slot={self.slot:.3f})"


_RECENT_KEPT = 256  # starts remembered per endpoint for window budgets (Vast's only one counts 10)


@dataclass
class _Lane:
    """The book of one endpoint key. Every start is booked here, paced or not, so that callers with different
    limits (an override, another scale) still space themselves from everyone's calls, as Vast counts them."""

    last_slot: float = -math.inf  # the latest booked start
    closed_until: float = -math.inf  # after a 429: nothing starts before this
    waiting: list[Ticket] = field(default_factory=list)  # booked, not started, in slot order
    recent: deque[Ticket] = field(default_factory=lambda: deque(maxlen=_RECENT_KEPT))  # booked starts, oldest first


@dataclass(frozen=True)
class LaneStatus:
    """What a caller (e.g. a provider telling its user why nothing happens yet) can know about one endpoint."""

    key: str
    waiting: int  # callers booked and sleeping until their slot
    next_slot_in_s: float  # seconds until a call booked now would start
    closed_for_s: float  # seconds left of a penalty after a 429 (0 when open)


class Pacer:
    """The slot book of one identity: per endpoint key, who may start when. Thread-safe; the lock is held only to
    book or move slots, never while sleeping. ``clock`` is a monotonic clock (tests pass a fake one)."""

    def __init__(self, identity: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.identity = identity
        self._clock = clock
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def reserve(self, key: str, limits: PaceLimits) -> Ticket:
        """Book the next start of ``key`` allowed by ``limits`` and return its ticket (see :meth:`wait`)."""
        with self._lock:
            now = self._clock()
            lane = self._lanes.setdefault(key, _Lane())
            slot = self._first_free(lane, key, limits, now)
            ticket = Ticket(key, slot)
            lane.last_slot = max(lane.last_slot, slot)
            lane.recent.append(ticket)
            if slot > now:
                lane.waiting.append(ticket)
                lane.waiting.sort(key=lambda t: t.slot)
            return ticket

    def wait(self, ticket: Ticket, sleep: Callable[[float], None]) -> float:
        """Sleep until ``ticket``'s slot (which a penalty may move while we sleep); return the seconds waited."""
        waited = 0.0
        try:
            while True:
                with self._lock:
                    remaining = ticket.slot - self._clock()
                    if remaining <= 0:
                        return waited
                sleep(remaining)
                waited += remaining
        finally:  # started, or given up (an interrupt): either way no longer waiting
            with self._lock:
                lane = self._lanes.get(ticket.key)
                if lane is not None and ticket in lane.waiting:
                    lane.waiting.remove(ticket)

    def acquire(self, key: str, limits: PaceLimits, sleep: Callable[[float], None]) -> float:
        """Book and wait in one step; return the seconds waited."""
        return self.wait(self.reserve(key, limits), sleep)

    def expected_wait(self, key: str, limits: PaceLimits) -> float:
        """Seconds a call of ``key`` booked now would wait for its slot (nothing is booked)."""
        with self._lock:
            now = self._clock()
            lane = self._lanes.get(key) or _Lane()
            return max(0.0, self._first_free(lane, key, limits, now) - now)

    def penalise(self, key: str, seconds: float, limits: PaceLimits) -> None:
        """Vast refused ``key``: nothing starts for ``seconds``; the waiting slots move behind that, in order."""
        with self._lock:
            lane = self._lanes.setdefault(key, _Lane())
            until = self._clock() + max(0.0, seconds)
            lane.closed_until = max(lane.closed_until, until)
            step = limits.interval(key) + limits.margin_s if limits.interval(key) > 0 else 0.0
            start = lane.closed_until
            for ticket in lane.waiting:  # already in slot order
                ticket.slot = max(ticket.slot, start)
                start = ticket.slot + step
                lane.last_slot = max(lane.last_slot, ticket.slot)

    def status(self, key: str, limits: PaceLimits) -> LaneStatus:
        with self._lock:
            now = self._clock()
            lane = self._lanes.get(key) or _Lane()
            waiting = sum(1 for t in lane.waiting if t.slot > now)
            closed = max(0.0, lane.closed_until - now)
            nxt = max(0.0, self._first_free(lane, key, limits, now) - now)
        return LaneStatus(key=key, waiting=waiting, next_slot_in_s=nxt, closed_for_s=closed)

    # --- under the lock ----------------------------------------------------------------------------------------------

    @staticmethod
    def _first_free(lane: _Lane, key: str, limits: PaceLimits, now: float) -> float:
        slot = max(now, lane.closed_until)  # a penalty binds every caller, paced or not
        interval = limits.interval(key)
        if interval > 0:
            slot = max(slot, lane.last_slot + interval + limits.margin_s)
        window = limits.window(key)
        if window is not None and window.calls > 0 and len(lane.recent) >= window.calls:
            # The call `calls` places back must have left the window before this one starts.
            nth_latest = sorted(t.slot for t in lane.recent)[-window.calls]
            slot = max(slot, nth_latest + window.seconds + limits.margin_s)
        return slot


_REGISTRY: dict[tuple[str, Callable[[], float]], Pacer] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_pacer(identity: str, clock: Callable[[], float] = time.monotonic) -> Pacer:
    """THE pacer of ``identity`` in this process (one per clock, so a test's fake clock gets a book of its own)."""
    with _REGISTRY_LOCK:
        pacer = _REGISTRY.get((identity, clock))
        if pacer is None:
            pacer = _REGISTRY[(identity, clock)] = Pacer(identity, clock)
        return pacer
