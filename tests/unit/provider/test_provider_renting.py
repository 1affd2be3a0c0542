"""Renting within Vast's budgets, in memory: searches shared by the launches of a TTL, no GPU planned twice from a
shared answer, the failure explanation's searches shared too, and an account without overlays failing in one line
with nothing rented. The emulator tests (tests/emulator/test_provider_rate_limits.py) check the same over HTTP with
Vast's documented limits."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from ray.autoscaler.node_launch_exception import NodeLaunchException
from support.fake_vast_client import (
    CLUSTER,
    HEAD_TAGS,
    NODE_CONFIG,
    SUBNET,
    WORKER_TAGS,
    FakeVastClient,
    make_provider,
    offer,
)

from skyward_ray.emulator.testing import ManualClock
from skyward_ray.provider.search_cache import OfferCache, cache_key
from skyward_ray.provider.tags import TAG_OVERLAY_SUBNET, TAG_PHYSICAL_CLUSTER, encode_label
from skyward_ray.vast.errors import AuthError, BadRequestError, OfferGoneError, ServerError
from skyward_ray.vast.models import Offer

ON_DEMAND = {**NODE_CONFIG, "allocation": "on-demand"}  # one search per plan
NODE_TYPES = {
    "head": {"kind": "head", "node_config": NODE_CONFIG},
    "gpu": {"kind": "worker", "max_workers": 3, "node_config": NODE_CONFIG},
}


def with_head(fake: FakeVastClient) -> None:
    fake.add_instance(1, encode_label(CLUSTER, {**HEAD_TAGS, TAG_PHYSICAL_CLUSTER: "7", TAG_OVERLAY_SUBNET: SUBNET}))


# --- the cache alone ------------------------------------------------------------------------------------------------


def test_cache_coalesces_concurrent_searches_and_expires_after_its_ttl(clock: ManualClock) -> None:
    release = threading.Event()
    calls: list[dict[str, Any]] = []

    def search(query: dict[str, Any]) -> list[Offer]:
        calls.append(query)
        release.wait(5)
        return [offer(100, 10)]

    cache = OfferCache(search, ttl_s=30.0, clock=clock)
    query = {"gpu_name": {"eq": "RTX 4090"}, "type": "on-demand", "limit": 100}
    results: list[dict[int, Offer]] = []
    threads = [threading.Thread(target=lambda: results.append(cache.offers([query]))) for _ in range(3)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 1 and [list(r) for r in results] == [[100]] * 3
    # The avoided machines and the limit are no part of the key: the planner rechecks machines on the offers.
    assert cache_key({**query, "machine_id": {"notin": [3]}, "limit": 50}) == cache_key(query)
    cache.offers([{**query, "machine_id": {"notin": [3]}, "limit": 50}])
    assert len(calls) == 1
    clock.advance(30.0)
    cache.offers([query])
    assert len(calls) == 2, "an answer older than the TTL is searched again"


def test_cache_takes_planned_gpus_off_a_machine_and_drops_a_machine_found_gone(clock: ManualClock) -> None:
    # Machine 10 has 4 free GPUs (offers of 1, 2 and 4 GPUs); machine 11 has 1.
    found = [offer(101, 10, num_gpus=1), offer(102, 10, num_gpus=2), offer(104, 10, num_gpus=4), offer(111, 11)]
    cache = OfferCache(lambda query: list(found), ttl_s=30.0, clock=clock)
    query = {"type": "on-demand", "limit": 100}
    cache.offers([query])
    cache.take("n1", 10, 2)  # 2 left on machine 10: the 4-GPU offer goes
    assert sorted(cache.current([query], {})) == [101, 102, 111]
    assert cache.is_dirty([query])
    cache.rented("n1")
    cache.gone(11)
    assert sorted(cache.current([query], {})) == [101, 102]
    # A later answer (after expiry) that was asked while another rental was in flight shows it taken too.
    cache.take("n2", 10, 1)
    clock.advance(31)
    cache.offers([query])
    assert sorted(cache.current([query], {})) == [101, 102, 111], "4 free minus the 1 in flight: 1 and 2 remain"


def test_an_answer_stays_in_use_while_its_scale_up_rents_up_to_three_ttls(clock: ManualClock) -> None:
    calls: list[float] = []

    def search(query: dict[str, Any]) -> list[Offer]:
        calls.append(clock())
        return [offer(100 + i, 10 + i) for i in range(20)]

    cache = OfferCache(search, ttl_s=30.0, clock=clock)
    query = {"type": "on-demand", "limit": 100}
    cache.offers([query])
    cache.take("a", 10, 1, [query])  # a batch planned on it is renting (FakeVastClient's pace: one rental per 4.5 s)
    clock.advance(40)
    cache.offers([query])
    assert len(calls) == 1, "a later batch of the same scale-up plans on the answer its first batch used"
    cache.take("b", 11, 1, [query])
    cache.rented("a")
    clock.advance(45)  # 85 s old, batch b still renting
    cache.offers([query])
    assert len(calls) == 1
    clock.advance(10)  # 95 s: past three TTLs, even while renting
    cache.offers([query])
    assert len(calls) == 2
    cache.released("b")
    clock.advance(31)  # nothing renting on the new answer: the TTL alone
    cache.offers([query])
    assert len(calls) == 3


def test_a_full_answer_to_a_small_limit_does_not_serve_a_larger_one(clock: ManualClock) -> None:
    calls: list[int] = []

    def search(query: dict[str, Any]) -> list[Offer]:
        calls.append(query["limit"])
        return [offer(100 + i, 10 + i) for i in range(min(query["limit"], 5))]

    cache = OfferCache(search, ttl_s=30.0, clock=clock)
    cache.offers([{"type": "bid", "limit": 2}])  # 2 rows of 2: maybe more exist
    cache.offers([{"type": "bid", "limit": 100}])  # searched: the first answer may be cut
    cache.offers([{"type": "bid", "limit": 200}])  # 5 rows of 100: the whole match, serves any limit
    assert calls == [2, 100]


# --- the provider ---------------------------------------------------------------------------------------------------


def test_launches_within_the_ttl_share_one_search_and_never_plan_a_gpu_twice(fake: FakeVastClient,
                                                                             clock: ManualClock) -> None:
    fake.offers = [offer(100 + i, 10 + i, price=0.4 + i / 100) for i in range(8)]
    with_head(fake)
    provider = make_provider(fake, clock, search_ttl_s=20.0)
    batches = [provider.create_node_with_resources_and_labels(ON_DEMAND, WORKER_TAGS, n, {}, {}) for n in (3, 2, 1)]
    assert fake.count("search_offers") == 1, "one scale-up's batches plan on one answer"
    rented = [args[0] for name, args in fake.calls if name == "create_instance"]
    assert sorted(rented) == [100, 101, 102, 103, 104, 105], "each 1-GPU offer rented once, cheapest first"
    assert sum(len(b or {}) for b in batches) == 6
    clock.advance(20.0)
    provider.create_node_with_resources_and_labels(ON_DEMAND, WORKER_TAGS, 1, {}, {})
    assert fake.count("search_offers") == 2, "after the TTL a launch searches again"


def test_concurrent_launches_plan_distinct_gpus_from_one_answer(fake: FakeVastClient, clock: ManualClock,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake.offers = [offer(100 + i, 10 + i) for i in range(10)]
    with_head(fake)
    provider = make_provider(fake, clock)
    # The fake's "state lock is free during API calls" check cannot tell threads apart: with two launches, one may
    # rightly hold the lock to plan while the other is renting.
    fake.provider = None
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    threads = [threading.Thread(target=provider.create_node_with_resources_and_labels,
                                args=(ON_DEMAND, WORKER_TAGS, 5, {}, {})) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    rented = [args[0] for name, args in fake.calls if name == "create_instance"]
    assert sorted(rented) == list(range(100, 110)), "v2's two launcher threads never rent the same GPU twice"
    assert fake.count("search_offers") == 1


def test_a_taken_offer_moves_on_to_the_next_offer_of_the_shared_answer(fake: FakeVastClient,
                                                                       clock: ManualClock) -> None:
    fake.offers = [offer(100, 10), offer(101, 11)]
    fake.create_errors = [OfferGoneError("gone", status=404, error_code="no_such_ask")]
    provider = make_provider(fake, clock, use_overlay=False)
    created = provider.create_node_with_resources_and_labels(ON_DEMAND, WORKER_TAGS, 1, {}, {})
    assert created is not None and len(created) == 1
    assert [args[0] for name, args in fake.calls if name == "create_instance"] == [100, 101]
    assert fake.count("search_offers") == 1, "the rival took machine 10; machine 11 was in the answer already"


def test_a_dirty_answer_that_cannot_place_is_searched_again_once(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.offers = [offer(100, 10)]
    provider = make_provider(fake, clock, use_overlay=False)
    provider.create_node_with_resources_and_labels(ON_DEMAND, WORKER_TAGS, 1, {}, {})
    fake.offers = [offer(100, 10), offer(101, 11)]  # a machine came free since the answer
    created = provider.create_node_with_resources_and_labels(ON_DEMAND, WORKER_TAGS, 1, {}, {})
    assert created is not None
    assert fake.count("search_offers") == 2 and provider.offer_cache.stats.refreshed == 1


def test_a_failing_launch_retried_by_the_autoscaler_costs_no_search_within_the_ttl(fake: FakeVastClient,
                                                                                   clock: ManualClock) -> None:
    fake.offers = [offer(100, 10, price=0.4)]
    provider = make_provider(fake, clock, use_overlay=False, min_reliability=0.999)
    for _ in range(5):
        with pytest.raises(NodeLaunchException) as info:
            provider.create_node_with_resources_and_labels(ON_DEMAND, WORKER_TAGS, 1, {}, {})
        assert info.value.category == "no-placement" and "reliability" in info.value.description
        clock.advance(5.0)
    # The strict search and the broad one behind the explanation, once each in 25 s of retries.
    assert fake.count("search_offers") == 2


def test_accepted_nodes_are_visible_before_their_batch_ends(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.offers = [offer(100 + i, 10 + i) for i in range(3)]
    with_head(fake)
    provider = make_provider(fake, clock)
    seen: list[int] = []
    original = fake.create_instance

    def create_and_look(offer_id: int, **kwargs: Any) -> Any:
        seen.append(len(provider.non_terminated_nodes({"ray-node-type": "worker"})))
        return original(offer_id, **kwargs)

    fake.create_instance = create_and_look  # type: ignore[method-assign]
    provider.config = provider.config.model_copy(update={"rent_concurrency": 1})
    provider.create_node_with_resources_and_labels(ON_DEMAND, WORKER_TAGS, 3, {}, {})
    assert seen == [0, 1, 2], "Ray's v2 autoscaler sees each node as Vast accepts it, not after the batch"


# --- overlays unavailable -------------------------------------------------------------------------------------------


class NoOverlays(FakeVastClient):
    """An account Vast refuses overlays to (the shape is inferred: the endpoints are undocumented)."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse

    def list_overlays(self) -> list[Any]:
        self._record("list_overlays")
        if self.refuse == "list":
            raise AuthError("GET /api/v0/overlay/: HTTP 403: overlays are not enabled for this account", status=403,
                            endpoint="GET /api/v0/overlay/")
        return []

    def create_overlay(self, cluster_id: int, name: str) -> None:
        self._record("create_overlay", (cluster_id, name))
        raise BadRequestError("POST /api/v0/overlay/: HTTP 400 invalid_request: overlays unavailable", status=400,
                              endpoint="POST /api/v0/overlay/")


@pytest.mark.parametrize("refuse", ["list", "create"])
def test_no_overlays_fails_ray_up_in_one_line_with_nothing_rented(refuse: str, clock: ManualClock) -> None:
    fake = NoOverlays(refuse)
    fake.offers = [offer(100 + i, 10 + i) for i in range(4)]
    provider = make_provider(fake, clock, node_types=NODE_TYPES)
    with pytest.raises(NodeLaunchException) as info:
        provider.create_node(NODE_CONFIG, dict(HEAD_TAGS), 1)
    message = info.value.description
    assert info.value.category == "overlay-unavailable"
    assert "\n" not in message and "/api/v0/overlay/" in message and "HTTP 4" in message
    assert "use_overlay: false" in message and "nothing was rented" in message
    assert fake.count("create_instance") == 0
    with provider._lock:
        assert provider.state.committed_per_hour() == 0.0, "the head's reservation was released"
    # ray down on such an account: nothing to delete, no error.
    provider.cleanup_cluster_resources()


def test_single_node_clusters_need_no_overlay(clock: ManualClock) -> None:
    fake = NoOverlays("list")
    fake.offers = [offer(100, 10)]
    provider = make_provider(fake, clock, node_types=NODE_TYPES, use_overlay=False)
    created = provider.create_node(NODE_CONFIG, dict(HEAD_TAGS), 1)
    assert created is not None and len(created) == 1
    assert fake.count("list_overlays") == 0
    provider.terminate_nodes(list(created))
    provider.cleanup_cluster_resources()


def test_a_failing_overlay_call_is_not_mistaken_for_missing_overlays(clock: ManualClock) -> None:
    fake = NoOverlays("none")
    fake.create_overlay = lambda cluster_id, name: (_ for _ in ()).throw(  # type: ignore[method-assign]
        ServerError("POST /api/v0/overlay/: HTTP 502", status=502, endpoint="POST /api/v0/overlay/"))
    fake.offers = [offer(100 + i, 10 + i) for i in range(4)]
    provider = make_provider(fake, clock, node_types=NODE_TYPES)
    with pytest.raises(NodeLaunchException) as info:
        provider.create_node(NODE_CONFIG, dict(HEAD_TAGS), 1)
    assert info.value.category == "vast-error" and "use_overlay" not in info.value.description
