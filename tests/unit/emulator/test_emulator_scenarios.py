"""The seeded market generator: reproducible, realistic, and with the supply every example in examples/ needs."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

import pytest

from skyward_ray.emulator.catalog import GPU_BY_NAME, GPU_MODELS
from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.market import Market
from skyward_ray.emulator.scenarios import SCENARIOS, build_scenario

DOC_RANGES = (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("203.0.113.0/24"))


def test_same_seed_same_market_other_seed_other_market() -> None:
    def fingerprint(seed: int) -> list[tuple[int, str, float]]:
        return [(m.machine_id, m.gpu_name, m.gpu_price) for m in build_scenario("default", seed).machines]

    assert fingerprint(3) == fingerprint(3)
    assert fingerprint(3) != fingerprint(4)


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_machine_is_plausible(name: str) -> None:
    scenario = build_scenario(name, seed=1)
    machines = scenario.machines
    assert len({m.machine_id for m in machines}) == len(machines)
    for m in machines:
        assert ipaddress.ip_address(m.public_ipaddr) in DOC_RANGES[0] or \
            ipaddress.ip_address(m.public_ipaddr) in DOC_RANGES[1]
        assert re.search(r", [A-Z]{2}$", m.geolocation), m.geolocation
        assert m.gpu_name in GPU_BY_NAME
        low, high = GPU_BY_NAME[m.gpu_name].price_per_gpu
        assert low <= m.gpu_price <= high
        assert 0.3 - 1e-3 <= m.bid_price / m.gpu_price <= 0.7 + 1e-3  # interruptible is 30-70% cheaper
        assert 0.6 <= m.reliability2 <= 0.999
        assert m.verification in ("verified", "unverified", "deverified") and m.hosting_type in (0, 1)
    clusters = Counter(m.cluster_id for m in machines if m.cluster_id is not None)
    assert all(2 <= size <= 16 for size in clusters.values())
    for cluster_id in clusters:
        members = [m for m in machines if m.cluster_id == cluster_id]
        assert len({m.gpu_name for m in members}) == 1 and len({m.geolocation for m in members}) == 1


def test_default_market_places_every_seed_example() -> None:
    for seed in (0, 7, 123):
        market = Market("default", seed=seed, clock=Clock(scale=0))
        assert market.faults.model_dump() == type(market.faults)().model_dump()  # quiet by default

        def offers(query: dict[str, object], market: Market = market) -> list[dict[str, object]]:
            return market.search({**query, "limit": 1000}, None)["offers"]

        # Multi-node: one US physical cluster with >= 4 free RTX 4090 at reliability >= 0.98.
        hits = offers({"gpu_name": {"eq": "RTX 4090"}, "cluster_id": {"neq": None}, "geolocation": {"eq": "US"},
                       "reliability2": {"gte": 0.98}, "verified": {"eq": True}})
        per_cluster = {cid: sum(m.free_gpus for m in market.clusters[cid] if m.reliability2 >= 0.98)
                       for cid in {o["cluster_id"] for o in hits}}
        assert max(per_cluster.values()) >= 4
        # Single nodes of the examples, at their reliability floors.
        for gpu, floor, count in (("RTX 4090", 0.95, 1), ("RTX 3080", 0.90, 1), ("A100 SXM4", 0.95, 8),
                                  ("RTX 4090", 0.95, 4)):
            assert offers({"gpu_name": {"eq": gpu}, "reliability2": {"gte": floor}, "num_gpus": {"eq": count},
                           "verified": {"eq": True}, "geolocation": {"eq": "US"}}), (seed, gpu, count)
        for model in GPU_MODELS:
            assert offers({"gpu_name": {"eq": model.name}, "reliability2": {"gte": 0.95}}), model.name


def test_bench_has_ten_thousand_offers() -> None:
    assert Market("bench", seed=0, clock=Clock(scale=0)).offer_count() >= 10_000


def test_chaos_turns_faults_on_and_scarce_is_scarce() -> None:
    chaos = build_scenario("chaos", seed=0).faults
    assert chaos.rate_limit.enabled and chaos.error_5xx_rate > 0 and chaos.outbid_rate_per_hour > 0
    assert len(build_scenario("scarce", 0).machines) < len(build_scenario("default", 0).machines) / 5


def test_unknown_scenario_names_the_choices() -> None:
    with pytest.raises(ValueError, match="allowed: default, scarce, chaos, bench"):
        build_scenario("huge")
