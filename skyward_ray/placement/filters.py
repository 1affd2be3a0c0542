"""One node group's options as the exact Vast search query, and the same filters re-checked on each returned offer
(Vast does not always honour a filter; ``geolocation`` is matched on free text). Both come from one :class:`Check`
list, so they cannot drift apart, and :mod:`skyward_ray.placement.diagnosis` walks it to say which filter emptied a
result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from skyward_ray.placement.gpus import GpuSelection, gpu_key
from skyward_ray.placement.image import image_cuda_version
from skyward_ray.placement.options import Allocation, PlacementOptions
from skyward_ray.placement.request import NodeGroup, PlacementRequest, Scope
from skyward_ray.vast.models import Offer

DEFAULT_SEARCH_LIMIT = 1000
_EPSILON = 1e-9


@dataclass(frozen=True)
class Check:
    """One filter: which option imposes it, how it reads ("reliability >= 0.95"), and its local test."""

    option: str
    label: str
    test: Callable[[Offer], bool]


@dataclass(frozen=True)
class CudaFloor:
    """The ``cuda_max_good`` floor and what set it, so messages can name the right knob."""

    value: float
    source: str  # "min_cuda", "docker_image" or "accelerator_cuda"


def cuda_floor(options: PlacementOptions, gpu: GpuSelection) -> CudaFloor | None:
    """The highest of: ``min_cuda``, the CUDA in ``docker_image``, and the accelerator's oldest supported CUDA."""
    candidates: list[CudaFloor] = []
    if options.min_cuda is not None:
        candidates.append(CudaFloor(options.min_cuda, "min_cuda"))
    image_cuda = image_cuda_version(options.docker_image)
    if image_cuda is not None:
        candidates.append(CudaFloor(image_cuda, "docker_image"))
    if gpu.model is not None and options.docker_image is None:
        candidates.append(CudaFloor(gpu.model.cuda_min, "accelerator_cuda"))
    return max(candidates, key=lambda floor: floor.value) if candidates else None


class _CountryCache:
    """Offer geolocations repeat a lot; parsing each once keeps a 100k-offer pass fast."""

    def __init__(self) -> None:
        self._codes: dict[str | None, str | None] = {}

    def __call__(self, offer: Offer) -> str | None:
        try:
            return self._codes[offer.geolocation]
        except KeyError:
            code = self._codes[offer.geolocation] = offer.country_code
            return code


class OfferFilter:
    """The search for one node group: its query and its local re-check (``recheck``)."""

    def __init__(
        self,
        group: NodeGroup,
        options: PlacementOptions,
        *,
        scope: Scope = Scope.FREE,
        cluster_id: int | None = None,
        excluded_machines: Iterable[int] = (),
    ) -> None:
        if (scope is Scope.PINNED) != (cluster_id is not None):
            raise ValueError("a pinned scope needs a cluster_id, and only a pinned scope takes one")
        self.group = group
        self.options = options
        self.scope = scope
        self.cluster_id = cluster_id
        self.gpu = group.gpu
        self.gpus = group.gpus_per_node
        self.excluded = frozenset(options.excluded_machines) | frozenset(excluded_machines)
        self.countries = options.countries
        self.cuda = cuda_floor(options, self.gpu)
        # Vast hides machines where the caller already rents when ``rented`` is false. Workers pinned to the head's
        # cluster must see those machines (the plan may put several nodes on one), so the pin drops that filter.
        self.hide_rented = scope is not Scope.PINNED
        self.checks: tuple[Check, ...] = self._build_checks()
        self.accepts: Callable[[Offer], bool] = self._compile()  # == recheck, without the method call

    @classmethod
    def for_request(cls, request: PlacementRequest, options: PlacementOptions) -> list[OfferFilter]:
        scope = request.scope(options)
        return [
            cls(group, options, scope=scope, cluster_id=request.cluster_id, excluded_machines=request.excluded_machines)
            for group in request.groups
        ]

    # -- the filters, in the order explanations apply them -------------------------------------------------------

    def _build_checks(self) -> tuple[Check, ...]:
        options = self.options
        keys = self.gpu.keys
        gpus = self.gpus
        checks = [
            Check("accelerator", f"gpu_name {' or '.join(self.gpu.vast_names)}",
                  lambda o: gpu_key(o.gpu_name) in keys),
            Check("gpus_per_node", f"num_gpus >= {gpus}", lambda o: o.num_gpus >= gpus),
            Check("rentable", "rentable" + (" and not rented by you" if self.hide_rented else ""),
                  (lambda o: o.rentable is not False and o.rented is not True) if self.hide_rented
                  else (lambda o: o.rentable is not False)),
        ]
        if self.excluded:
            excluded = self.excluded
            checks.append(Check("excluded_machines", f"machine_id not in {sorted(excluded)}",
                                lambda o: o.machine_id not in excluded))
        reliability = options.min_reliability
        checks.append(Check("min_reliability", f"reliability >= {reliability:g}",
                            lambda o: o.effective_reliability >= reliability - _EPSILON))
        if self.countries is not None:
            countries = self.countries
            country = _CountryCache()
            checks.append(Check("geolocation", f"geolocation in {options.geolocation}",
                                lambda o: country(o) in countries))
        if options.verified_only:
            checks.append(Check("verified_only", "verified", lambda o: o.verified))
        if options.datacenter_only:
            checks.append(Check("datacenter_only", "datacenter", lambda o: o.datacenter))
        if self.cuda is not None:
            floor = self.cuda.value
            checks.append(Check(self.cuda.source, f"cuda_max_good >= {floor:g}",
                                lambda o: o.cuda_max_good is not None and o.cuda_max_good >= floor - _EPSILON))
        if options.min_inet_down is not None:
            inet = options.min_inet_down
            checks.append(Check("min_inet_down", f"inet_down >= {inet:g} Mb/s",
                                lambda o: o.inet_down is not None and o.inet_down >= inet - _EPSILON))
        disk = options.disk_gb
        checks.append(Check("disk_gb", f"disk_space >= {disk} GB",
                            lambda o: o.disk_space is not None and o.disk_space >= disk - _EPSILON))
        checks.append(Check("direct_port", "direct_port_count >= 1",
                            lambda o: o.direct_port_count is not None and o.direct_port_count >= 1))
        if self.scope is Scope.PINNED:
            pinned = self.cluster_id
            checks.append(Check("cluster_id", f"cluster_id = {pinned}", lambda o: o.cluster_id == pinned))
        elif self.scope is Scope.ONE_CLUSTER:
            checks.append(Check("physical_cluster", "cluster_id not null", lambda o: o.cluster_id is not None))
        return tuple(checks)

    def _compile(self) -> Callable[[Offer], bool]:
        """The same tests as :attr:`checks`, gpu name first (it rejects most offers), without per-check calls."""
        tests = tuple(check.test for check in self.checks[1:])
        keys = self.gpu.keys
        names: dict[str, bool] = {}

        def accepts(offer: Offer) -> bool:
            name = offer.gpu_name
            ok = names.get(name)
            if ok is None:
                ok = names[name] = gpu_key(name) in keys
            if not ok:
                return False
            for test in tests:  # noqa: SIM110 - a loop, not all(generator): runs per offer on 100k-offer markets
                if not test(offer):
                    return False
            return True

        return accepts

    # -- public ------------------------------------------------------------------------------------------------

    def recheck(self, offer: Offer) -> bool:
        """Whether an offer returned by the search really passes every filter of the query."""
        return self.accepts(offer)

    def failed_check(self, offer: Offer) -> Check | None:
        """The first filter this offer fails, or None."""
        for check in self.checks:
            if not check.test(offer):
                return check
        return None

    def search_types(self) -> tuple[str, ...]:
        """Vast's ``type`` per search. Spot-if-available needs both: bids come from a ``bid`` search, and only an
        ``on-demand`` search carries the on-demand price of offers that take no bid. On-demand comes first, so a
        caller that keeps the first row per offer id keeps the one with both prices (rows carry ``min_bid`` either
        way)."""
        allocation = self.group.allocation
        if allocation is Allocation.ON_DEMAND:
            return ("on-demand",)
        if allocation is Allocation.SPOT:
            return ("bid",)
        return ("on-demand", "bid")

    def queries(self, *, limit: int = DEFAULT_SEARCH_LIMIT) -> list[dict[str, Any]]:
        """The ``POST /api/v0/bundles/`` bodies for this group, exactly as Vast expects them."""
        return [self.query(kind, limit=limit) for kind in self.search_types()]

    def query(self, kind: str = "on-demand", *, limit: int = DEFAULT_SEARCH_LIMIT) -> dict[str, Any]:
        """One search body; ``kind`` is Vast's ``type`` ("on-demand" or "bid")."""
        if kind not in ("on-demand", "bid"):
            raise ValueError(f"kind must be 'on-demand' or 'bid', got {kind!r}")
        options = self.options
        names = list(self.gpu.vast_names)
        query: dict[str, Any] = {
            "gpu_name": {"eq": names[0]} if len(names) == 1 else {"in": names},
            # ">=", not "==": a machine's largest offer is all its free GPUs, which bounds how many nodes it takes
            "num_gpus": {"gte": self.gpus},
            "reliability2": {"gte": options.min_reliability},
        }
        if self.countries is not None:
            query["geolocation"] = {"in": sorted(self.countries)}
        if options.verified_only:
            query["verified"] = {"eq": True}
        if options.datacenter_only:
            query["datacenter"] = {"eq": True}
        if self.cuda is not None:
            query["cuda_max_good"] = {"gte": self.cuda.value}
        if options.min_inet_down is not None:
            query["inet_down"] = {"gte": options.min_inet_down}
        query["disk_space"] = {"gte": options.disk_gb}
        query["allocated_storage"] = float(options.disk_gb)  # prices dph_total with our disk included
        if self.scope is Scope.PINNED:
            query["cluster_id"] = {"eq": self.cluster_id}
        elif self.scope is Scope.ONE_CLUSTER:
            query["cluster_id"] = {"neq": None}
        if self.excluded:
            query["machine_id"] = {"notin": sorted(self.excluded)}
        query["rentable"] = {"eq": True}
        if self.hide_rented:
            query["rented"] = {"eq": False}
        query["direct_port_count"] = {"gte": 1}
        query["type"] = kind
        query["order"] = [["min_bid" if kind == "bid" else "dph_total", "asc"]]
        query["limit"] = limit
        return query

    def broad_queries(self, *, limit: int = DEFAULT_SEARCH_LIMIT) -> list[dict[str, Any]]:
        """Only the accelerator: searches whose results let :func:`~skyward_ray.placement.explain.explain` say which
        option emptied the strict search, and how far it would have to move."""
        names = list(self.gpu.vast_names)
        return [
            {
                "gpu_name": {"eq": names[0]} if len(names) == 1 else {"in": names},
                "rentable": {"eq": True},
                "type": kind,
                "order": [["min_bid" if kind == "bid" else "dph_total", "asc"]],
                "limit": limit,
            }
            for kind in self.search_types()
        ]


def build_queries(
    request: PlacementRequest, options: PlacementOptions, *, limit: int = DEFAULT_SEARCH_LIMIT, broad: bool = False
) -> list[dict[str, Any]]:
    """The distinct searches a request needs (groups with the same filters share one), on-demand ones first. Pass
    every row they return to :func:`~skyward_ray.placement.planner.plan`: duplicates are fine, and the same offer id
    from an on-demand and a bid search carries different ``dph_total`` values (the bid row's is not on-demand)."""
    queries: list[dict[str, Any]] = []
    for offer_filter in OfferFilter.for_request(request, options):
        found = offer_filter.broad_queries(limit=limit) if broad else offer_filter.queries(limit=limit)
        queries.extend(query for query in found if query not in queries)
    return sorted(queries, key=lambda query: query["type"] == "bid")


def recheck(offers: Iterable[Offer], group: NodeGroup, options: PlacementOptions, **scope: Any) -> list[Offer]:
    """The offers that really pass every filter of ``group``'s search (``scope``: see :class:`OfferFilter`)."""
    offer_filter = OfferFilter(group, options, **scope)
    return [offer for offer in offers if offer_filter.recheck(offer)]
