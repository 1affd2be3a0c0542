"""Why nothing fits, and what would help, made specific to the offers at hand.

It only knows the offers it is given: a strict search returns no offer that fails a filter, so callers that want to
know how far a filter would have to move pass a broader search result too (``build_queries(..., broad=True)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from skyward_ray.placement.advice import alternative_gpus, closest_names, generic_advice, relaxations
from skyward_ray.placement.diagnosis import capacity_reason, group_stage
from skyward_ray.placement.explanation import Explanation, Style
from skyward_ray.placement.filters import OfferFilter
from skyward_ray.placement.options import PlacementOptions
from skyward_ray.placement.request import PlacementRequest
from skyward_ray.placement.solver import best_solution, budget_micro
from skyward_ray.vast.models import Offer


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
        found = group_stage(group, offer_filter, offers, options, budget, committed)
        if found is not None:
            stage_reason = (found[0], found[1], group.name if many else None)
            break
    if stage_reason is None:
        if best_solution(request, options, offers, committed) is not None:
            return Explanation(description, "none", "a plan exists for these offers")
        stage_reason = capacity_reason(request, options, offers, committed)
    stage, reason, group_name = stage_reason
    helps = relaxations(request, options, offers, committed)
    helps.sort(key=lambda item: item[0] != stage)  # the option that emptied the result first
    advice = [suggestion for _, suggestion in helps]
    if stage == "accelerator":
        advice = closest_names(request) + advice
    if stage in {"accelerator", "capacity", "gpus_per_node"}:
        advice += alternative_gpus(request, options, offers, committed)
    if not advice:
        advice = [generic_advice(stage, request.scope(options))]
    unique = tuple(dict.fromkeys(advice))
    return Explanation(description, stage, reason, group_name, tuple(item.render(Style.YAML) for item in unique),
                       unique)
