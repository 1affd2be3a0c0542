"""Which stage leaves a request no placement, and why, in words naming the offers at hand: a filter (re-applied one at
a time, in :attr:`~skyward_ray.placement.filters.OfferFilter.checks` order), the offer sizes, the prices, a physical
cluster's room, or the budget.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from skyward_ray.placement.explanation import money
from skyward_ray.placement.filters import Check, OfferFilter
from skyward_ray.placement.gpus import known_gpu_names
from skyward_ray.placement.options import Allocation, PlacementOptions
from skyward_ray.placement.pricing import node_price
from skyward_ray.placement.request import NodeGroup, PlacementRequest, Scope
from skyward_ray.placement.solver import buckets, budget_micro, capacity, collect, majority_country, solve
from skyward_ray.vast.models import Offer

# Filters whose failure needs no figure: "N offers of X match ..., but <this>".
_NONE_PASSES: dict[str, str] = {
    "rentable": "all are rented or not rentable",
    "excluded_machines": "all are on excluded machines",
    "verified_only": "none is on a verified host",
    "datacenter_only": "none is in a datacenter",
    "direct_port": "none has a direct port",
    "physical_cluster": "none is on a physical cluster (cluster_id is null), as an overlay of several nodes needs",
}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _distinct(offers: Iterable[Offer]) -> int:
    """Offers counted once: the same offer comes back from a bid and an on-demand search, and from a broad one."""
    return len({offer.id for offer in offers})


def _verb(count: int, singular: str, plural: str) -> str:
    return singular if count == 1 else plural


def _chosen_filters(checks: Iterable[Check], options: PlacementOptions) -> list[str]:
    """Labels of the filters the user set away from their defaults: the ones worth naming in a message."""
    defaults = PlacementOptions.model_fields
    return [
        check.label
        for check in checks
        if check.option in defaults and getattr(options, check.option) != defaults[check.option].default
    ]


def _matching(count: int, noun: str, label: str, checks: Iterable[Check], options: PlacementOptions) -> str:
    """e.g. "12 offers of RTX 4090 match reliability >= 0.98" (just "12 offers of RTX 4090" when all is default)."""
    chosen = _chosen_filters(checks, options)
    text = f"{_plural(count, noun)} of {label}"
    if chosen:
        return f"{text} {_verb(count, 'matches', 'match')} {', '.join(chosen)}"
    return text


def _countries(offers: Iterable[Offer]) -> str:
    counts = Counter(offer.country_code or "unknown" for offer in {o.id: o for o in offers}.values())
    return ", ".join(f"{code} ({count})" for code, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:6])


def _best(offers: Iterable[Offer], field: Callable[[Offer], float | None], text: str) -> str:
    """`` (the highest is 12.4)``: the best value of ``field`` on offer, formatted by ``text``; "" when none has one."""
    values = [value for value in map(field, offers) if value is not None]
    return f" ({text.format(max(values))})" if values else ""


def _filter_reason(check: Check, offer_filter: OfferFilter, before: Sequence[Offer], passed: list[Check]) -> str:
    """Why ``check`` left none of ``before``, with the best value that was on offer."""
    options = offer_filter.options
    label = offer_filter.gpu.label
    option = check.option
    if option == "accelerator":
        text = f"the search result has no offers of {' or '.join(offer_filter.gpu.vast_names)}"
        if offer_filter.gpu.model is None:
            text += f" ({offer_filter.gpu.requested!r} is not in the GPU table; known: {', '.join(known_gpu_names())})"
        return text
    what = _matching(_distinct(before), "offer", label, passed, options)
    if option in _NONE_PASSES:
        return f"{what}, but {_NONE_PASSES[option]}"
    if option == "gpus_per_node":
        largest = max(offer.num_gpus for offer in before)
        return f"{what}, but none has {offer_filter.gpus} or more free GPUs (the largest has {largest})"
    if option == "min_reliability":
        best = max(offer.effective_reliability for offer in before)
        return f"{what}, but none has reliability >= {options.min_reliability:g} (the best is {best:.4g})"
    if option == "geolocation":
        return f"{what}, but none is in {options.geolocation}; they are in {_countries(before)}"
    if option in {"min_cuda", "docker_image", "accelerator_cuda"}:
        best = _best(before, lambda offer: offer.cuda_max_good, "the highest is {:g}")
        source = {"min_cuda": "min_cuda", "docker_image": "the CUDA of docker_image"}.get(
            option, f"the oldest CUDA for {label}"
        )
        return f"{what}, but none has {check.label} (set by {source}){best}"
    if option == "min_inet_down":
        best = _best(before, lambda offer: offer.inet_down, "the fastest has {:g} Mb/s")
        return f"{what}, but none has {check.label}{best}"
    if option == "disk_gb":
        best = _best(before, lambda offer: offer.disk_space, "the largest has {:g} GB free")
        return f"{what}, but none has {check.label}{best}"
    if option == "cluster_id":
        elsewhere = Counter(offer.cluster_id for offer in {o.id: o for o in before}.values())
        shown = ", ".join(f"{cid if cid is not None else 'none'} ({n})" for cid, n in elsewhere.most_common(5))
        return f"{what}, but none is on physical cluster {offer_filter.cluster_id}; they are on clusters {shown}"
    return f"{what}, but none passes {check.label}"


def _price_stage(
    group: NodeGroup, label: str, exact: Sequence[Offer], options: PlacementOptions, budget: int | None,
    committed: float,
) -> tuple[str, str] | None:
    """(stage, reason) when offers of the right size have no usable price, or none within the budget."""
    priced = [(offer, node_price(offer, group.allocation, options)) for offer in exact]
    usable = [(offer, price) for offer, price in priced if price is not None]
    if not usable:
        fit = f"{_plural(_distinct(exact), 'offer')} of {label} {_verb(_distinct(exact), 'fits', 'fit')}"
        if group.allocation is Allocation.ON_DEMAND:
            return "allocation", f"{fit}, but none has an on-demand price (they come from a bid search)"
        with_bid = [offer.min_bid for offer in exact if offer.min_bid is not None]
        if not with_bid:
            return "allocation", f"{fit}, but none takes bids (no min_bid)"
        return "max_bid", (
            f"{fit}, but the lowest min_bid is {money(min(with_bid))}, above max_bid {money(options.max_bid or 0.0)}"
        )
    if budget is not None:
        cheapest = min(price.per_hour for _, price in usable if price is not None)
        if round(cheapest * 1e6) > budget:
            spent = f" ({money(committed)} already committed)" if committed else ""
            return "max_hourly_cost", (
                f"the cheapest node of {label} costs {money(cheapest)}, more than what max_hourly_cost "
                f"{money(options.max_hourly_cost or 0.0)} leaves{spent}"
            )
    return None


def group_stage(
    group: NodeGroup, offer_filter: OfferFilter, offers: Sequence[Offer], options: PlacementOptions, budget: int | None,
    committed: float,
) -> tuple[str, str] | None:
    """(stage, reason) for the first per-offer stage that leaves this group nothing, else None."""
    survivors: Sequence[Offer] = offers
    passed: list[Check] = []
    for check in offer_filter.checks:
        kept = [offer for offer in survivors if check.test(offer)]
        if not kept:
            return check.option, _filter_reason(check, offer_filter, survivors, passed)
        survivors = kept
        passed.append(check)
    label = offer_filter.gpu.label
    exact = [offer for offer in survivors if offer.num_gpus == group.gpus_per_node]
    if not exact:
        sizes = sorted({offer.num_gpus for offer in survivors})
        return "gpus_per_node", (
            f"{_plural(_distinct(survivors), 'offer')} of {label} {_verb(_distinct(survivors), 'passes', 'pass')} "
            "every filter, "
            f"but none is for exactly "
            f"{group.gpus_per_node} GPUs (sizes on offer: {', '.join(map(str, sizes))}; a machine offers 1, 2, 4, 8... "
            "GPUs and all its free GPUs)"
        )
    return _price_stage(group, label, exact, options, budget, committed)


def capacity_reason(request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer],
                    committed: float) -> tuple[str, str, str | None]:
    """(stage, reason, group) once every group has usable offers: room on one cluster, or the total budget."""
    budget = budget_micro(options, committed)
    market = collect(request, options, offers, budget_micro=budget)
    scope = market.scope
    all_buckets = buckets(market)
    many = len(request.groups) > 1
    for index, group in enumerate(request.groups):
        rooms = [
            (capacity(bucket.candidates[index], group.gpus_per_node, market.free_gpus), bucket)
            for bucket in all_buckets
        ]
        best_room, best_bucket = max(rooms, key=lambda item: (item[0], -(item[1].cluster_id or 0)))
        if best_room >= group.count:
            continue
        matching = sum(len(bucket.candidates[index]) for bucket in all_buckets)
        offer_filter = market.filters[index]
        what = _matching(matching, "offer", offer_filter.gpu.label, offer_filter.checks, options)
        if scope is Scope.FREE:
            reason = f"{what}, but together they have room for only {best_room} of {group.count} nodes"
        else:
            where = "the physical cluster" if scope is Scope.PINNED else "no physical cluster"
            country = majority_country(c.offer for c in best_bucket.candidates[index])
            place = f"cluster {best_bucket.cluster_id}" + (f", {country}" if country else "")
            if scope is Scope.PINNED:
                reason = f"{what}, but {where} has room for only {best_room} of {group.count} nodes ({place})"
            else:
                reason = (f"{what}, but {where} has room for {group.count} nodes; the largest has room for "
                          f"{best_room} ({place})")
        return "capacity", reason, group.name if many else None
    unbounded = solve(market, keep=1)
    if unbounded and budget is not None:
        spent = f"; {money(committed)} is already committed" if committed else ""
        return "max_hourly_cost", (
            f"the cheapest plan costs {money(unbounded[0].per_hour)}, over max_hourly_cost "
            f"{money(options.max_hourly_cost or 0.0)}{spent}"
        ), None
    where = "any one physical cluster" if scope is not Scope.FREE else "the machines on offer"
    return "capacity", f"each group fits alone, but {where} cannot hold all {request.total_nodes} nodes at once", None
