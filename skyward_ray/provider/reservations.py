"""Plans a launch on the shared offer answers and reserves its nodes' $/h (and the offers' GPUs) in one locked step,
so concurrent launches never both spend the same ``max_hourly_cost`` headroom; settles each reservation when its
rental ends (a rental of unknown outcome stays reserved until a list shows whether it exists)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import Any

from skyward_ray.placement import (
    DEFAULT_SEARCH_LIMIT,
    NodeGroup,
    NoPlacementError,
    PlacementRequest,
    Plan,
    build_queries,
    explain,
    plan,
)
from skyward_ray.placement.budget import with_fewer_workers
from skyward_ray.provider.config import VastProviderConfig
from skyward_ray.provider.records import ProviderState, Rental
from skyward_ray.provider.search_cache import OfferCache
from skyward_ray.vast.errors import VastError
from skyward_ray.vast.models import Offer


class Reservations:
    """Planning against the budget, and the reservations of rentals in flight."""

    def __init__(self, state: ProviderState, config: VastProviderConfig, offer_cache: OfferCache,
                 excluded_machines: Callable[[], frozenset[int]], clock: Callable[[], float]) -> None:
        self._state = state
        self._config = config
        self._offers = offer_cache
        self._excluded_machines = excluded_machines  # called with the state lock held
        self._clock = clock

    def plan(
        self, groups: list[NodeGroup], rent_group: str, *, pinned_cluster: int | None, physical_cluster: bool | None
    ) -> tuple[Plan, list[Rental]]:
        """Search (outside the lock), then plan and reserve ``rent_group``'s nodes in one locked step."""
        with self._state.lock:
            excluded = self._excluded_machines()
        request = PlacementRequest(groups=tuple(groups), cluster_id=pinned_cluster, excluded_machines=excluded,
                                   physical_cluster=None if pinned_cluster is not None else physical_cluster)
        queries = build_queries(request, self._config.placement, limit=search_limit(request))
        offers = self._offers.offers(queries)
        the_plan, rentals, committed, offers = self._plan_and_reserve(request, rent_group, queries, offers)
        if the_plan is None and self._offers.is_dirty(queries):
            # The shared answer lost offers to our own rentals or to rivals since it was fetched: a fresh search may
            # hold what it lacks. A clean answer that cannot place says what a new search would, so none is made.
            self._offers.note_refresh()
            offers = self._offers.offers(queries, fresh=True)
            the_plan, rentals, committed, offers = self._plan_and_reserve(request, rent_group, queries, offers)
        if the_plan is None:
            raise NoPlacementError(self._explain(request, offers, committed, head_plan=bool(physical_cluster)))
        return the_plan, rentals

    def _explain(self, request: PlacementRequest, offers: dict[int, Offer], committed: float, *,
                 head_plan: bool) -> str:
        """Why nothing could be placed. A strict search returns nothing that fails a filter, so it cannot say which
        filter emptied it: one broad search (on failure only, shared like any other) lets the explanation name the
        filter and how far it would have to move."""
        options = self._config.placement
        broad = self._offers.offers(build_queries(request, options, limit=search_limit(request), broad=True))
        explanation = explain(request, options, [*offers.values(), *broad.values()],
                              already_committed_per_hour=committed)
        if head_plan:  # the head's plan: when the cap stops it, also name the max_workers it covers
            explanation = with_fewer_workers(
                explanation, request, options, list(offers.values()),
                lambda group: f"available_node_types.{group.removesuffix(' workers')}.max_workers",
                already_committed_per_hour=committed)
        return explanation

    def _plan_and_reserve(
        self, request: PlacementRequest, rent_group: str, queries: list[dict[str, Any]], offers: dict[int, Offer]
    ) -> tuple[Plan | None, list[Rental], float, dict[int, Offer]]:
        """Plan on the shared answers as they are now and reserve ``rent_group``'s nodes (money and GPUs) in one
        locked step. Returns (plan or None, rentals, $/h already committed, the offers planned on)."""
        with self._state.lock:
            offers = self._offers.current(queries, offers)
            committed = self._state.committed_per_hour()
            try:
                the_plan = plan(request, self._config.placement, list(offers.values()),
                                already_committed_per_hour=committed)
            except NoPlacementError:
                return None, [], committed, offers
            rentals = [Rental(secrets.token_hex(4), assignment, the_plan.image)
                       for assignment in the_plan.nodes_of(rent_group)]
            for rental in rentals:
                self._state.inflight[rental.nonce] = rental.assignment.price_per_hour
                self._offers.take(rental.nonce, rental.assignment.machine_id, rental.assignment.offer.num_gpus,
                                  queries)
        return the_plan, rentals, committed, offers

    def release(self, rentals: Iterable[Rental]) -> None:
        """Give back the reservations of rentals that will not be made."""
        with self._state.lock:
            for rental in rentals:
                self._state.inflight.pop(rental.nonce, None)
                self._offers.released(rental.nonce)

    def failed(self, rental: Rental, exc: VastError) -> None:
        """Settle a rental Vast refused or whose answer was lost. One that may exist anyway stays reserved, and is
        destroyed as a ghost when a list shows it; one that named an instance is a ghost at once (its destroy
        follows, and a list retries it should that fail)."""
        self._offers.released(rental.nonce)
        with self._state.lock:
            if exc.outcome_unknown and exc.new_contract is None:
                self._state.ghost_nonces.add(rental.nonce)
                self._state.unsettled_ghosts[rental.nonce] = self._clock()
            else:
                self._state.inflight.pop(rental.nonce, None)
                if exc.new_contract is not None:
                    self._state.ghost_nonces.add(rental.nonce)


def search_limit(request: PlacementRequest) -> int:
    """Offers to fetch per search. Choosing a physical cluster needs the market's breadth; renting on a pinned
    cluster or anywhere needs only the cheapest few per node (results come cheapest first), and every offer fetched
    costs parsing time."""
    if request.cluster_id is None and request.physical_cluster:
        return DEFAULT_SEARCH_LIMIT
    return min(DEFAULT_SEARCH_LIMIT, max(100, 10 * request.total_nodes))
