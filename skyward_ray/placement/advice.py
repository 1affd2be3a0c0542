"""What would help when nothing fits: each single change the user controls that would yield a plan on the offers at
hand (a looser filter at the nearest value that works, fewer nodes, another size or GPU), else general advice.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from skyward_ray.placement.explanation import Suggestion, money
from skyward_ray.placement.filters import OfferFilter
from skyward_ray.placement.gpus import closest_gpu_names, gpu_key
from skyward_ray.placement.image import image_cuda_version
from skyward_ray.placement.options import Allocation, PlacementOptions
from skyward_ray.placement.request import PlacementRequest, Scope
from skyward_ray.placement.solver import Solution, best_solution
from skyward_ray.vast.models import Offer

MAX_ALTERNATIVE_GPUS = 5
MAX_ALTERNATIVE_SIZES = 6

# A change to try: (stage, the options and request with the change, the suggestion made from the plan it yields).
_Switch = tuple[str, PlacementOptions, PlacementRequest, Callable[[Solution], Suggestion]]


def _floor(value: float, digits: int) -> float:
    scale = 10**digits
    return math.floor(value * scale + 1e-9) / scale


def _number(value: float) -> str:
    """A threshold as the user would type it, exactly (the shortest text that reads back as the same float), so a
    suggested minimum still admits the offer it was taken from."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


@dataclass(frozen=True)
class Threshold:
    """A numeric filter the user can move: the option, the offer field it compares, which way is looser, how a value
    is typed (``disk_gb`` is whole GB), and its loosest setting."""

    option: str
    field: Callable[[Offer], float | None]
    lower_is_looser: bool
    cast: Callable[[float], float]
    loosest: float | None

    def typed(self, value: float | None) -> float | int | None:
        """``value`` as the option's field takes it."""
        if value is None:
            return None
        return int(value) if self.option == "disk_gb" else float(value)


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("min_reliability", lambda o: o.effective_reliability, True, float, 0.0),
    Threshold("min_cuda", lambda o: o.cuda_max_good, True, float, None),
    Threshold("min_inet_down", lambda o: o.inet_down, True, float, None),
    Threshold("disk_gb", lambda o: o.disk_space, True, lambda v: float(max(1, math.floor(v + 1e-9))), 1.0),
    Threshold("max_bid", lambda o: o.min_bid, False, float, None),
)


def least_threshold(
    threshold: Threshold, request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer],
    committed: float,
) -> tuple[float, Solution] | None:
    """The nearest value of a numeric filter (from where it is now) that yields a plan, and that plan; None when no
    value does. Only values some offer has can change the result, so those are the candidates, nearest first.

    Loosening a minimum only adds offers, so a plan found at one value exists at every looser one: a bisection over
    the candidates finds the nearest. A higher ``max_bid`` also raises the bids it caps, which can push a plan over
    ``max_hourly_cost``, so that one is scanned in order."""
    current = getattr(options, threshold.option)
    values = {threshold.cast(v) for v in map(threshold.field, offers) if v is not None}
    if threshold.lower_is_looser:
        candidates = sorted((v for v in values if current is None or v < current), reverse=True)
    else:
        candidates = sorted(v for v in values if current is None or v > current)

    def attempt(value: float) -> Solution | None:
        relaxed = options.model_copy(update={threshold.option: threshold.typed(value)})
        return best_solution(request, relaxed, offers, committed)

    if threshold.lower_is_looser:
        low, high, found = 0, len(candidates) - 1, None
        while low <= high:  # the first index (nearest value) whose plan exists
            middle = (low + high) // 2
            solution = attempt(candidates[middle])
            if solution is not None:
                found, high = (candidates[middle], solution), middle - 1
            else:
                low = middle + 1
        return found
    for value in candidates:
        solution = attempt(value)
        if solution is not None:
            return value, solution
    return None


def _cheapest_note(nearest: float, nearest_plan: Solution, loose_value: float | None,
                   loose_plan: Solution | None) -> str:
    """When the cheapest plan needs a bigger change than the least one, say which value is which."""
    if loose_plan is None or loose_value is None or loose_value == nearest:
        return ""
    if loose_plan.per_hour >= nearest_plan.per_hour - 1e-9:
        return ""
    return f"(the least change, {money(nearest_plan.per_hour)}; {{other}} gives the cheapest plan, " \
        f"{money(loose_plan.per_hour)})"


def _threshold_suggestion(threshold: Threshold, request: PlacementRequest, options: PlacementOptions,
                          offers: Sequence[Offer], committed: float) -> Suggestion | None:
    found = least_threshold(threshold, request, options, offers, committed)
    if found is None:
        return None
    nearest, plan_there = found
    loosest = options.model_copy(update={threshold.option: threshold.typed(threshold.loosest)})
    loose_plan = best_solution(request, loosest, offers, committed)
    loose_value: float | None = None
    if loose_plan is not None:
        values = [threshold.field(o) for o in loose_plan.offers]
        known = [threshold.cast(v) for v in values if v is not None]
        if known:
            loose_value = min(known) if threshold.lower_is_looser else max(known)
    note = _cheapest_note(nearest, plan_there, loose_value, loose_plan)
    other = _number(loose_value) if note and loose_value is not None else None
    return Suggestion(threshold.option, _number(nearest), note, other=other)


def _newest_image_cuda(image_cuda: float, request: PlacementRequest, options: PlacementOptions,
                       offers: Sequence[Offer], committed: float) -> float | None:
    """The newest CUDA below the image's whose image would place the request (the least change of image): hosts'
    ``cuda_max_good`` values are the candidates, tried through a stand-in image reference naming that CUDA."""
    values = sorted({_floor(o.cuda_max_good, 1) for o in offers if o.cuda_max_good is not None
                     and _floor(o.cuda_max_good, 1) < image_cuda}, reverse=True)
    low, high, found = 0, len(values) - 1, None
    while low <= high:  # an older image only admits more hosts: the first that places is the newest that does
        middle = (low + high) // 2
        stand_in = options.model_copy(update={"docker_image": f"nvidia/cuda:{values[middle]:.1f}.0-base"})
        if best_solution(request, stand_in, offers, committed) is not None:
            found, high = values[middle], middle - 1
        else:
            low = middle + 1
    return found


def _switches(request: PlacementRequest, options: PlacementOptions, committed: float) -> list[_Switch]:
    """The on/off and cap settings the user could drop, each with the suggestion its plan would make."""
    relax = options.model_copy
    tries: list[_Switch] = []
    if options.geolocation is not None:
        tries.append(("geolocation", relax(update={"geolocation": None}), request, lambda s: Suggestion(
            "geolocation", ",".join(sorted({o.country_code or "?" for o in s.offers})))))
    if options.verified_only:
        tries.append(("verified_only", relax(update={"verified_only": False}), request, lambda s: Suggestion(
            "verified_only", "false", "(unverified hosts fail to start more often)")))
    if options.datacenter_only:
        tries.append(("datacenter_only", relax(update={"datacenter_only": False}), request, lambda s: Suggestion(
            "datacenter_only", "false")))
    if options.max_hourly_cost is not None:
        tries.append(("max_hourly_cost", relax(update={"max_hourly_cost": None}), request, lambda s: Suggestion(
            "max_hourly_cost", _number(math.ceil((committed + s.per_hour) * 1e6 - 1e-6) / 1e6), "or more")))
    if any(group.allocation is Allocation.SPOT for group in request.groups):
        groups = tuple(
            group.model_copy(update={"allocation": Allocation.SPOT_IF_AVAILABLE})
            if group.allocation is Allocation.SPOT else group
            for group in request.groups
        )
        tries.append(("allocation", options, request.model_copy(update={"groups": groups}), lambda s: Suggestion(
            "allocation", Allocation.SPOT_IF_AVAILABLE.value)))
    return tries


def relaxations(
    request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer], committed: float
) -> list[tuple[str, Suggestion]]:
    """(stage, suggestion) for every single change the user controls that would yield a plan: for a numeric filter,
    the nearest value that works (and, when it differs, the value of the cheapest plan)."""
    found: list[tuple[str, Suggestion]] = []
    for threshold in THRESHOLDS:
        current = getattr(options, threshold.option)
        if current is None or (threshold.loosest is not None and current <= threshold.loosest):
            continue
        suggestion = _threshold_suggestion(threshold, request, options, offers, committed)
        if suggestion is not None:
            found.append((threshold.option, suggestion))
    image_cuda = image_cuda_version(options.docker_image)
    if image_cuda is not None:
        newest = _newest_image_cuda(image_cuda, request, options, offers, committed)
        if newest is not None:
            found.append(("docker_image", Suggestion("docker_image", template=f"a {{key}} built for CUDA {newest:g} "
                                                     "or older")))
    for stage, new_options, new_request, advice in _switches(request, options, committed):
        solution = best_solution(new_request, new_options, offers, committed)
        if solution is not None:
            found.append((stage, advice(solution)))
    if len(request.groups) == 1 and request.groups[0].count > 1:
        most = _most_nodes(request, options, offers, committed)
        if most:
            found.append(("nodes", Suggestion("nodes", str(most))))
    if len(request.groups) == 1:
        size = _other_size(request, options, offers, committed)
        if size:
            found.append(("gpus_per_node", Suggestion("gpus_per_node", str(size))))
    return found


def _other_size(
    request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer], committed: float
) -> int | None:
    """The GPU count per node nearest the one asked (the larger on a tie) that would fit, among the sizes on offer
    for this accelerator."""
    group = request.groups[0]
    keys = group.gpu.keys
    asked = group.gpus_per_node
    sizes = sorted({o.num_gpus for o in offers if gpu_key(o.gpu_name) in keys and o.num_gpus != asked},
                   key=lambda size: (abs(size - asked), -size))
    for size in sizes[:MAX_ALTERNATIVE_SIZES]:
        resized = request.model_copy(update={"groups": (group.model_copy(update={"gpus_per_node": size}),)})
        if best_solution(resized, options, offers, committed) is not None:
            return size
    return None


def _most_nodes(
    request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer], committed: float
) -> int | None:
    """The most nodes (fewer than asked) that would fit, keeping the scope; feasibility is monotone in the count."""
    group = request.groups[0]
    forced = True if request.scope(options) is not Scope.FREE and request.cluster_id is None else None

    def fits(count: int) -> bool:
        smaller = request.model_copy(
            update={"groups": (group.model_copy(update={"count": count}),), "physical_cluster": forced}
        )
        return best_solution(smaller, options, offers, committed) is not None

    low, high = 0, group.count - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low or None


def alternative_gpus(request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer],
                     committed: float) -> list[Suggestion]:
    """Other GPUs in the offers that would fit the same request (when the caller passed a GPU-agnostic search)."""
    asked = {offer_filter.gpu.label for offer_filter in OfferFilter.for_request(request, options)}
    names = Counter(offer.gpu_name for offer in offers if offer.gpu_name not in asked)
    found = []
    for name, _ in names.most_common(MAX_ALTERNATIVE_GPUS):
        groups = tuple(group.model_copy(update={"accelerator": name, "include_variants": False})
                       for group in request.groups)
        solution = best_solution(request.model_copy(update={"groups": groups}), options, offers, committed)
        if solution is not None:
            found.append(Suggestion("accelerator", name, f"({money(solution.per_hour)})"))
    return found


def closest_names(request: PlacementRequest) -> list[Suggestion]:
    """For a GPU name the table does not know: the table's names it most likely meant ("4090" -> "RTX 4090")."""
    found = []
    for group in request.groups:
        if group.gpu.model is None:
            found += [Suggestion("accelerator", name, "(the closest name in the GPU table)")
                      for name in closest_gpu_names(group.gpu.requested)]
    return found


def generic_advice(stage: str, scope: Scope) -> Suggestion:
    """When no single change helps with these offers (often: only the strict search result was passed)."""
    specific = {
        "rentable": "retry later: other renters hold these offers right now",
        "excluded_machines": "other hosts: every matching machine is excluded (by options or after failing before)",
        "direct_port": "other hosts: these have no direct port to reach them by",
        "cluster_id": "wait for capacity on this cluster, or place a new cluster",
    }
    if stage == "accelerator":
        return Suggestion("accelerator", template="another GPU (`skyward-ray offers --gpu NAME` shows what one would "
                          "cost), or retry later: the marketplace changes by the minute",
                          cli_template="another {key}, or retry later: the marketplace changes by the minute")
    if stage == "physical_cluster":
        return Suggestion("accelerator", template="another GPU offered on a physical cluster (several nodes need one "
                          "for their overlay), or a single node", cli_template="another {key} offered on a physical "
                          "cluster (several nodes need one for their overlay), or --nodes 1")
    if stage == "capacity" and scope is Scope.PINNED:
        return Suggestion("", template=specific["cluster_id"])
    if stage == "capacity" and scope is Scope.ONE_CLUSTER:
        return Suggestion("accelerator", template="fewer nodes, or another GPU with room for them all on one physical "
                          "cluster", cli_template="fewer --nodes, or another {key} with room for them all on one "
                          "physical cluster")
    if stage == "allocation":
        return Suggestion("allocation", template="search with type on-demand for on-demand prices, or another {key}")
    if stage in specific:
        return Suggestion("", template=specific[stage])
    return Suggestion("min_reliability", template="relaxing the filters (a lower {key}, no geolocation), another GPU, "
                      "or retrying later; search more broadly to see how far each filter would have to move")
