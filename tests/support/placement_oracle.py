"""An independent brute-force placement oracle: its own filters, prices and capacity rule, written from the option
semantics rather than from the planner's code, so the property tests compare the planner against something else."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

from skyward_ray.placement import PlacementOptions, PlacementRequest, Scope, resolve_gpu, resolve_region
from skyward_ray.placement.options import Allocation
from skyward_ray.vast.models import Offer


def oracle_passes(o: Offer, options: PlacementOptions, accelerator: str, gpus: int, *, cluster: str,
                  pinned: int | None = None, excluded: frozenset[int] = frozenset(),
                  include_variants: bool = False) -> bool:
    """Every filter, from the option semantics. ``cluster``: "free", "one" or "pinned"."""
    selection = resolve_gpu(accelerator, include_variants=include_variants)
    names = {name.upper().replace(" ", "") for name in selection.vast_names}
    if o.gpu_name.upper().replace(" ", "").replace("_", "") not in names or o.num_gpus != gpus:
        return False
    reliability = o.reliability2 if o.reliability2 is not None else (o.reliability or 0.0)
    if reliability < options.min_reliability - 1e-12:
        return False
    if options.geolocation and (o.geolocation or "")[-2:] not in resolve_region(options.geolocation):
        return False
    if options.verified_only and o.verification != "verified":
        return False
    if options.datacenter_only and o.hosting_type != 1:
        return False
    floors = [options.min_cuda or 0.0]
    if selection.model is not None and options.docker_image is None:
        floors.append(selection.model.cuda_min)
    if o.cuda_max_good is None or o.cuda_max_good < max(floors) - 1e-12:
        return False
    if options.min_inet_down is not None and (o.inet_down or 0.0) < options.min_inet_down:
        return False
    if (o.disk_space or 0.0) < options.disk_gb or not o.direct_port_count:
        return False
    if o.rentable is False or o.machine_id in options.excluded_machines | excluded:
        return False
    if cluster == "pinned":
        return o.cluster_id == pinned
    if cluster == "free":
        return o.rented is not True
    return o.cluster_id is not None and o.rented is not True


def oracle_price(o: Offer, allocation: Allocation, options: PlacementOptions) -> tuple[float, bool] | None:
    """(price $/h, is_bid) or None, from the allocation rules."""
    bid = None
    if o.min_bid is not None and (options.max_bid is None or o.min_bid <= options.max_bid):
        bid = o.min_bid * options.bid_multiplier
        if options.max_bid is not None:
            bid = min(bid, options.max_bid)
    if allocation is Allocation.SPOT:
        return None if bid is None else (bid, True)
    if allocation is Allocation.SPOT_IF_AVAILABLE and bid is not None:
        return bid, True
    return None if o.is_bid else (o.dph_total, False)


@dataclass(frozen=True)
class Optimum:
    """The oracle's answer: total price and reliability (in millionths, for exact comparison) and the offers."""

    price_micro: int
    reliability_micro: int
    total: float
    offers: tuple[Offer, ...]


def brute_force(request: PlacementRequest, options: PlacementOptions, offers: list[Offer],
                committed: float = 0.0) -> Optimum | None:
    """Every assignment of nodes to offers; the feasible one with the lowest price, then the highest reliability."""
    cluster = {Scope.FREE: "free", Scope.ONE_CLUSTER: "one", Scope.PINNED: "pinned"}[request.scope(options)]
    free: dict[int, int] = {}
    for o in offers:
        free[o.machine_id] = max(free.get(o.machine_id, 0), o.num_gpus)
    choices = []
    for group in request.groups:
        eligible = {}
        for o in offers:
            if not oracle_passes(o, options, group.accelerator, group.gpus_per_node, cluster=cluster,
                                 pinned=request.cluster_id, excluded=request.excluded_machines,
                                 include_variants=group.include_variants):
                continue
            priced = oracle_price(o, group.allocation, options)
            if priced is not None:
                key = (round(priced[0] * 1e6), -round(o.effective_reliability * 1e6))
                if o.machine_id not in eligible or key < eligible[o.machine_id][0]:
                    eligible[o.machine_id] = (key, o, priced[0])
        choices.append(list(itertools.combinations_with_replacement(sorted(eligible.values(), key=lambda e: e[0]),
                                                                    group.count)))
    budget = None if options.max_hourly_cost is None else round((options.max_hourly_cost - committed) * 1e6)
    best: Optimum | None = None
    for combo in itertools.product(*choices):
        gpus_on: Counter[int] = Counter()
        nodes_on: Counter[int] = Counter()
        odd: set[int] = set()
        clusters = set()
        price = rel = 0
        total = 0.0
        chosen = []
        for group, picks in zip(request.groups, combo, strict=True):
            g = group.gpus_per_node
            for (p_micro, minus_rel), o, p in picks:
                gpus_on[o.machine_id] += g
                nodes_on[o.machine_id] += 1
                if g & (g - 1):
                    odd.add(o.machine_id)
                clusters.add(o.cluster_id)
                price += p_micro
                rel += -minus_rel
                total += p
                chosen.append(o)
        if any(gpus_on[m] > free[m] for m in gpus_on) or any(nodes_on[m] > 1 for m in odd):
            continue
        if cluster != "free" and len(clusters) != 1:
            continue
        if budget is not None and price > budget:
            continue
        if best is None or (price, -rel) < (best.price_micro, -best.reliability_micro):
            best = Optimum(price, rel, total, tuple(chosen))
    return best
