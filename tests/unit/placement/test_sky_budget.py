"""When ``max_hourly_cost`` cannot pay for the head plus every worker at ``max_workers`` on one physical cluster, the
error names both ways out: the cap that would do, and the ``max_workers`` the cap covers."""

from __future__ import annotations

import pytest
from support.placement_offers import machine

from skyward_ray.placement import NodeGroup, NoPlacementError, PlacementOptions, PlacementRequest, plan
from skyward_ray.placement.budget import with_fewer_workers, workers_within_cap
from skyward_ray.placement.explain import explain

# One physical cluster of 8 one-GPU machines: the head on demand at 0.40, workers on bids.
OFFERS = [o for m in range(1, 9) for o in machine(m, 1, cluster_id=5, per_gpu=0.40, bid_per_gpu=0.10)]


def request(workers: int) -> PlacementRequest:
    return PlacementRequest(groups=(
        NodeGroup(name="head", accelerator="RTX 4090", allocation="on-demand"),
        NodeGroup(name="gpu", accelerator="RTX 4090", count=workers, allocation="spot"),
    ), physical_cluster=True)


def per_hour(workers: int) -> float:
    return plan(request(workers), PlacementOptions(), OFFERS).total_per_hour


@pytest.mark.parametrize("workers", [1, 3, 5])
def test_the_largest_worker_count_under_the_cap_is_found(workers: int) -> None:
    cap = (per_hour(workers) + per_hour(workers + 1)) / 2  # room for `workers`, not one more
    assert workers_within_cap(request(6), PlacementOptions(max_hourly_cost=cap), OFFERS) == {"gpu": workers}


def test_nothing_to_say_when_the_cap_is_not_what_stops_it() -> None:
    assert workers_within_cap(request(3), PlacementOptions(max_hourly_cost=100.0), OFFERS) is None  # it fits
    assert workers_within_cap(request(3), PlacementOptions(max_hourly_cost=0.1), OFFERS) is None  # head alone over
    assert workers_within_cap(request(3), PlacementOptions(), OFFERS) is None  # no cap


def test_the_error_names_both_ways_out() -> None:
    cap = (per_hour(2) + per_hour(3)) / 2
    options = PlacementOptions(max_hourly_cost=cap)
    with pytest.raises(NoPlacementError):
        plan(request(5), options, OFFERS)
    explanation = with_fewer_workers(explain(request(5), options, OFFERS), request(5), options, OFFERS,
                                     lambda group: f"available_node_types.{group}.max_workers")
    message = explanation.message
    assert f"max_hourly_cost {cap:g} covers at most available_node_types.gpu.max_workers: 2" in message
    assert "lower max_workers to that, or raise the cap" in message
    assert "max_hourly_cost: " in message.split("Would help:")[1]  # the cap that covers the whole cluster
