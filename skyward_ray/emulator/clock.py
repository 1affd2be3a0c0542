"""The emulator's one clock.

Every time-driven rule (boot delay, outbid and failure rates, price drift, credit drain, rate-limit intervals) reads
this clock, so a test can freeze time (``scale=0``), jump it (``advance``) or run it faster (``scale>1``) and see the
market react at once instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Clock:
    """Emulated seconds since the market opened: real monotonic time times ``scale``, plus every ``advance``.

    ``epoch()`` maps the same instant to wall-clock seconds, for the ``start_date``-style fields Vast sends.
    Thread-safe.
    """

    def __init__(self, scale: float = 1.0, *, monotonic: Callable[[], float] = time.monotonic,
                 wall_start: float | None = None) -> None:
        if scale < 0:
            raise ValueError(f"clock scale: {scale!r} is negative; allowed: >= 0 (0 freezes time)")
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._anchor_real = monotonic()
        self._anchor_emulated = 0.0
        self._scale = float(scale)
        self._wall_start = time.time() if wall_start is None else wall_start

    def now(self) -> float:
        with self._lock:
            return self._anchor_emulated + (self._monotonic() - self._anchor_real) * self._scale

    def epoch(self, at: float | None = None) -> float:
        """Wall-clock seconds of the emulated instant ``at`` (default: now)."""
        return self._wall_start + (self.now() if at is None else at)

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"clock scale: {value!r} is negative; allowed: >= 0 (0 freezes time)")
        with self._lock:
            real = self._monotonic()
            self._anchor_emulated += (real - self._anchor_real) * self._scale
            self._anchor_real = real
            self._scale = float(value)

    def advance(self, seconds: float) -> float:
        """Jump forward; returns the new emulated time. Going backwards is refused: every rule assumes time grows."""
        if seconds < 0:
            raise ValueError(f"clock advance: {seconds!r} is negative; allowed: >= 0")
        with self._lock:
            self._anchor_emulated += seconds
        return self.now()
