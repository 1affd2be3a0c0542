"""How many workers ``max_hourly_cost`` does cover when it keeps a cluster's head from being placed, so the error
can name both ways out: raise the cap, or lower ``max_workers`` to that. Pure: offers in, counts out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from skyward_ray.placement.explanation import Explanation, NoPlacementError
from skyward_ray.placement.options import PlacementOptions
from skyward_ray.placement.planner import plan
from skyward_ray.placement.request import PlacementRequest
from skyward_ray.vast.models import Offer


def workers_within_cap(
    request: PlacementRequest,
    options: PlacementOptions,
    offers: Sequence[Offer],
    *,
    already_committed_per_hour: float = 0.0,
) -> dict[str, int] | None:
    """``{worker group: count}`` at the largest k such that the head plus every worker group at ``min(count, k)``
    still fits under ``max_hourly_cost``. Group 0 is the head, kept as it is: it is placed with its workers on one
    physical cluster so the cluster can grow to its size there. None when there is no cap or no worker group, when
    the full request already fits, or when the head alone does not (then lowering ``max_workers`` does not help)."""
    head, workers = request.groups[0], request.groups[1:]
    if not workers or options.max_hourly_cost is None:
        return None

    def fits(k: int) -> bool:
        groups = (head, *(g.model_copy(update={"count": min(g.count, k)}) for g in workers if min(g.count, k) > 0))
        try:
            plan(request.model_copy(update={"groups": groups}), options, offers,
                 already_committed_per_hour=already_committed_per_hour, runners_up=0)
        except NoPlacementError:
            return False
        return True

    top = max(g.count for g in workers)
    if fits(top) or not fits(0):
        return None
    low, high = 0, top  # fits(low), not fits(high): fewer workers never cost more
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return {g.name: min(g.count, low) for g in workers}


def with_fewer_workers(
    explanation: Explanation,
    request: PlacementRequest,
    options: PlacementOptions,
    offers: Sequence[Offer],
    setting: Callable[[str], str],
    *,
    already_committed_per_hour: float = 0.0,
) -> Explanation:
    """``explanation`` of a plan that failed on ``max_hourly_cost``, its reason extended by the other way out: the
    ``max_workers`` the cap covers (``setting(group)`` names each group's key). Unchanged when that does not apply."""
    if explanation.stage != "max_hourly_cost":
        return explanation
    counts = workers_within_cap(request, options, offers, already_committed_per_hour=already_committed_per_hour)
    if counts is None:
        return explanation
    settings = ", ".join(f"{setting(group)}: {count}" for group, count in counts.items())
    cap = options.max_hourly_cost or 0.0
    reason = (f"{explanation.reason}; with the head on one physical cluster, max_hourly_cost {cap:g} covers at most "
              f"{settings} (lower max_workers to that, or raise the cap)")
    return replace(explanation, reason=reason)
