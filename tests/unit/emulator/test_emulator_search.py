"""The bundles search of the emulated market: operators, coercion, virtual columns, order, limit, pricing, and the
offer rule. No HTTP: Market.search directly."""

from __future__ import annotations

from typing import Any

import pytest

from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.errors import MarketError
from skyward_ray.emulator.market import Market
from skyward_ray.emulator.records import Caller
from skyward_ray.emulator.search import DEFAULT_LIMIT, offer_counts, offer_id, split_offer_id
from skyward_ray.emulator.testing import make_machine, make_scenario

A, B, C, D = 10001, 10002, 10003, 10004


@pytest.fixture
def market() -> Market:
    machines = [
        make_machine(A, num_gpus=8, cluster_id=500, geolocation="California, US", reliability2=0.99,
                     gpu_price=0.4, bid_price=0.2, disk_space=800.0),
        make_machine(B, gpu_name="RTX 3080", num_gpus=1, geolocation="Hesse, DE", reliability2=0.8,
                     verification="unverified", hosting_type=0, gpu_price=0.1, bid_price=0.05, disk_space=100.0),
        make_machine(C, gpu_name="A100 SXM4", num_gpus=4, cluster_id=501, reliability2=0.95,
                     geolocation="Yutakachō, Shinagawa District, Tokyo, JP", verification="deverified",
                     gpu_price=1.2, bid_price=0.5, disk_space=400.0),
        make_machine(D, num_gpus=2, geolocation="Quebec, CA", reliability2=0.7, external=True, hosting_type=0,
                     gpu_price=0.3, bid_price=0.12, disk_space=200.0),
    ]
    return Market(make_scenario(*machines), clock=Clock(scale=0), boot_delay_s=1.0)


def ids(market: Market, query: dict[str, Any], caller: Caller | None = None) -> list[int]:
    return [o["id"] for o in market.search(query, caller)["offers"]]


def machines_of(market: Market, query: dict[str, Any]) -> set[int]:
    return {o["machine_id"] for o in market.search(query, None)["offers"]}


@pytest.mark.parametrize(("free", "counts"), [
    (0, []), (1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (7, [1, 2, 4, 7]), (8, [1, 2, 4, 8]), (12, [1, 2, 4, 8, 12]),
])
def test_offer_rule_counts(free: int, counts: list[int]) -> None:
    assert offer_counts(free) == counts


def test_offer_ids_are_stable_and_reversible(market: Market) -> None:
    offers = market.search({"machine_id": {"eq": A}}, None)["offers"]
    assert sorted(o["num_gpus"] for o in offers) == [1, 2, 4, 8]
    for offer in offers:
        assert offer["id"] == offer_id(A, offer["num_gpus"]) == offer["ask_contract_id"]
        assert split_offer_id(offer["id"]) == (A, offer["num_gpus"])


@pytest.mark.parametrize(("query", "expected"), [
    ({"num_gpus": {"eq": 4}}, {(A, 4), (C, 4)}),
    ({"num_gpus": {"neq": 1}, "machine_id": {"in": [B, D]}}, {(D, 2)}),
    ({"num_gpus": {"gt": 4}}, {(A, 8)}),
    ({"num_gpus": {"gte": 4}}, {(A, 4), (A, 8), (C, 4)}),
    ({"num_gpus": {"lt": 2}}, {(A, 1), (B, 1), (C, 1), (D, 1)}),
    ({"num_gpus": {"lte": 2}, "machine_id": {"eq": D}}, {(D, 1), (D, 2)}),
    ({"num_gpus": {"gte": 2, "lte": 4}, "machine_id": {"eq": A}}, {(A, 2), (A, 4)}),
    ({"num_gpus": {"in": [2, 8]}}, {(A, 2), (A, 8), (C, 2), (D, 2)}),
    ({"num_gpus": {"notin": [1, 2, 4]}}, {(A, 8)}),
])
def test_every_operator(market: Market, query: dict[str, Any], expected: set[tuple[int, int]]) -> None:
    assert {split_offer_id(i) for i in ids(market, query)} == expected


def test_null_values_select_physical_clusters(market: Market) -> None:
    assert machines_of(market, {"cluster_id": {"neq": None}}) == {A, C}
    assert machines_of(market, {"cluster_id": {"eq": None}}) == {B, D}
    assert machines_of(market, {"cluster_id": {"in": [None, 501]}}) == {B, C, D}


def test_numeric_strings_are_coerced(market: Market) -> None:
    assert ids(market, {"num_gpus": {"eq": "4"}}) == ids(market, {"num_gpus": {"eq": 4}})
    assert machines_of(market, {"reliability2": {"gte": "0.9"}}) == {A, C}
    assert machines_of(market, {"cluster_id": {"eq": "500"}}) == {A}
    assert machines_of(market, {"verified": {"eq": "true"}}) == {A, D}


def test_underscores_in_gpu_names_mean_spaces(market: Market) -> None:
    assert machines_of(market, {"gpu_name": {"eq": "RTX_3080"}}) == {B}
    assert machines_of(market, {"gpu_name": {"in": ["A100_SXM4", "RTX 3080"]}}) == {B, C}


def test_geolocation_matches_the_country_code_ending_the_location(market: Market) -> None:
    assert machines_of(market, {"geolocation": {"eq": "US"}}) == {A}
    assert machines_of(market, {"geolocation": {"in": ["JP", "ca"]}}) == {C, D}
    assert machines_of(market, {"geolocation": {"notin": ["US", "JP"]}}) == {B, D}
    offer = market.search({"machine_id": {"eq": C}}, None)["offers"][0]
    assert offer["geolocation"] == "Yutakachō, Shinagawa District, Tokyo, JP"  # free text on the wire


def test_virtual_columns(market: Market) -> None:
    assert machines_of(market, {"verified": {"eq": True}}) == {A, D}  # vericode; C is deverified
    assert machines_of(market, {"datacenter": {"eq": True}}) == {A, C}  # hosting_type == 1
    assert machines_of(market, {"reliability": {"gt": 0.9}}) == machines_of(market, {"reliability2": {"gt": 0.9}})
    assert machines_of(market, {"duration": {"gte": 10 * 86_400}}) == {A, B, C, D}
    assert machines_of(market, {"duration": {"gte": 40 * 86_400}}) == set()
    # allocated_storage filters on each offer's disk share (A: 100 GB per GPU) and prices the storage.
    assert {split_offer_id(i) for i in ids(market, {"allocated_storage": 350, "machine_id": {"eq": A}})} == \
        {(A, 4), (A, 8)}


def test_storage_and_bid_pricing(market: Market) -> None:
    on_demand = market.search({"machine_id": {"eq": B}, "allocated_storage": 30}, None)["offers"][0]
    assert on_demand["is_bid"] is False
    assert on_demand["dph_total"] == pytest.approx(0.1 + 0.1 * 30 / 30 / 24, abs=1e-6)
    for kind in ("bid", "interruptible"):
        bid = market.search({"machine_id": {"eq": B}, "allocated_storage": 30, "type": kind}, None)["offers"][0]
        assert bid["is_bid"] is True
        assert bid["dph_total"] == pytest.approx(0.05 + 0.1 * 30 / 30 / 24, abs=1e-6)
    for kind in ("on-demand", "ondemand"):
        same = market.search({"machine_id": {"eq": B}, "allocated_storage": 30, "type": kind}, None)["offers"][0]
        assert same["dph_total"] == on_demand["dph_total"]
    cheap = market.search({"dph_total": {"lt": 0.2}}, None)["offers"]
    assert {o["machine_id"] for o in cheap} == {B}


def test_order_and_limit(market: Market) -> None:
    asc = market.search({"order": [["dph_total", "asc"]], "limit": 100}, None)["offers"]
    prices = [o["dph_total"] for o in asc]
    assert prices == sorted(prices) and len(asc) == 10
    desc = market.search({"order": [["num_gpus", "desc"], ["dph_total", "asc"]], "limit": 3}, None)["offers"]
    assert [(o["machine_id"], o["num_gpus"]) for o in desc] == [(A, 8), (A, 4), (C, 4)]
    assert [o["rn"] for o in desc] == [1, 2, 3]


def test_default_limit_is_documented() -> None:
    big = Market("default", seed=0, clock=Clock(scale=0))
    assert len(big.search({}, None)["offers"]) == DEFAULT_LIMIT == 64
    assert len(big.search({"limit": "5"}, None)["offers"]) == 5


@pytest.mark.parametrize(("query", "needle"), [
    ({"no_such_field": {"eq": 1}}, "no_such_field is not a valid search key"),
    ({"num_gpus": {"approx": 1}}, "operator 'approx' is unknown"),
    ({"num_gpus": {"eq": "four"}}, "num_gpus: 'four' is not a number"),
    ({"type": "spot"}, "type: 'spot' is unknown"),
    ({"order": [["num_gpus", "sideways"]]}, "direction 'sideways'"),
    ({"num_gpus": {"gt": None}}, "needs a value"),
])
def test_bad_queries_are_400_naming_the_problem(market: Market, query: dict[str, Any], needle: str) -> None:
    with pytest.raises(MarketError) as info:
        market.search(query, None)
    assert info.value.status == 400
    assert needle in info.value.body["msg"]  # type: ignore[index]


def test_rented_hides_machines_the_caller_already_rents(market: Market) -> None:
    me = market.authenticate(market.default_user.api_key)
    assert me is not None
    other = market.authenticate(market.add_user(credit=10).api_key)
    market.create_instance(me, offer_id(D, 1), {"image": "img"})
    assert D in machines_of(market, {"rented": {"eq": False}})  # anonymous: nobody rents anything
    mine = {o["machine_id"] for o in market.search({"rented": {"eq": False}}, me)["offers"]}
    theirs = {o["machine_id"] for o in market.search({"rented": {"eq": False}}, other)["offers"]}
    assert D not in mine and D in theirs
    flagged = market.search({"machine_id": {"eq": D}}, me)["offers"]
    assert flagged and all(o["rented"] is True for o in flagged)
