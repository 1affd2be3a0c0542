"""The placement oracle and the offer builders on hand-worked cases, so the property test compares the planner
against something known to be right."""

from __future__ import annotations

from support.placement_offers import machine, offer_sizes
from support.placement_oracle import brute_force

from skyward_ray.placement import PlacementOptions, PlacementRequest


def test_offer_rule_sizes() -> None:
    assert offer_sizes(1) == [1]
    assert offer_sizes(6) == [1, 2, 4, 6]
    assert offer_sizes(8) == [1, 2, 4, 8]
    assert offer_sizes(3) == [1, 2, 3]


def test_oracle_shares_machines_within_free_gpus() -> None:
    offers = machine(1, 4, cluster_id=7, per_gpu=0.1) + machine(2, 1, cluster_id=7, per_gpu=0.5)
    request = PlacementRequest.single("RTX 4090", nodes=5, allocation="on-demand")
    best = brute_force(request, PlacementOptions(), offers)
    assert best is not None
    assert best.total == 0.1 * 4 + 0.5
    assert brute_force(PlacementRequest.single("RTX 4090", nodes=6, allocation="on-demand"), PlacementOptions(),
                       offers) is None


def test_oracle_keeps_odd_sizes_alone() -> None:
    offers = machine(1, 3, cluster_id=7)
    request = PlacementRequest(groups=(
        {"name": "a", "accelerator": "RTX 4090", "gpus_per_node": 3, "count": 1, "allocation": "on-demand"},
    ))
    assert brute_force(request, PlacementOptions(), offers) is not None
