"""Placement benchmark: plan time on large markets, and optimality against brute force on small ones.

    .venv/bin/python benchmarks/bench_placement.py [--seed N] [--markets N]

- ``plan_ms_10k`` / ``plan_ms_100k``: median wall time of ``plan()`` for a 4-node RTX 4090 cluster request on
  10,000 / 100,000 offers that are all RTX 4090 (goals: < 50 ms and < 500 ms): the worst case, every offer passing
  the GPU filter, as in the result of a search by GPU name. ``*_cpu`` is the CPU time of the same calls (less noisy
  on a busy machine), ``*_head_workers`` a head (on-demand) plus 7 workers (spot), ``*_mixed`` a market where the
  requested GPU is 30% of the offers. Offers are built before timing starts, as the provider gets them.
- ``optimality``: over many small random markets, the worst ratio brute-force optimum / planned total (goal: exactly
  1.0); a market where brute force finds a placement and the planner does not counts as 0.

Markets are generated here (no emulator import) with the offer rule the planner assumes: a machine with F free GPUs
offers 1, 2, 4, ... GPUs and F, each offer id stable per (machine, size). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from collections import Counter
from typing import Any

from skyward_ray.placement import (
    NodeGroup,
    NoPlacementError,
    OfferFilter,
    PlacementOptions,
    PlacementRequest,
    Scope,
    node_price,
    plan,
)
from skyward_ray.vast.models import Offer

ONLY_4090 = [("RTX 4090", 1.0, 0.35)]
GPU_MIX = [("RTX 4090", 0.30, 0.35), ("RTX 3090", 0.20, 0.20), ("A100 SXM4", 0.10, 1.10), ("H100 SXM", 0.10, 2.20),
           ("RTX 5090", 0.10, 0.60), ("L40S", 0.10, 0.80), ("RTX A6000", 0.10, 0.45)]
LOCATIONS = ["Texas, US", "California, US", "Quebec, CA", "Hesse, DE", "Ile-de-France, FR", "Tokyo, JP",
             "Hong Kong, HK", "Noord-Holland, NL"]


def offer_sizes(free: int) -> list[int]:
    sizes, n = [], 1
    while n <= free:
        sizes.append(n)
        n *= 2
    if free not in sizes:
        sizes.append(free)
    return sizes


def generate_market(target_offers: int, rng: random.Random, mix: list[tuple[str, float, float]]) -> list[Offer]:
    """Machines with a GPU mix, 40% of them in physical clusters of 2-16 machines, until ``target_offers``."""
    offers: list[Offer] = []
    machine = 0
    cluster = 0
    while len(offers) < target_offers:
        cluster += 1
        in_cluster = rng.random() < 0.4
        size = rng.randint(2, 16) if in_cluster else 1
        gpu, _, base = rng.choices(mix, weights=[w for _, w, _ in mix])[0]
        location = rng.choice(LOCATIONS)
        for _ in range(size):
            machine += 1
            free = rng.choice([1, 1, 2, 2, 4, 4, 6, 8, 8])
            per_gpu = base * rng.uniform(0.7, 1.5)
            reliability = rng.uniform(0.85, 0.999)
            verified = rng.random() < 0.8
            cuda = rng.choice([11.8, 12.2, 12.4, 12.6, 12.8, 12.9])
            for n in offer_sizes(free):
                offers.append(Offer.model_validate({
                    "id": machine * 100 + n, "machine_id": machine, "cluster_id": cluster if in_cluster else None,
                    "gpu_name": gpu, "num_gpus": n, "dph_total": round(per_gpu * n + 0.01, 4),
                    "min_bid": round(per_gpu * n * rng.uniform(0.3, 0.6), 4), "reliability2": reliability,
                    "geolocation": location, "verification": "verified" if verified else "unverified",
                    "hosting_type": int(rng.random() < 0.3), "cuda_max_good": cuda, "disk_space": 200.0 * n,
                    "inet_down": rng.choice([100.0, 500.0, 1000.0]), "direct_port_count": rng.choice([0, 20, 100]),
                    "rentable": True, "rented": False,
                }))
                if len(offers) >= target_offers:
                    return offers
    return offers


def time_plan(request: PlacementRequest, options: PlacementOptions, offers: list[Offer],
              repeats: int) -> tuple[float, float]:
    """(median wall ms, median CPU ms) of ``plan()``."""
    plan(request, options, offers)  # warm caches (GPU table lookups)
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        plan(request, options, offers)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


# -- brute force ---------------------------------------------------------------------------------------------------


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def brute_force(request: PlacementRequest, options: PlacementOptions, offers: list[Offer]) -> float | None:
    """Try every assignment of nodes to eligible offers; keep the feasible one with the lowest total."""
    scope = request.scope(options)
    free: dict[int, int] = {}
    for offer in offers:
        free[offer.machine_id] = max(free.get(offer.machine_id, 0), offer.num_gpus)
    per_group = []
    for group, offer_filter in zip(request.groups, OfferFilter.for_request(request, options), strict=True):
        eligible: dict[int, tuple[Offer, int, float]] = {}
        for offer in offers:
            if offer.num_gpus != group.gpus_per_node or not offer_filter.recheck(offer):
                continue
            price = node_price(offer, group.allocation, options)
            if price is not None:
                eligible.setdefault(offer.id, (offer, round(price.per_hour * 1e6), price.per_hour))
        per_group.append([list(itertools.combinations_with_replacement(list(eligible.values()), group.count)),
                          group.gpus_per_node])
    best: tuple[int, float] | None = None
    budget = None if options.max_hourly_cost is None else round(options.max_hourly_cost * 1e6)
    for choice in itertools.product(*(combos for combos, _ in per_group)):
        used: Counter[int] = Counter()
        nodes_on: Counter[int] = Counter()
        odd_on: set[int] = set()
        clusters = set()
        micro = 0
        total = 0.0
        for (_, gpus), picks in zip(per_group, choice, strict=True):
            for offer, price_micro, price in picks:
                used[offer.machine_id] += gpus
                nodes_on[offer.machine_id] += 1
                if not _is_power_of_two(gpus):
                    odd_on.add(offer.machine_id)
                clusters.add(offer.cluster_id)
                micro += price_micro
                total += price
        if any(used[m] > free[m] for m in used) or any(nodes_on[m] > 1 for m in odd_on):
            continue
        if scope is not Scope.FREE and (len(clusters) != 1 or None in clusters):
            continue
        if budget is not None and micro > budget:
            continue
        if best is None or micro < best[0]:
            best = (micro, total)
    return None if best is None else best[1]


def small_market(rng: random.Random) -> tuple[PlacementRequest, PlacementOptions, list[Offer]]:
    offers = []
    for machine in range(1, rng.randint(3, 7) + 1):
        cluster = rng.choice([None, 1, 1, 2, 2, 3])
        free = rng.randint(1, 8)
        gpu = rng.choice(["RTX 4090", "RTX 4090", "RTX 4090", "RTX 3090"])
        per_gpu = rng.choice([0.2, 0.25, 0.3, 0.35, 0.4, 0.47, 0.55])
        has_bid = rng.random() < 0.8
        for n in offer_sizes(free):
            offers.append(Offer(
                id=machine * 100 + n, machine_id=machine, cluster_id=cluster, gpu_name=gpu, num_gpus=n,
                dph_total=round(per_gpu * n, 4), min_bid=round(per_gpu * n * 0.5, 4) if has_bid else None,
                reliability2=rng.choice([0.9, 0.96, 0.99]), geolocation=rng.choice(["Texas, US", "Hesse, DE"]),
                verification="verified", cuda_max_good=12.8, disk_space=500.0, direct_port_count=10,
                rentable=True, rented=False,
            ))
    allocations = ["on-demand", "spot", "spot-if-available"]
    groups = [NodeGroup(name="head", accelerator="RTX 4090", gpus_per_node=rng.choice([1, 1, 2, 3]), count=1,
                        allocation=rng.choice(allocations))]
    if rng.random() < 0.7:
        groups.append(NodeGroup(name="worker", accelerator="RTX 4090", gpus_per_node=rng.choice([1, 2, 3]),
                                count=rng.randint(1, 3), allocation=rng.choice(allocations)))
    request = PlacementRequest(groups=tuple(groups))
    options = PlacementOptions(
        min_reliability=rng.choice([0.0, 0.0, 0.95]),
        geolocation=rng.choice([None, None, "US"]),
        use_overlay=rng.random() < 0.8,
        max_bid=rng.choice([None, None, 0.3]),
        max_hourly_cost=rng.choice([None, None, 1.0, 2.0]),
    )
    return request, options, offers


def measure_optimality(markets: int, rng: random.Random) -> dict[str, Any]:
    worst = 1.0
    feasible = 0
    for _ in range(markets):
        request, options, offers = small_market(rng)
        optimum = brute_force(request, options, offers)
        try:
            total = plan(request, options, offers).total_per_hour
        except NoPlacementError:
            total = None
        if optimum is None:
            if total is not None:
                worst = 0.0  # the planner found something brute force says cannot exist: a bug
            continue
        feasible += 1
        worst = min(worst, 0.0 if total is None else optimum / total)
    return {"optimality": round(worst, 9), "markets": markets, "feasible_markets": feasible}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--markets", type=int, default=500, help="small random markets for the optimality check")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    options = PlacementOptions()
    request = PlacementRequest.single("RTX 4090", nodes=4, allocation="spot-if-available")
    head_workers = PlacementRequest(groups=(
        NodeGroup(name="head", accelerator="RTX 4090", count=1, allocation="on-demand"),
        NodeGroup(name="worker", accelerator="RTX 4090", count=7, allocation="spot"),
    ))
    figures: dict[str, Any] = {}
    for size, label in ((10_000, "10k"), (100_000, "100k")):
        for market_name, mix in (("", ONLY_4090), ("_mixed", GPU_MIX)):
            market = generate_market(size, rng, mix)
            for request_name, placed in (("", request), ("_head_workers", head_workers)):
                if market_name and request_name:
                    continue
                wall, cpu = time_plan(placed, options, market, args.repeats)
                figures[f"plan_ms_{label}{market_name}{request_name}"] = round(wall, 2)
                figures[f"plan_ms_{label}{market_name}{request_name}_cpu"] = round(cpu, 2)
        shown = {key.removeprefix(f"plan_ms_{label}").lstrip("_") or "4 x RTX 4090": value
                 for key, value in figures.items() if key.startswith(f"plan_ms_{label}")}
        print(f"{label} offers, ms: " + ", ".join(f"{name} {value}" for name, value in shown.items()), file=sys.stderr)
    figures.update(measure_optimality(args.markets, rng))
    print(f"optimality over {figures['markets']} markets ({figures['feasible_markets']} feasible): "
          f"{figures['optimality']}", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
