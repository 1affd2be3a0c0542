"""``plan(request, options, offers) -> Plan``: the one placement decision shared by the provider, the ``sky`` API and
``skyward-ray offers``. Pure: the same offers always give the same plan; when nothing fits,
:class:`~skyward_ray.placement.explanation.NoPlacementError` says which filter emptied the result and what would help.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict

from skyward_ray.placement.explain import explain
from skyward_ray.placement.explanation import NoPlacementError
from skyward_ray.placement.image import ImageChoice, ImageSource, choose_image
from skyward_ray.placement.options import PlacementOptions
from skyward_ray.placement.request import PlacementRequest, Scope
from skyward_ray.placement.solver import Market, Solution, budget_micro, collect, majority_country, solve
from skyward_ray.vast.models import Offer

DEFAULT_RUNNERS_UP = 3


class NodeAssignment(BaseModel):
    """One node: which group it serves, the offer to rent, and the price to pay."""

    model_config = ConfigDict(frozen=True)

    group: str
    offer: Offer
    price_per_hour: float
    is_bid: bool

    @property
    def offer_id(self) -> int:
        return self.offer.id

    @property
    def machine_id(self) -> int:
        return self.offer.machine_id

    @property
    def cluster_id(self) -> int | None:
        return self.offer.cluster_id

    @property
    def bid_price(self) -> float | None:
        """The ``price`` to send with ``PUT /asks/{id}/``; None for on-demand."""
        return self.price_per_hour if self.is_bid else None

    def summary(self) -> dict[str, object]:
        """The fields people read (``--json``, logs), without the whole offer."""
        return {
            "group": self.group,
            "offer_id": self.offer.id,
            "machine_id": self.offer.machine_id,
            "cluster_id": self.offer.cluster_id,
            "gpu_name": self.offer.gpu_name,
            "num_gpus": self.offer.num_gpus,
            "price_per_hour": round(self.price_per_hour, 6),
            "is_bid": self.is_bid,
            "reliability": self.offer.effective_reliability,
            "geolocation": self.offer.geolocation,
        }


class ClusterOption(BaseModel):
    """A runner-up: the best plan on another physical cluster."""

    model_config = ConfigDict(frozen=True)

    cluster_id: int | None
    total_per_hour: float
    machines: int
    country: str | None


class Plan(BaseModel):
    """Where every node of a request goes, what it costs, and which image it runs."""

    model_config = ConfigDict(frozen=True)

    scope: Scope
    cluster_id: int | None  # the physical cluster (None when nodes may go anywhere)
    country: str | None
    nodes: tuple[NodeAssignment, ...]
    total_per_hour: float
    image: str
    image_source: ImageSource
    image_cuda: float | None
    runners_up: tuple[ClusterOption, ...] = ()

    def nodes_of(self, group: str) -> list[NodeAssignment]:
        return [node for node in self.nodes if node.group == group]

    def summary(self) -> dict[str, object]:
        return {
            "scope": self.scope.value,
            "cluster_id": self.cluster_id,
            "country": self.country,
            "total_per_hour": round(self.total_per_hour, 6),
            "image": self.image,
            "image_source": self.image_source.value,
            "nodes": [node.summary() for node in self.nodes],
            "runners_up": [option.model_dump() for option in self.runners_up],
        }


def _runner_up(solution: Solution) -> ClusterOption:
    offers = solution.offers
    return ClusterOption(
        cluster_id=solution.cluster_id,
        total_per_hour=round(solution.per_hour, 6),
        machines=len({offer.machine_id for offer in offers}),
        country=majority_country(offers),
    )


def _assignments(request: PlacementRequest, solution: Solution) -> tuple[NodeAssignment, ...]:
    """One assignment per node: a pick of k nodes on one offer rents that offer k times."""
    return tuple(
        NodeAssignment(
            group=request.groups[pick.group].name,
            offer=pick.candidate.offer,
            price_per_hour=pick.candidate.price.per_hour,
            is_bid=pick.candidate.price.is_bid,
        )
        for pick in solution.picks
        for _ in range(pick.nodes)
    )


def _image(market: Market, options: PlacementOptions, solution: Solution) -> ImageChoice:
    """The image every chosen host can run, above the highest CUDA floor of the request's searches."""
    floors = [offer_filter.cuda.value for offer_filter in market.filters if offer_filter.cuda is not None]
    return choose_image(
        options.docker_image,
        [offer_filter.gpu.model for offer_filter in market.filters],
        [offer.cuda_max_good for offer in solution.offers],
        floor=max(floors) if floors else None,
    )


def plan(
    request: PlacementRequest,
    options: PlacementOptions,
    offers: Iterable[Offer],
    *,
    already_committed_per_hour: float = 0.0,
    runners_up: int = DEFAULT_RUNNERS_UP,
) -> Plan:
    """The cheapest placement of ``request`` on ``offers`` (ties: more reliable, then lower ids).

    ``already_committed_per_hour`` is what the cluster already spends or has in flight, so ``max_hourly_cost`` caps
    the whole cluster rather than each request. Raises NoPlacementError with a specific explanation.
    """
    if already_committed_per_hour < 0 or already_committed_per_hour != already_committed_per_hour:
        raise ValueError(f"already_committed_per_hour must be >= 0, got {already_committed_per_hour!r}")
    offers = offers if isinstance(offers, Sequence) else list(offers)
    budget = budget_micro(options, already_committed_per_hour)
    market = collect(request, options, offers, budget_micro=budget)
    solutions = solve(market, keep=1 + max(runners_up, 0), budget_micro=budget)
    if not solutions:
        raise NoPlacementError(
            explain(request, options, offers, already_committed_per_hour=already_committed_per_hour)
        )
    best = solutions[0]
    image = _image(market, options, best)
    return Plan(
        scope=market.scope,
        cluster_id=best.cluster_id,
        country=majority_country(best.offers),
        nodes=_assignments(request, best),
        total_per_hour=best.per_hour,
        image=image.image,
        image_source=image.source,
        image_cuda=image.cuda,
        runners_up=tuple(_runner_up(solution) for solution in solutions[1:]),
    )
