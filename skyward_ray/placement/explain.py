"""Why nothing fits, and what would help: the seed's "No offers available" / "No physical cluster found" advice made
specific to the offers at hand.

:func:`explain` re-applies a request's filters one at a time, in the order of
:attr:`~skyward_ray.placement.filters.OfferFilter.checks`, to the offers it is given, and names the first one that
leaves none; past the filters it checks offer sizes, prices, each cluster's room and the budget. It then tries each
relaxation the user controls (one at a time: a lower ``min_reliability``, no ``geolocation``, fewer nodes, ...) and
lists those that would yield a plan, with the value that would do.

It only knows the offers it is given. A strict search returns no offer that fails a filter, so callers that want the
"how far would it have to move" part pass a broader search result too (``build_queries(..., broad=True)``).
"""

from __future__ import annotations

import enum
import math
import shlex
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from skyward_ray.errors import SkywardError
from skyward_ray.placement.filters import Check, OfferFilter
from skyward_ray.placement.gpus import closest_gpu_names, gpu_key, known_gpu_names
from skyward_ray.placement.image import image_cuda_version
from skyward_ray.placement.options import Allocation, PlacementOptions
from skyward_ray.placement.pricing import node_price
from skyward_ray.placement.request import NodeGroup, PlacementRequest, Scope
from skyward_ray.placement.solver import (
    Solution,
    buckets,
    budget_micro,
    capacity,
    collect,
    majority_country,
    solve,
)
from skyward_ray.vast.models import Offer

MAX_ALTERNATIVE_GPUS = 5
MAX_ALTERNATIVE_SIZES = 6


class Style(enum.StrEnum):
    """How a suggestion names a setting: the cluster YAML's key, or ``skyward-ray offers``' flag."""

    YAML = "yaml"
    CLI = "cli"


# Placement names -> the YAML key (a provider key, or a node type's) and the flag of ``skyward-ray offers``.
_YAML_KEYS: dict[str, str] = {"gpus_per_node": "gpus", "nodes": "max_workers"}
_CLI_FLAGS: dict[str, str] = {
    "accelerator": "--gpu", "gpus_per_node": "--count-per-node", "nodes": "--nodes", "allocation": "--allocation",
    "min_reliability": "--min-reliability", "geolocation": "--geolocation", "min_cuda": "--min-cuda",
    "min_inet_down": "--min-inet-down", "disk_gb": "--disk-gb", "max_bid": "--max-bid",
    "max_hourly_cost": "--max-hourly-cost", "docker_image": "--docker-image", "verified_only": "--verified-only",
    "datacenter_only": "--datacenter-only",
}


@dataclass(frozen=True)
class Suggestion:
    """One change that would help: ``option`` set to ``value`` (as YAML writes it), or advice in ``template``,
    where ``{key}`` stands for the setting's name in the style at hand. ``note`` follows the setting."""

    option: str
    value: str | None = None
    note: str = ""
    template: str = ""
    cli_template: str | None = None  # advice worded differently for the CLI (e.g. not naming the command itself)
    other: str | None = None  # a second value of the same setting, written into ``note`` where it says ``{other}``

    def render(self, style: Style = Style.YAML) -> str:
        key = _CLI_FLAGS.get(self.option, self.option) if style is Style.CLI else _YAML_KEYS.get(self.option,
                                                                                                  self.option)
        if self.value is None:
            template = self.cli_template if style is Style.CLI and self.cli_template is not None else self.template
            text = template.format(key=key)
        elif style is Style.CLI and self.value in ("true", "false") and key.startswith("--"):
            text = key if self.value == "true" else "--no-" + key[2:]
        elif style is Style.CLI:
            text = f"{key} {shlex.quote(self.value)}"
        else:
            text = f"{key}: {self.value}"
        if not self.note:
            return text
        value_of = (lambda v: f"{key} {shlex.quote(v)}") if style is Style.CLI else (lambda v: f"{key}: {v}")
        return f"{text} {self.note.replace('{other}', value_of(self.other))}" if self.other is not None else \
            f"{text} {self.note}"


@dataclass(frozen=True)
class Explanation:
    """Which stage emptied the result (an option name, ``capacity`` or ``max_hourly_cost``), why, and what helps."""

    request: str
    stage: str
    reason: str
    group: str | None = None
    suggestions: tuple[str, ...] = ()  # as the cluster YAML names things (``advice`` rendered in Style.YAML)
    advice: tuple[Suggestion, ...] = ()

    def suggestions_for(self, style: Style = Style.YAML) -> tuple[str, ...]:
        if not self.advice:
            return self.suggestions
        return tuple(dict.fromkeys(item.render(style) for item in self.advice))

    def render(self, style: Style = Style.YAML) -> str:
        who = f"{self.group}: " if self.group else ""
        text = f"No placement for {self.request}: {who}{self.reason}."
        suggestions = self.suggestions_for(style)
        if suggestions:
            text += " Would help: " + "; ".join(suggestions) + "."
        return text

    @property
    def message(self) -> str:
        return self.render(Style.YAML)

    def __str__(self) -> str:
        return self.message


class NoPlacementError(SkywardError):
    """No offers fit a request; the message says which filter emptied the result and what would help."""

    def __init__(self, explanation: Explanation, style: Style = Style.YAML) -> None:
        super().__init__(explanation.render(style))
        self.explanation = explanation
        self.style = style

    def __reduce__(self) -> tuple[type[NoPlacementError], tuple[Explanation, Style]]:
        return type(self), (self.explanation, self.style)  # Ray ships exceptions between processes by pickle


def _money(value: float) -> str:
    return f"${value:.4g}/h"


def _floor(value: float, digits: int) -> float:
    scale = 10**digits
    return math.floor(value * scale + 1e-9) / scale


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


# -- first stage: the filters, one at a time ------------------------------------------------------------------------


def _filter_reason(check: Check, offer_filter: OfferFilter, before: Sequence[Offer], passed: list[Check]) -> str:
    """Why ``check`` left none of ``before``, with the best value that was on offer."""
    options = offer_filter.options
    label = offer_filter.gpu.label
    what = _matching(_distinct(before), "offer", label, passed, options)
    option = check.option
    if option == "accelerator":
        text = f"the search result has no offers of {' or '.join(offer_filter.gpu.vast_names)}"
        if offer_filter.gpu.model is None:
            text += f" ({offer_filter.gpu.requested!r} is not in the GPU table; known: {', '.join(known_gpu_names())})"
        return text
    if option == "gpus_per_node":
        largest = max(offer.num_gpus for offer in before)
        return f"{what}, but none has {offer_filter.gpus} or more free GPUs (the largest has {largest})"
    if option == "rentable":
        return f"{what}, but all are rented or not rentable"
    if option == "excluded_machines":
        return f"{what}, but all are on excluded machines"
    if option == "min_reliability":
        best = max(offer.effective_reliability for offer in before)
        return f"{what}, but none has reliability >= {options.min_reliability:g} (the best is {best:.4g})"
    if option == "geolocation":
        return f"{what}, but none is in {options.geolocation}; they are in {_countries(before)}"
    if option == "verified_only":
        return f"{what}, but none is on a verified host"
    if option == "datacenter_only":
        return f"{what}, but none is in a datacenter"
    if option in {"min_cuda", "docker_image", "accelerator_cuda"}:
        values = [offer.cuda_max_good for offer in before if offer.cuda_max_good is not None]
        best = f" (the highest is {max(values):g})" if values else ""
        source = {"min_cuda": "min_cuda", "docker_image": "the CUDA of docker_image"}.get(
            option, f"the oldest CUDA for {label}"
        )
        return f"{what}, but none has {check.label} (set by {source}){best}"
    if option == "min_inet_down":
        values = [offer.inet_down for offer in before if offer.inet_down is not None]
        best = f" (the fastest has {max(values):g} Mb/s)" if values else ""
        return f"{what}, but none has {check.label}{best}"
    if option == "disk_gb":
        values = [offer.disk_space for offer in before if offer.disk_space is not None]
        best = f" (the largest has {max(values):g} GB free)" if values else ""
        return f"{what}, but none has {check.label}{best}"
    if option == "direct_port":
        return f"{what}, but none has a direct port"
    if option == "cluster_id":
        elsewhere = Counter(offer.cluster_id for offer in {o.id: o for o in before}.values())
        shown = ", ".join(f"{cid if cid is not None else 'none'} ({n})" for cid, n in elsewhere.most_common(5))
        return f"{what}, but none is on physical cluster {offer_filter.cluster_id}; they are on clusters {shown}"
    if option == "physical_cluster":
        return f"{what}, but none is on a physical cluster (cluster_id is null), as an overlay of several nodes needs"
    return f"{what}, but none passes {check.label}"


def _group_stage(
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
            f"{fit}, but the lowest min_bid is {_money(min(with_bid))}, above max_bid {_money(options.max_bid or 0.0)}"
        )
    if budget is not None:
        cheapest = min(price.per_hour for _, price in usable if price is not None)
        if round(cheapest * 1e6) > budget:
            spent = f" ({_money(committed)} already committed)" if committed else ""
            return "max_hourly_cost", (
                f"the cheapest node of {label} costs {_money(cheapest)}, more than what max_hourly_cost "
                f"{_money(options.max_hourly_cost or 0.0)} leaves{spent}"
            )
    return None


# -- what would help --------------------------------------------------------------------------------------------------


def _solve_one(
    request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer], committed: float
) -> Solution | None:
    budget = budget_micro(options, committed)
    solutions = solve(collect(request, options, offers, budget_micro=budget), keep=1, budget_micro=budget)
    return solutions[0] if solutions else None


def _lowest(solution: Solution, field: Callable[[Offer], float | None]) -> float:
    return min((value for value in map(field, solution.offers) if value is not None), default=0.0)


def _number(value: float) -> str:
    """A threshold as the user would type it, exactly (the shortest text that reads back as the same float), so a
    suggested minimum still admits the offer it was taken from."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


@dataclass(frozen=True)
class _Threshold:
    """A numeric filter the user can move: the option, the offer field it compares, which way is looser, how a value
    is typed (``disk_gb`` is whole GB), and its loosest setting."""

    option: str
    field: Callable[[Offer], float | None]
    lower_is_looser: bool
    cast: Callable[[float], float]
    loosest: float | None


_THRESHOLDS: tuple[_Threshold, ...] = (
    _Threshold("min_reliability", lambda o: o.effective_reliability, True, float, 0.0),
    _Threshold("min_cuda", lambda o: o.cuda_max_good, True, float, None),
    _Threshold("min_inet_down", lambda o: o.inet_down, True, float, None),
    _Threshold("disk_gb", lambda o: o.disk_space, True, lambda v: float(max(1, math.floor(v + 1e-9))), 1.0),
    _Threshold("max_bid", lambda o: o.min_bid, False, float, None),
)


def _typed(option: str, value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if option == "disk_gb" else float(value)


def least_threshold(
    threshold: _Threshold, request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer],
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
        relaxed = options.model_copy(update={threshold.option: _typed(threshold.option, value)})
        return _solve_one(request, relaxed, offers, committed)

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
    return f"(the least change, {_money(nearest_plan.per_hour)}; {{other}} gives the cheapest plan, " \
        f"{_money(loose_plan.per_hour)})"


def _threshold_suggestion(threshold: _Threshold, request: PlacementRequest, options: PlacementOptions,
                          offers: Sequence[Offer], committed: float) -> Suggestion | None:
    found = least_threshold(threshold, request, options, offers, committed)
    if found is None:
        return None
    nearest, plan_there = found
    loose_plan = _solve_one(request, options.model_copy(update={threshold.option: _typed(threshold.option,
                                                                                          threshold.loosest)}),
                            offers, committed)
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
        if _solve_one(request, stand_in, offers, committed) is not None:
            found, high = values[middle], middle - 1
        else:
            low = middle + 1
    return found


def _relaxations(
    request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer], committed: float
) -> list[tuple[str, Suggestion]]:
    """(stage, suggestion) for every single change the user controls that would yield a plan: for a numeric filter,
    the nearest value that works (and, when it differs, the value of the cheapest plan)."""
    relax = options.model_copy
    found: list[tuple[str, Suggestion]] = []
    for threshold in _THRESHOLDS:
        current = getattr(options, threshold.option)
        if current is None or (threshold.loosest is not None and current <= threshold.loosest):
            continue
        suggestion = _threshold_suggestion(threshold, request, options, offers, committed)
        if suggestion is not None:
            found.append((threshold.option, suggestion))
    tries: list[tuple[str, PlacementOptions, PlacementRequest, Callable[[Solution], Suggestion]]] = []
    if options.geolocation is not None:
        tries.append(("geolocation", relax(update={"geolocation": None}), request, lambda s: Suggestion(
            "geolocation", ",".join(sorted({o.country_code or "?" for o in s.offers})))))
    if options.verified_only:
        tries.append(("verified_only", relax(update={"verified_only": False}), request, lambda s: Suggestion(
            "verified_only", "false", "(unverified hosts fail to start more often)")))
    if options.datacenter_only:
        tries.append(("datacenter_only", relax(update={"datacenter_only": False}), request, lambda s: Suggestion(
            "datacenter_only", "false")))
    image_cuda = image_cuda_version(options.docker_image)
    if image_cuda is not None:
        newest = _newest_image_cuda(image_cuda, request, options, offers, committed)
        if newest is not None:
            found.append(("docker_image", Suggestion("docker_image", template=f"a {{key}} built for CUDA {newest:g} "
                                                     "or older")))
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
    for stage, new_options, new_request, advice in tries:
        solution = _solve_one(new_request, new_options, offers, committed)
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
        if _solve_one(resized, options, offers, committed) is not None:
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
        return _solve_one(smaller, options, offers, committed) is not None

    low, high = 0, group.count - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low or None


def _alternative_gpus(request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer],
                      committed: float) -> list[Suggestion]:
    """Other GPUs in the offers that would fit the same request (when the caller passed a GPU-agnostic search)."""
    asked = {offer_filter.gpu.label for offer_filter in OfferFilter.for_request(request, options)}
    names = Counter(offer.gpu_name for offer in offers if offer.gpu_name not in asked)
    found = []
    for name, _ in names.most_common(MAX_ALTERNATIVE_GPUS):
        groups = tuple(group.model_copy(update={"accelerator": name, "include_variants": False})
                       for group in request.groups)
        solution = _solve_one(request.model_copy(update={"groups": groups}), options, offers, committed)
        if solution is not None:
            found.append(Suggestion("accelerator", name, f"({_money(solution.per_hour)})"))
    return found


def _closest_names(request: PlacementRequest) -> list[Suggestion]:
    """For a GPU name the table does not know: the table's names it most likely meant ("4090" -> "RTX 4090")."""
    found = []
    for group in request.groups:
        if group.gpu.model is None:
            found += [Suggestion("accelerator", name, "(the closest name in the GPU table)")
                      for name in closest_gpu_names(group.gpu.requested)]
    return found


# -- the whole explanation -----------------------------------------------------------------------------------------


def _capacity_reason(request: PlacementRequest, options: PlacementOptions, offers: Sequence[Offer],
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
        spent = f"; {_money(committed)} is already committed" if committed else ""
        return "max_hourly_cost", (
            f"the cheapest plan costs {_money(unbounded[0].per_hour)}, over max_hourly_cost "
            f"{_money(options.max_hourly_cost or 0.0)}{spent}"
        ), None
    where = "any one physical cluster" if scope is not Scope.FREE else "the machines on offer"
    return "capacity", f"each group fits alone, but {where} cannot hold all {request.total_nodes} nodes at once", None


def explain(
    request: PlacementRequest,
    options: PlacementOptions,
    offers: Iterable[Offer],
    *,
    already_committed_per_hour: float = 0.0,
) -> Explanation:
    """Why ``plan(request, options, offers)`` finds nothing, and which single change would help.

    Pass a broader search result than the one that failed (``build_queries(..., broad=True)``, or the union of both)
    to learn how far each filter would have to move. On offers that do fit it still returns an explanation, whose
    stage is ``"none"``.
    """
    offers = offers if isinstance(offers, Sequence) else list(offers)
    committed = already_committed_per_hour
    budget = budget_micro(options, committed)
    description = request.describe()
    many = len(request.groups) > 1
    filters = OfferFilter.for_request(request, options)
    stage_reason: tuple[str, str, str | None] | None = None
    for group, offer_filter in zip(request.groups, filters, strict=True):
        found = _group_stage(group, offer_filter, offers, options, budget, committed)
        if found is not None:
            stage_reason = (found[0], found[1], group.name if many else None)
            break
    if stage_reason is None:
        if _solve_one(request, options, offers, committed) is not None:
            return Explanation(description, "none", "a plan exists for these offers")
        stage_reason = _capacity_reason(request, options, offers, committed)
    stage, reason, group_name = stage_reason
    helps = _relaxations(request, options, offers, committed)
    helps.sort(key=lambda item: item[0] != stage)  # the option that emptied the result first
    advice = [suggestion for _, suggestion in helps]
    if stage == "accelerator":
        advice = _closest_names(request) + advice
    if stage in {"accelerator", "capacity", "gpus_per_node"}:
        advice += _alternative_gpus(request, options, offers, committed)
    if not advice:
        advice = [_generic_advice(stage, request.scope(options))]
    unique = tuple(dict.fromkeys(advice))
    return Explanation(description, stage, reason, group_name, tuple(item.render(Style.YAML) for item in unique),
                       unique)


def _generic_advice(stage: str, scope: Scope) -> Suggestion:
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
