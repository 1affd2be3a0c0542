"""Log lines telling how far one launch is while the client's pacer spaces its rentals (Vast accepts one rental per
4.5 s per account): the expected time when it starts, then "k of N rented" and when the next rental goes out."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from skyward_ray.vast.client import CREATE_INSTANCE, VastClient

log = logging.getLogger(__name__)


class RentalProgress:
    """How far one launch is, told in log lines while the pacer spaces its rentals (the autoscaler's log on the head,
    ``ray up``'s output on the laptop): the expected time when it starts, then "k of N rented" and when the next
    rental goes out, after each one."""

    def __init__(self, client: Callable[[], VastClient], group: str, total: int) -> None:
        self._client = client
        self._group = group
        self._total = total
        self._done = 0
        self._queued = 0
        self._lock = threading.Lock()

    def _pace(self) -> tuple[float, float, float]:
        """From the client's pacer: (seconds until a create booked now starts, seconds until the first create
        already queued starts, seconds between two creates). The queue holds every launch's rentals (Ray runs two
        launches at once), so a create booked now is also when the last queued one will have started."""
        client = self._client()
        try:
            status = client.pacing_status(CREATE_INSTANCE)
            limits = client.pace_limits
        except AttributeError:  # a client without a pacer (a test double)
            return 0.0, 0.0, 0.0
        step = limits.interval(str(CREATE_INSTANCE)) + limits.margin_s
        queued_first = max(0.0, status.next_slot_in_s - status.waiting * step) if status.waiting else \
            status.next_slot_in_s
        return status.next_slot_in_s, max(queued_first, status.closed_for_s), step

    def starting(self, rentals: int) -> None:
        with self._lock:
            self._queued += rentals
        new, _, step = self._pace()
        if rentals > 1 and step > 0:
            log.info("renting %d %s node(s): Vast accepts one rental every %.1f s per account, so the last should be "
                     "accepted in about %.0f s; each node is reported as soon as Vast accepts it", rentals,
                     self._group, step, new + (rentals - 1) * step)

    def accepted(self) -> None:
        with self._lock:
            self._done += 1
            done, queued = self._done, self._queued
        left = max(0, queued - done)
        if self._total <= 1:
            return
        if left == 0:
            log.info("rented %d of %d %s node(s)", done, self._total, self._group)
            return
        last, first, step = self._pace()
        log.info("rented %d of %d %s node(s); the next rental goes out in %.1f s, the %d left within about %.0f s",
                 done, self._total, self._group, first, left, max(last - step, first + (left - 1) * step))
