"""Property: on random small markets the plan costs exactly the brute-force optimum (ties: the same reliability), and
every chosen offer passes every filter, is priced by its allocation and fits its machine's free GPUs."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.placement_offers import machine
from support.placement_oracle import brute_force, oracle_passes, oracle_price

from skyward_ray.placement import (
    NodeGroup,
    NoPlacementError,
    PlacementOptions,
    PlacementRequest,
    Scope,
    plan,
)
from skyward_ray.vast.models import Offer


def _mostly(good: Any, *others: Any) -> st.SearchStrategy[Any]:
    """``good`` three times out of four: most machines pass most filters, so most markets have a placement."""
    return st.sampled_from([good, good, good, *others] if len(others) == 1 else [good] * 3 * len(others) + [*others])


@st.composite
def markets(draw: st.DrawFn) -> tuple[PlacementRequest, PlacementOptions, list[Offer], float]:
    offers: list[Offer] = []
    for machine_id in range(1, draw(st.integers(2, 7)) + 1):
        fields: dict[str, Any] = {
            "gpu_name": draw(_mostly("RTX 4090", "RTX 3090", "RTX 4090D")),
            "reliability2": draw(_mostly(0.99, 0.96, 0.9)),
            "geolocation": draw(_mostly("Texas, US", "Hesse, DE", "Quebec, CA")),
            "verification": draw(_mostly("verified", "unverified")),
            "hosting_type": draw(_mostly(1, 0)),
            "cuda_max_good": draw(_mostly(12.8, 12.4, 11.5)),
            "disk_space": draw(_mostly(500.0, 200.0, 80.0)),
            "inet_down": draw(_mostly(1000.0, 100.0)),
            "direct_port_count": draw(_mostly(10, 0)),
            "rented": draw(_mostly(False, True)),
        }
        rows = machine(
            machine_id,
            draw(st.integers(1, 8)),
            cluster_id=draw(st.sampled_from([None, 1, 1, 1, 2, 2, 3])),
            per_gpu=draw(st.sampled_from([0.1, 0.2, 0.25, 0.3])),
            bid_per_gpu=draw(st.sampled_from([None, 0.05, 0.1, 0.15])),
            **fields,
        )
        if draw(st.integers(0, 3)) == 0:  # the same offers as a bid search returns them: no on-demand price there
            rows += [row.model_copy(update={"is_bid": True, "dph_total": (row.min_bid or 0.0) + 0.01}) for row in rows]
        offers += rows
    allocations = st.sampled_from(["on-demand", "spot", "spot-if-available"])
    groups = [NodeGroup(name="a", accelerator="RTX 4090", gpus_per_node=draw(st.sampled_from([1, 1, 2, 3])),
                        count=draw(st.integers(1, 3)), allocation=draw(allocations),
                        include_variants=draw(_mostly(False, True)))]
    if draw(st.booleans()):
        groups.append(NodeGroup(name="b", accelerator="RTX 4090", gpus_per_node=draw(st.sampled_from([1, 1, 2, 4])),
                                count=draw(st.integers(1, 2)), allocation=draw(allocations)))
    request = PlacementRequest(
        groups=tuple(groups),
        cluster_id=draw(_mostly(None, 1)),
        excluded_machines=frozenset(draw(st.sets(st.integers(1, 7), max_size=1))),
    )
    options = PlacementOptions(
        min_reliability=draw(st.sampled_from([0.0, 0.95])),
        geolocation=draw(_mostly(None, "US", "NA")),
        verified_only=draw(st.booleans()),
        datacenter_only=draw(_mostly(False, True)),
        min_cuda=draw(_mostly(12.0, None, 12.4)),
        min_inet_down=draw(_mostly(None, 500.0)),
        disk_gb=draw(_mostly(100, 50, 150)),
        bid_multiplier=draw(st.sampled_from([1.0, 1.2, 1.5])),
        max_bid=draw(_mostly(None, 0.12, 0.3)),
        max_hourly_cost=draw(_mostly(None, 0.5, 1.0, 2.0)),
        use_overlay=draw(_mostly(True, False)),
        excluded_machines=draw(st.sets(st.integers(1, 7), max_size=1)),
    )
    committed = draw(_mostly(0.0, 0.2))
    return request, options, offers, committed


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markets())
def test_plan_equals_brute_force_and_every_choice_passes_every_filter(
    market: tuple[PlacementRequest, PlacementOptions, list[Offer], float],
) -> None:
    request, options, offers, committed = market
    optimum = brute_force(request, options, offers, committed)
    try:
        result = plan(request, options, offers, already_committed_per_hour=committed)
    except NoPlacementError:
        assert optimum is None, f"brute force found {optimum}"
        event("no placement")
        return
    event(f"placed {request.scope(options).value}")
    assert optimum is not None, f"planner found {result.summary()} where brute force found nothing"
    assert abs(result.total_per_hour - optimum.total) < 1e-6
    assert sum(round(node.price_per_hour * 1e6) for node in result.nodes) == optimum.price_micro
    assert sum(round(node.offer.effective_reliability * 1e6) for node in result.nodes) == optimum.reliability_micro

    scope = {Scope.FREE: "free", Scope.ONE_CLUSTER: "one", Scope.PINNED: "pinned"}[request.scope(options)]
    groups = {group.name: group for group in request.groups}
    free: dict[int, int] = {}
    for o in offers:
        free[o.machine_id] = max(free.get(o.machine_id, 0), o.num_gpus)
    gpus_on: Counter[int] = Counter()
    nodes_on: Counter[int] = Counter()
    odd_sized: set[int] = set()
    assert Counter(node.group for node in result.nodes) == Counter({g.name: g.count for g in request.groups})
    for node in result.nodes:
        group = groups[node.group]
        assert oracle_passes(node.offer, options, group.accelerator, group.gpus_per_node, cluster=scope,
                             pinned=request.cluster_id, excluded=request.excluded_machines,
                             include_variants=group.include_variants)
        assert oracle_price(node.offer, group.allocation, options) == (node.price_per_hour, node.is_bid)
        gpus_on[node.machine_id] += group.gpus_per_node
        nodes_on[node.machine_id] += 1
        if group.gpus_per_node & (group.gpus_per_node - 1):
            odd_sized.add(node.machine_id)
    assert all(gpus_on[m] <= free[m] for m in gpus_on)
    assert all(nodes_on[m] == 1 for m in odd_sized)
    if scope != "free":
        assert {node.cluster_id for node in result.nodes} == {result.cluster_id}
        assert result.cluster_id is not None
    if options.max_hourly_cost is not None:
        assert result.total_per_hour + committed <= options.max_hourly_cost + 1e-6
    for runner_up in result.runners_up:
        assert runner_up.cluster_id != result.cluster_id
        assert runner_up.total_per_hour >= result.total_per_hour - 1e-9
