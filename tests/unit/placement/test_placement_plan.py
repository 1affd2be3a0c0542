"""plan(): the cheapest placement, one physical cluster for an overlay, machines shared within their free GPUs, prices
per allocation, the budget, ties, runners-up and the pin."""

from __future__ import annotations

import random

import pytest
from support.placement_offers import machine, offer

from skyward_ray.placement import (
    NodeGroup,
    NoPlacementError,
    PlacementOptions,
    PlacementRequest,
    Scope,
    bid_price,
    machine_slots,
    node_price,
    plan,
)
from skyward_ray.placement.options import Allocation

OPTIONS = PlacementOptions()


def _nodes(request: PlacementRequest, offers: list, options: PlacementOptions = OPTIONS, **kwargs: object) -> list:
    result = plan(request, options, offers, **kwargs)  # type: ignore[arg-type]
    return [(node.offer_id, node.price_per_hour, node.is_bid) for node in result.nodes]


def test_single_node_takes_the_cheapest_fitting_offer_anywhere() -> None:
    offers = [offer(1, 1, dph_total=0.5), offer(2, 2, dph_total=0.3), offer(3, 3, dph_total=0.2, reliability2=0.5),
              offer(4, 4, dph_total=0.1, gpu_name="RTX 3090")]
    result = plan(PlacementRequest.single("RTX 4090", allocation="on-demand"), OPTIONS, offers)
    assert [node.offer_id for node in result.nodes] == [2]
    assert result.scope is Scope.FREE and result.cluster_id is None and result.runners_up == ()
    assert result.total_per_hour == 0.3


def test_multi_node_uses_one_physical_cluster_at_the_lowest_total() -> None:
    offers = (
        machine(1, 1, per_gpu=0.10)  # cheapest, but on no physical cluster
        + machine(2, 1, cluster_id=7, per_gpu=0.30) + machine(3, 1, cluster_id=7, per_gpu=0.30)
        + machine(4, 1, cluster_id=8, per_gpu=0.20) + machine(5, 1, cluster_id=8, per_gpu=0.35)
        + machine(6, 1, cluster_id=9, per_gpu=0.01)  # cheapest cluster machine, but its cluster has room for 1
    )
    result = plan(PlacementRequest.single("RTX 4090", nodes=2, allocation="on-demand"), OPTIONS, offers)
    assert result.scope is Scope.ONE_CLUSTER and result.cluster_id == 8
    assert sorted(node.machine_id for node in result.nodes) == [4, 5]
    assert result.total_per_hour == pytest.approx(0.55)
    assert [(option.cluster_id, option.total_per_hour) for option in result.runners_up] == [(7, 0.6)]
    assert result.country == "US"


def test_nodes_share_a_machine_only_as_far_as_its_free_gpus_allow() -> None:
    # machine 1 has 4 free GPUs (offers of 1, 2 and 4): four 1-GPU nodes rent its 1-GPU offer four times
    offers = machine(1, 4, cluster_id=3, per_gpu=0.10) + machine(2, 2, cluster_id=3, per_gpu=0.50)
    request = PlacementRequest.single("RTX 4090", nodes=5, allocation="on-demand")
    assert _nodes(request, offers) == [(101, 0.1, False)] * 4 + [(201, 0.5, False)]
    two_gpu = PlacementRequest.single("RTX 4090", nodes=3, gpus_per_node=2, allocation="on-demand")
    assert [node.offer_id for node in plan(two_gpu, OPTIONS, offers).nodes] == [102, 102, 202]
    with pytest.raises(NoPlacementError):
        plan(PlacementRequest.single("RTX 4090", nodes=7, allocation="on-demand"), OPTIONS, offers)


def test_free_gpus_come_from_the_largest_offer_of_the_machine() -> None:
    # only the 1-GPU offer and a 6-GPU offer are in the result: 6 free GPUs, so six 1-GPU nodes fit
    offers = [offer(101, 1, cluster_id=3, num_gpus=1, dph_total=0.1), offer(106, 1, cluster_id=3, num_gpus=6)]
    result = plan(PlacementRequest.single("RTX 4090", nodes=6, allocation="on-demand"), OPTIONS, offers)
    assert [node.offer_id for node in result.nodes] == [101] * 6


def test_a_node_of_a_non_power_of_two_size_takes_its_machine_alone() -> None:
    assert machine_slots(8, 2) == 4 and machine_slots(6, 4) == 1 and machine_slots(3, 3) == 1
    assert machine_slots(6, 3) == 1 and machine_slots(2, 3) == 0
    # a machine with 4 free GPUs that (unlike the rule) also shows a 3-GPU offer: 3 + 1 fit by count, but a
    # 3-GPU offer can be rented only while exactly 3 are free, so the 3-GPU node must be the machine's only node
    offers = [offer(101, 1, cluster_id=1, num_gpus=1, dph_total=0.1), offer(103, 1, cluster_id=1, num_gpus=3),
              offer(104, 1, cluster_id=1, num_gpus=4)]
    request = PlacementRequest(groups=(
        NodeGroup(name="big", accelerator="RTX 4090", gpus_per_node=3, allocation="on-demand"),
        NodeGroup(name="small", accelerator="RTX 4090", gpus_per_node=1, allocation="on-demand"),
    ))
    with pytest.raises(NoPlacementError):
        plan(request, OPTIONS, offers)
    offers += machine(2, 1, cluster_id=1, per_gpu=0.9)
    result = plan(request, OPTIONS, offers)
    assert {(node.group, node.machine_id) for node in result.nodes} == {("big", 1), ("small", 2)}


# -- prices per allocation -------------------------------------------------------------------------------------------


def test_on_demand_pays_dph_total() -> None:
    assert _nodes(PlacementRequest.single("RTX 4090", allocation="on-demand"),
                  [offer(1, 1, dph_total=0.4, min_bid=0.1)]) == [(1, 0.4, False)]


def test_spot_bids_min_bid_times_multiplier() -> None:
    options = PlacementOptions(bid_multiplier=1.5)
    assert _nodes(PlacementRequest.single("RTX 4090", allocation="spot"),
                  [offer(1, 1, dph_total=0.4, min_bid=0.1)], options) == [(1, pytest.approx(0.15), True)]


def test_spot_skips_offers_without_min_bid() -> None:
    offers = [offer(1, 1, dph_total=0.1, min_bid=None), offer(2, 2, dph_total=0.9, min_bid=0.3)]
    assert _nodes(PlacementRequest.single("RTX 4090", allocation="spot"), offers) == [(2, pytest.approx(0.36), True)]


def test_max_bid_caps_the_bid_and_rules_out_offers_above_it() -> None:
    options = PlacementOptions(max_bid=0.25)
    cheap, capped, too_high = offer(1, 1, min_bid=0.10), offer(2, 2, min_bid=0.22), offer(3, 3, min_bid=0.26)
    assert bid_price(cheap, options) == pytest.approx(0.12)
    assert bid_price(capped, options) == 0.25  # 0.22 * 1.2 = 0.264, capped
    assert bid_price(too_high, options) is None
    assert node_price(too_high, Allocation.SPOT, options) is None
    on_demand = node_price(too_high, Allocation.SPOT_IF_AVAILABLE, options)
    assert on_demand is not None and not on_demand.is_bid and on_demand.per_hour == too_high.dph_total


def test_spot_if_available_bids_where_it_can_and_pays_on_demand_elsewhere() -> None:
    options = PlacementOptions(use_overlay=False)
    offers = [offer(1, 1, dph_total=0.30, min_bid=None), offer(2, 2, dph_total=0.50, min_bid=0.30)]
    request = PlacementRequest.single("RTX 4090", nodes=2, allocation="spot-if-available")
    assert sorted(_nodes(request, offers, options)) == [(1, 0.3, False), (2, pytest.approx(0.36), True)]


def test_rows_from_a_bid_search_carry_no_on_demand_price() -> None:
    bid_row = offer(1, 1, dph_total=0.12, min_bid=0.10, is_bid=True)  # Vast puts min_bid + storage in dph_total
    on_demand_row = offer(2, 2, dph_total=0.40, min_bid=0.10, is_bid=False)
    assert node_price(bid_row, Allocation.ON_DEMAND, OPTIONS) is None
    assert _nodes(PlacementRequest.single("RTX 4090", allocation="on-demand"), [bid_row, on_demand_row]) == [
        (2, 0.4, False)
    ]


def test_head_on_demand_and_workers_on_spot_share_one_cluster() -> None:
    offers = machine(1, 4, cluster_id=5, per_gpu=0.4, bid_per_gpu=0.1) + machine(2, 2, cluster_id=6, per_gpu=0.2,
                                                                                 bid_per_gpu=0.05)
    request = PlacementRequest(groups=(
        NodeGroup(name="head", accelerator="RTX 4090", allocation="on-demand"),
        NodeGroup(name="worker", accelerator="RTX 4090", count=3, allocation="spot"),
    ))
    result = plan(request, OPTIONS, offers)
    assert result.cluster_id == 5  # cluster 6 has 2 GPUs for 4 nodes
    assert [(n.group, n.offer_id, n.is_bid) for n in result.nodes] == [
        ("head", 101, False), ("worker", 101, True), ("worker", 101, True), ("worker", 101, True)
    ]
    assert result.nodes_of("worker")[0].bid_price == pytest.approx(0.12)
    assert result.nodes_of("head")[0].bid_price is None
    assert result.total_per_hour == pytest.approx(0.4 + 3 * 0.12)


# -- budget ----------------------------------------------------------------------------------------------------------


def test_max_hourly_cost_caps_the_total_including_what_is_committed() -> None:
    offers = machine(1, 2, cluster_id=1, per_gpu=0.5)
    request = PlacementRequest.single("RTX 4090", nodes=2, allocation="on-demand")
    assert plan(request, PlacementOptions(max_hourly_cost=1.0), offers).total_per_hour == 1.0
    with pytest.raises(NoPlacementError, match="max_hourly_cost"):
        plan(request, PlacementOptions(max_hourly_cost=1.0), offers, already_committed_per_hour=0.01)
    with pytest.raises(NoPlacementError):
        plan(request, PlacementOptions(max_hourly_cost=0.99), offers)
    with pytest.raises(ValueError, match="already_committed_per_hour"):
        plan(request, OPTIONS, offers, already_committed_per_hour=-1)


def test_budget_picks_a_cheaper_cluster_than_the_reliability_tie_would() -> None:
    offers = machine(1, 2, cluster_id=1, per_gpu=0.6) + machine(2, 2, cluster_id=2, per_gpu=0.4)
    request = PlacementRequest.single("RTX 4090", nodes=2, allocation="on-demand")
    result = plan(request, PlacementOptions(max_hourly_cost=1.0), offers)
    assert result.cluster_id == 2 and result.runners_up == ()  # cluster 1 costs 1.2, over the cap


# -- ties and determinism --------------------------------------------------------------------------------------------


def test_ties_go_to_reliability_then_to_the_lower_ids() -> None:
    offers = [offer(1, 1, dph_total=0.3, reliability2=0.96), offer(2, 2, dph_total=0.3, reliability2=0.99),
              offer(3, 3, dph_total=0.3, reliability2=0.99)]
    request = PlacementRequest.single("RTX 4090", allocation="on-demand")
    assert [node.offer_id for node in plan(request, OPTIONS, offers).nodes] == [2]
    clusters = machine(5, 1, cluster_id=20) + machine(6, 1, cluster_id=20) + machine(3, 1, cluster_id=10) + machine(
        4, 1, cluster_id=10)
    pair = PlacementRequest.single("RTX 4090", nodes=2, allocation="on-demand")
    assert plan(pair, OPTIONS, clusters).cluster_id == 10


def test_the_same_offers_in_any_order_give_the_same_plan() -> None:
    rng = random.Random(3)
    offers = []
    for m in range(1, 40):
        offers += machine(m, rng.choice([1, 2, 4, 8]), cluster_id=rng.choice([None, 1, 2, 3, 4]),
                          per_gpu=rng.choice([0.2, 0.3, 0.4]), reliability2=rng.choice([0.96, 0.99]))
    request = PlacementRequest(groups=(
        NodeGroup(name="head", accelerator="RTX 4090", allocation="on-demand"),
        NodeGroup(name="worker", accelerator="RTX 4090", count=5, allocation="spot"),
    ))
    first = plan(request, OPTIONS, offers)
    for _ in range(5):
        rng.shuffle(offers)
        assert plan(request, OPTIONS, offers) == first
    assert plan(request, OPTIONS, offers + offers) == first  # duplicates (two searches) change nothing


# -- scope -----------------------------------------------------------------------------------------------------------


def test_pinned_request_stays_on_its_cluster_and_sees_machines_already_rented() -> None:
    offers = machine(1, 2, cluster_id=5, per_gpu=0.5, rented=True) + machine(2, 2, cluster_id=6, per_gpu=0.1)
    request = PlacementRequest.single("RTX 4090", nodes=2, allocation="on-demand", cluster_id=5)
    result = plan(request, OPTIONS, offers)
    assert result.scope is Scope.PINNED and result.cluster_id == 5
    assert {node.machine_id for node in result.nodes} == {1}
    assert result.runners_up == ()


def test_excluded_machines_from_options_and_request_are_never_used() -> None:
    offers = machine(1, 1, per_gpu=0.1) + machine(2, 1, per_gpu=0.2) + machine(3, 1, per_gpu=0.3)
    request = PlacementRequest.single("RTX 4090", allocation="on-demand", excluded_machines=frozenset({2}))
    options = PlacementOptions(excluded_machines=[1])
    assert [node.machine_id for node in plan(request, options, offers).nodes] == [3]


def test_without_overlay_nodes_go_anywhere() -> None:
    offers = machine(1, 1, per_gpu=0.1) + machine(2, 1, cluster_id=4, per_gpu=0.2) + machine(3, 1, cluster_id=5,
                                                                                                per_gpu=0.3)
    request = PlacementRequest.single("RTX 4090", nodes=3, allocation="on-demand")
    result = plan(request, PlacementOptions(use_overlay=False), offers)
    assert result.scope is Scope.FREE and result.cluster_id is None
    assert sorted(node.machine_id for node in result.nodes) == [1, 2, 3]
    forced = request.model_copy(update={"physical_cluster": True})
    with pytest.raises(NoPlacementError):
        plan(forced, PlacementOptions(use_overlay=False), offers)


def test_plan_summary_is_json_ready() -> None:
    import json

    result = plan(PlacementRequest.single("RTX 4090", nodes=2), OPTIONS, machine(1, 2, cluster_id=3))
    summary = json.loads(json.dumps(result.summary()))
    assert summary["cluster_id"] == 3 and len(summary["nodes"]) == 2
    assert summary["nodes"][0]["offer_id"] == 101 and summary["nodes"][0]["is_bid"] is True
    assert summary["image"].startswith("nvcr.io/nvidia/cuda:")
