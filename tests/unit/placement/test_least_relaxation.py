"""Least relaxation: when nothing fits, each numeric suggestion is the nearest value that yields a placement, checked
against a brute-force scan of the relaxed value through the planner on random markets; and when the cheapest plan
needs a bigger change, the suggestion says which value is which."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from support.placement_offers import machine

from skyward_ray.placement import PlacementOptions, PlacementRequest, explain
from skyward_ray.placement.explanation import Style
from skyward_ray.placement.solver import budget_micro, collect, solve
from skyward_ray.vast.models import Offer

MARKETS = 12  # random markets per filter


def _market(rng: random.Random) -> list[Offer]:
    offers: list[Offer] = []
    for machine_id in range(1, rng.randint(4, 8) + 1):
        offers += machine(
            machine_id, rng.choice((1, 2)), cluster_id=rng.choice((1, 2, 3)),
            per_gpu=round(rng.uniform(0.2, 0.8), 3), bid_per_gpu=round(rng.uniform(0.05, 0.4), 3),
            reliability2=round(rng.uniform(0.85, 0.999), 3), cuda_max_good=rng.choice((11.8, 12.0, 12.2, 12.4, 12.8)),
            inet_down=float(rng.randint(100, 2000)), disk_space=rng.randint(50, 800) + 0.5,
        )
    return offers


def _fits(request: PlacementRequest, options: PlacementOptions, offers: list[Offer]) -> bool:
    """Whether the planner's solver finds a placement (what ``plan`` does, without explaining a failure)."""
    budget = budget_micro(options, 0.0)
    return bool(solve(collect(request, options, offers, budget_micro=budget), keep=1, budget_micro=budget))


def _suggested(request: PlacementRequest, options: PlacementOptions, offers: list[Offer], key: str) -> float | None:
    explanation = explain(request, options, offers)
    values = [s.split(": ", 1)[1].split(" ")[0] for s in explanation.suggestions if s.startswith(f"{key}: ")]
    assert len(values) <= 1, explanation.suggestions
    return float(values[0]) if values else None


def _with(options: PlacementOptions, key: str, value: float) -> PlacementOptions:
    return options.model_copy(update={key: int(value) if key == "disk_gb" else float(value)})


# (option key, offer field, the tight value to start from, lower is looser)
MINIMA: list[tuple[str, Callable[[Offer], float | None], Callable[[random.Random], float]]] = [
    ("min_reliability", lambda o: o.reliability2, lambda rng: round(rng.uniform(0.99, 1.0), 3)),
    ("min_cuda", lambda o: o.cuda_max_good, lambda rng: 12.9),
    ("min_inet_down", lambda o: o.inet_down, lambda rng: float(rng.randint(1900, 2100))),
    ("disk_gb", lambda o: o.disk_space, lambda rng: rng.randint(700, 900)),
]


@pytest.mark.parametrize(("key", "field", "tight"), MINIMA, ids=[m[0] for m in MINIMA])
def test_each_minimum_suggests_the_nearest_value_that_places(
    key: str, field: Callable[[Offer], float | None], tight: Callable[[random.Random], float]
) -> None:
    checked = 0
    for seed in range(200):
        rng = random.Random(seed)
        offers = _market(rng)
        request = PlacementRequest.single("RTX 4090", nodes=rng.choice((2, 3)), allocation="on-demand")
        options = PlacementOptions(**{key: tight(rng)})
        if _fits(request, options, offers):
            continue
        # Brute force: every value an offer has below the current one, and a point just below each (a value between
        # two offers' values admits the same offers as the higher one, so it is never nearer).
        current = getattr(options, key)
        values = sorted({float(v) for v in map(field, offers) if v is not None and v < current}, reverse=True)
        grid = sorted({*values, *(v - 0.0005 for v in values)}, reverse=True)
        if key == "disk_gb":
            grid = list(range(int(current) - 1, 0, -1))
        nearest = next((v for v in grid if _fits(request, _with(options, key, v), offers)), None)
        suggested = _suggested(request, options, offers, key)
        if nearest is None:
            assert suggested is None
            continue
        expected = float(int(nearest)) if key == "disk_gb" else nearest
        assert suggested == pytest.approx(expected, abs=1e-12), (seed, key, suggested, nearest)
        assert _fits(request, _with(options, key, suggested), offers)
        checked += 1
        if checked == MARKETS:
            return
    pytest.fail(f"only {checked} random markets exercised {key}")


@pytest.mark.parametrize("budget", [None, "tight"], ids=["max_bid alone", "max_bid under max_hourly_cost"])
def test_max_bid_suggests_the_nearest_higher_cap(budget: str | None) -> None:
    checked = 0
    for seed in range(300):
        rng = random.Random(seed)
        offers = _market(rng)
        request = PlacementRequest.single("RTX 4090", nodes=rng.choice((2, 3)), allocation="spot")
        extra: dict[str, Any] = {}
        if budget:
            extra["max_hourly_cost"] = round(rng.uniform(0.3, 1.2), 3)
        options = PlacementOptions(max_bid=round(rng.uniform(0.02, 0.1), 3), **extra)
        if _fits(request, options, offers):
            continue
        bids = sorted({o.min_bid for o in offers if o.min_bid is not None and o.min_bid > options.max_bid})
        grid = sorted({*bids, *(b + 0.0005 for b in bids)})
        nearest = next((v for v in grid if _fits(request, _with(options, "max_bid", v), offers)), None)
        suggested = _suggested(request, options, offers, "max_bid")
        if nearest is None:
            assert suggested is None
            continue
        assert suggested == pytest.approx(nearest, abs=1e-12), (seed, suggested, nearest)
        checked += 1
        if checked == MARKETS:
            return
    pytest.fail(f"only {checked} random markets exercised max_bid")


def test_max_hourly_cost_suggests_the_least_budget_that_places() -> None:
    checked = 0
    for seed in range(200):
        rng = random.Random(seed)
        offers = _market(rng)
        request = PlacementRequest.single("RTX 4090", nodes=rng.choice((2, 3)), allocation="on-demand")
        options = PlacementOptions(max_hourly_cost=round(rng.uniform(0.2, 0.6), 3))
        if _fits(request, options, offers):
            continue
        suggested = _suggested(request, options, offers, "max_hourly_cost")
        step = 0.001  # the brute force's resolution: the suggestion must lie within one step below its answer
        grid = [round(options.max_hourly_cost + step * i, 3) for i in range(1, 3_000)]
        nearest = next((v for v in grid if _fits(request, _with(options, "max_hourly_cost", v), offers)), None)
        if nearest is None:
            assert suggested is None
            continue
        assert suggested is not None
        assert _fits(request, _with(options, "max_hourly_cost", suggested), offers)
        assert nearest - step < suggested <= nearest, (seed, suggested, nearest)
        checked += 1
        if checked == MARKETS:
            return
    pytest.fail(f"only {checked} random markets exercised max_hourly_cost")


def test_nodes_and_gpus_per_node_suggest_the_nearest_count() -> None:
    checked = 0
    for seed in range(200):
        rng = random.Random(seed)
        offers = _market(rng) + machine(50, rng.choice((3, 4, 8)), cluster_id=9)
        asked_nodes, asked_gpus = rng.choice((3, 5, 9)), rng.choice((2, 3, 6))
        request = PlacementRequest.single("RTX 4090", nodes=asked_nodes, gpus_per_node=asked_gpus,
                                          allocation="on-demand")
        options = PlacementOptions()
        if _fits(request, options, offers):
            continue
        explanation = explain(request, options, offers)
        cli = explanation.suggestions_for(Style.CLI)
        nodes = [n for n in range(asked_nodes - 1, 0, -1)
                 if _fits(request.model_copy(update={"groups": (request.groups[0].model_copy(
                     update={"count": n, "gpus_per_node": asked_gpus}),), "physical_cluster": True}), options, offers)]
        expected_nodes = [f"--nodes {nodes[0]}"] if nodes else []
        assert [s for s in cli if s.startswith("--nodes ")] == expected_nodes, (seed, cli)
        sizes = sorted((s for s in range(1, 17) if s != asked_gpus and _fits(request.model_copy(update={"groups": (
            request.groups[0].model_copy(update={"gpus_per_node": s}),)}), options, offers)),
            key=lambda s: (abs(s - asked_gpus), -s))
        expected_sizes = [f"--count-per-node {sizes[0]}"] if sizes else []
        assert [s for s in cli if s.startswith("--count-per-node ")] == expected_sizes, (seed, cli)
        checked += 1
        if checked == MARKETS:
            return
    pytest.fail(f"only {checked} random markets exercised nodes and gpus_per_node")


def test_the_least_change_and_the_cheapest_plan_are_told_apart() -> None:
    """Cluster 1 is reliable enough at 0.97 but dear; cluster 2 needs 0.93 and is cheap."""
    offers = (machine(1, 1, cluster_id=1, per_gpu=0.9, reliability2=0.97)
              + machine(2, 1, cluster_id=1, per_gpu=0.9, reliability2=0.97)
              + machine(3, 1, cluster_id=2, per_gpu=0.3, reliability2=0.93)
              + machine(4, 1, cluster_id=2, per_gpu=0.3, reliability2=0.94))
    request = PlacementRequest.single("RTX 4090", nodes=2, allocation="on-demand")
    explanation = explain(request, PlacementOptions(min_reliability=0.99), offers)
    (suggestion,) = [s for s in explanation.suggestions if s.startswith("min_reliability")]
    assert suggestion == ("min_reliability: 0.97 (the least change, $1.8/h; min_reliability: 0.93 gives the cheapest "
                          "plan, $0.6/h)")
    cli = [s for s in explanation.suggestions_for(Style.CLI) if s.startswith("--min-reliability")]
    assert cli == ["--min-reliability 0.97 (the least change, $1.8/h; --min-reliability 0.93 gives the cheapest plan, "
                   "$0.6/h)"]
    # When the least change is also the cheapest, nothing more is said.
    cheap_first = explain(request, PlacementOptions(min_reliability=0.99), offers[:2])
    assert "min_reliability: 0.97" in cheap_first.suggestions


def test_docker_image_suggests_the_newest_cuda_that_places() -> None:
    checked = 0
    for seed in range(200):
        rng = random.Random(seed)
        offers = _market(rng)
        request = PlacementRequest.single("RTX 4090", nodes=rng.choice((2, 3)), allocation="on-demand")
        options = PlacementOptions(docker_image="nvcr.io/nvidia/cuda:12.9.1-runtime-ubuntu22.04", min_cuda=None)
        if _fits(request, options, offers):
            continue
        # Brute force: every CUDA version from the image's down, one tenth at a time, as an image built for it.
        grid = [round(12.8 - 0.1 * i, 1) for i in range(0, 19)]
        nearest = next((v for v in grid if _fits(request, options.model_copy(
            update={"docker_image": f"nvcr.io/nvidia/cuda:{v:.1f}.0-runtime-ubuntu22.04"}), offers)), None)
        suggested = [s for s in explain(request, options, offers).suggestions if "docker_image built for" in s]
        if nearest is None:
            assert suggested == []
            continue
        assert suggested == [f"a docker_image built for CUDA {nearest:g} or older"], (seed, suggested, nearest)
        checked += 1
        if checked == MARKETS:
            return
    pytest.fail(f"only {checked} random markets exercised docker_image")
