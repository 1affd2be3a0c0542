"""Why nothing fits: each stage that can empty the result gets its own specific message and the change that helps."""

from __future__ import annotations

from typing import Any

import pytest
from support.placement_offers import machine, offer

from skyward_ray.errors import SkywardError
from skyward_ray.placement import NoPlacementError, PlacementOptions, PlacementRequest, explain, plan
from skyward_ray.placement.explanation import Style
from skyward_ray.vast.models import Offer

ONE = PlacementRequest.single("RTX 4090")
FOUR = PlacementRequest.single("RTX 4090", nodes=4, allocation="spot")


def _cluster17_market() -> list[Offer]:
    """Three machines on cluster 17 and nine single machines elsewhere, some below 0.98 reliability."""
    offers: list[Offer] = []
    for m in range(1, 13):
        offers += machine(m, 1, cluster_id=17 if m <= 3 else 20 + m, reliability2=0.985 if m < 10 else 0.97)
    return offers


CASES: list[tuple[str, PlacementRequest, dict[str, Any], list[Offer], str, list[str], list[str]]] = [
    # (id, request, options, offers, stage, fragments of the reason, suggestions)
    ("accelerator", ONE, {}, [offer(1, 1, gpu_name="RTX 3090", dph_total=0.2)], "accelerator",
     ["the search result has no offers of RTX 4090"], ["accelerator: RTX 3090 ($0.24/h)"]),
    ("unknown gpu", PlacementRequest.single("RTX 9999"), {}, [offer(1, 1)], "accelerator",
     ["'RTX 9999' is not in the GPU table; known: H100"], ["accelerator: RTX 4090"]),
    ("too few gpus", PlacementRequest.single("RTX 4090", gpus_per_node=8), {}, machine(1, 4), "gpus_per_node",
     ["none has 8 or more free GPUs (the largest has 4)"], ["gpus: 4"]),
    ("no exact size", PlacementRequest.single("RTX 4090", gpus_per_node=3), {}, machine(1, 4), "gpus_per_node",
     ["none is for exactly 3 GPUs (sizes on offer: 4"], ["gpus: 4"]),
    ("rented", ONE, {}, [offer(1, 1, rented=True)], "rentable", ["all are rented or not rentable"],
     ["retry later"]),
    ("excluded", ONE, {"excluded_machines": [1]}, [offer(1, 1)], "excluded_machines",
     ["all are on excluded machines"], ["other hosts"]),
    ("min_reliability", ONE, {"min_reliability": 0.99}, [offer(1, 1, reliability2=0.963)], "min_reliability",
     ["none has reliability >= 0.99 (the best is 0.963)"], ["min_reliability: 0.963"]),
    ("geolocation", ONE, {"geolocation": "EU"}, [offer(1, 1), offer(2, 2, geolocation="Quebec, CA")],
     "geolocation", ["none is in EU; they are in CA (1), US (1)"], ["geolocation: US"]),
    ("verified_only", ONE, {}, [offer(1, 1, verification="unverified")], "verified_only",
     ["none is on a verified host"], ["verified_only: false"]),
    ("datacenter_only", ONE, {"datacenter_only": True}, [offer(1, 1, hosting_type=0)], "datacenter_only",
     ["none is in a datacenter"], ["datacenter_only: false"]),
    ("min_cuda", ONE, {"min_cuda": 12.9}, [offer(1, 1, cuda_max_good=12.4)], "min_cuda",
     ["none has cuda_max_good >= 12.9 (set by min_cuda) (the highest is 12.4)"], ["min_cuda: 12.4"]),
    ("docker_image", ONE, {"docker_image": "nvcr.io/nvidia/cuda:12.9.1-runtime-ubuntu22.04"},
     [offer(1, 1, cuda_max_good=12.4)], "docker_image", ["(set by the CUDA of docker_image)"],
     ["a docker_image built for CUDA 12.4 or older"]),
    ("accelerator cuda", PlacementRequest.single("RTX 5090"), {"min_cuda": None},
     [offer(1, 1, gpu_name="RTX 5090", cuda_max_good=12.4)], "accelerator_cuda",
     ["cuda_max_good >= 12.8 (set by the oldest CUDA for RTX 5090)"], []),
    ("min_inet_down", ONE, {"min_inet_down": 2000}, [offer(1, 1, inet_down=800)], "min_inet_down",
     ["(the fastest has 800 Mb/s)"], ["min_inet_down: 800"]),
    ("disk_gb", ONE, {"disk_gb": 1000}, [offer(1, 1, disk_space=350.5)], "disk_gb",
     ["none has disk_space >= 1000 GB (the largest has 350.5 GB free)"], ["disk_gb: 350"]),
    ("direct_port", ONE, {}, [offer(1, 1, direct_port_count=0)], "direct_port", ["none has a direct port"],
     ["other hosts"]),
    ("no physical cluster", FOUR, {}, machine(1, 8), "physical_cluster",
     ["none is on a physical cluster (cluster_id is null)"], ["another GPU offered on a physical cluster"]),
    ("pinned cluster", PlacementRequest.single("RTX 4090", cluster_id=9), {}, machine(1, 2, cluster_id=5),
     "cluster_id", ["none is on physical cluster 9; they are on clusters 5 (2)"], ["wait for capacity"]),
    ("spot without bids", PlacementRequest.single("RTX 4090", allocation="spot"), {},
     [offer(1, 1, min_bid=None)], "allocation", ["none takes bids (no min_bid)"],
     ["allocation: spot-if-available"]),
    ("on-demand from a bid search", PlacementRequest.single("RTX 4090", allocation="on-demand"), {},
     [offer(1, 1, is_bid=True)], "allocation", ["none has an on-demand price"], ["search with type on-demand"]),
    ("max_bid", PlacementRequest.single("RTX 4090", allocation="spot"), {"max_bid": 0.1},
     [offer(1, 1, min_bid=0.15)], "max_bid", ["the lowest min_bid is $0.15/h, above max_bid $0.1/h"],
     ["max_bid: 0.15", "allocation: spot-if-available"]),
    ("node over budget", ONE, {"max_hourly_cost": 0.1}, [offer(1, 1, min_bid=0.2)], "max_hourly_cost",
     ["the cheapest node of RTX 4090 costs $0.24/h, more than what max_hourly_cost $0.1/h leaves"],
     ["max_hourly_cost: 0.24 or more"]),
    ("brief's example", FOUR, {"min_reliability": 0.98}, _cluster17_market(), "capacity",
     ["9 offers of RTX 4090 match reliability >= 0.98, but no physical cluster has room for 4 nodes; "
      "the largest has room for 3 (cluster 17, US)"], ["max_workers: 3"]),
    ("free capacity", PlacementRequest.single("RTX 4090", nodes=3), {"use_overlay": False},
     machine(1, 1) + machine(2, 1), "capacity", ["together they have room for only 2 of 3 nodes"], ["max_workers: 2"]),
    ("pinned capacity", PlacementRequest.single("RTX 4090", nodes=3, cluster_id=5), {},
     machine(1, 2, cluster_id=5), "capacity", ["the physical cluster has room for only 2 of 3 nodes (cluster 5, US)"],
     ["max_workers: 2"]),
    ("plan over budget", PlacementRequest.single("RTX 4090", nodes=2, allocation="on-demand"),
     {"max_hourly_cost": 0.5}, machine(1, 2, cluster_id=1, per_gpu=0.3), "max_hourly_cost",
     ["the cheapest plan costs $0.6/h, over max_hourly_cost $0.5/h"],
     ["max_hourly_cost: 0.6 or more", "max_workers: 1"]),
]


@pytest.mark.parametrize(("request_", "options", "offers", "stage", "reason", "helps"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_stage_says_what_emptied_the_result_and_what_helps(
    request_: PlacementRequest, options: dict[str, Any], offers: list[Offer], stage: str, reason: list[str],
    helps: list[str],
) -> None:
    placement_options = PlacementOptions(**options)
    with pytest.raises(NoPlacementError) as caught:
        plan(request_, placement_options, offers)
    explanation = caught.value.explanation
    assert explanation.stage == stage, explanation.message
    message = str(caught.value)
    assert message == explanation.message
    assert message.startswith(f"No placement for {request_.describe()}: ")
    for fragment in reason:
        assert fragment in explanation.reason, explanation.reason
    for suggestion in helps:
        assert any(s.startswith(suggestion) for s in explanation.suggestions), explanation.suggestions
    assert explanation.suggestions, "every explanation says what would help"
    assert isinstance(caught.value, SkywardError)


def test_committed_spend_is_named_in_the_budget_message() -> None:
    request = PlacementRequest.single("RTX 4090", nodes=2, allocation="on-demand")
    offers = machine(1, 2, cluster_id=1, per_gpu=0.3)
    explanation = explain(request, PlacementOptions(max_hourly_cost=0.5), offers, already_committed_per_hour=0.3)
    assert explanation.stage == "max_hourly_cost"
    assert "($0.3/h already committed)" in explanation.reason
    assert "max_hourly_cost: 0.9 or more" in explanation.suggestions


def test_groups_are_named_when_a_request_has_several() -> None:
    request = PlacementRequest(groups=(
        {"name": "head", "accelerator": "RTX 4090", "allocation": "on-demand"},
        {"name": "worker", "accelerator": "H100", "count": 2, "allocation": "spot"},
    ))
    explanation = explain(request, PlacementOptions(), machine(1, 4, cluster_id=1))
    assert explanation.group == "worker" and explanation.stage == "accelerator"
    assert explanation.message.startswith("No placement for head: 1 x RTX 4090")
    assert ": worker: the search result has no offers of H100 SXM or H100 PCIE or H100 NVL" in explanation.message


def test_joint_capacity_when_each_group_fits_alone() -> None:
    request = PlacementRequest(groups=(
        {"name": "head", "accelerator": "RTX 4090", "gpus_per_node": 2, "allocation": "on-demand"},
        {"name": "worker", "accelerator": "RTX 4090", "gpus_per_node": 2, "allocation": "on-demand"},
    ))
    explanation = explain(request, PlacementOptions(), machine(1, 2, cluster_id=1) + machine(2, 2, cluster_id=2))
    assert explanation.stage == "capacity"
    assert "each group fits alone, but any one physical cluster cannot hold all 2 nodes at once" in explanation.reason


def test_a_broader_search_result_says_how_far_a_filter_would_have_to_move() -> None:
    options = PlacementOptions(min_reliability=0.99)
    strict: list[Offer] = []  # what a search with reliability2 >= 0.99 returned
    broad = [offer(1, 1, reliability2=0.97), offer(2, 2, reliability2=0.93)]
    alone = explain(ONE, options, strict)
    assert alone.stage == "accelerator"
    assert alone.suggestions and "retry later" in alone.suggestions[0]
    informed = explain(ONE, options, strict + broad)
    assert informed.stage == "min_reliability"
    assert informed.suggestions[0] == "min_reliability: 0.97"


def test_explain_on_offers_that_fit_says_so() -> None:
    assert explain(ONE, PlacementOptions(), [offer(1, 1)]).stage == "none"


def test_offers_seen_in_several_searches_are_counted_once() -> None:
    rows = [offer(1, 1), offer(2, 2, geolocation="Hesse, DE", verification="unverified")]
    from_both_searches = rows + [row.model_copy(update={"is_bid": True}) for row in rows] + rows
    explanation = explain(ONE, PlacementOptions(geolocation="EU"), from_both_searches)
    assert explanation.stage == "verified_only"
    assert explanation.reason == "1 offer of RTX 4090 matches geolocation in EU, but none is on a verified host"


@pytest.mark.parametrize(("request_", "options", "offers"), [case[1:4] for case in CASES], ids=[c[0] for c in CASES])
def test_no_explanation_suggests_going_without_the_overlay(request_: PlacementRequest, options: dict[str, Any],
                                                           offers: list[Offer]) -> None:
    """Workers behind Vast's NAT cannot reach the head without the overlay: never a way out of a placement."""
    explanation = explain(request_, PlacementOptions(**options), offers)
    for style in Style:
        assert "overlay: false" not in explanation.render(style) and "--no-overlay" not in explanation.render(style)
