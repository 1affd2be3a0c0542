"""VastNodeProvider against an in-memory Vast: the snapshot, tags, lifecycle rules, renting and teardown.

The fake client (tests/support/fake_vast_client.py) checks on every call that the provider's state lock is free, so
any API call made under the lock fails the test that provokes it. Time is a manual clock; nothing sleeps.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Any

import pytest
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import (
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)
from support.fake_vast_client import (
    CLUSTER,
    HEAD_TAGS,
    NODE_CONFIG,
    PROVIDER,
    SUBNET,
    WORKER_TAGS,
    FakeVastClient,
    make_provider,
    offer,
    worker_label,
)

from skyward_ray.emulator.testing import ManualClock
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.provider.tags import (
    TAG_OVERLAY_IP,
    TAG_OVERLAY_SUBNET,
    TAG_PHYSICAL_CLUSTER,
    TAG_RENTAL,
    decode_label,
    encode_label,
)
from skyward_ray.vast.errors import NotFoundError, OfferGoneError, ServerError, VastError
from skyward_ray.vast.models import CreatedInstance, Instance, Overlay, tolerant_instance

# --- the snapshot ---------------------------------------------------------------------------------------------------


def test_one_list_serves_every_getter_and_filters_foreign_instances(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    fake.add_instance(12, encode_label("other-cluster", WORKER_TAGS))
    fake.add_instance(13, "someone's own label")
    fake.add_instance(14, None)
    fake.add_instance(15, encode_label(CLUSTER, HEAD_TAGS))
    provider = make_provider(fake, clock)
    assert sorted(provider.non_terminated_nodes({})) == ["11", "15"]
    assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "head"}) == ["15"]
    for node_id in ("11", "15"):
        assert provider.node_tags(node_id)[TAG_RAY_CLUSTER_NAME] == CLUSTER
        assert provider.is_running(node_id)
        assert not provider.is_terminated(node_id)
        assert provider.external_ip(node_id) == "198.51.100.4"
        assert provider.internal_ip(node_id) == "10.7.0.5"
    assert [name for name, _ in fake.calls] == ["list_instances"]


def test_list_is_refreshed_at_most_once_per_ttl(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    provider = make_provider(fake, clock, cache_ttl_s=4.0)
    for _ in range(5):
        provider.non_terminated_nodes({})
    clock.advance(3.9)
    provider.non_terminated_nodes({})
    assert fake.count("list_instances") == 1
    clock.advance(0.2)
    provider.non_terminated_nodes({})
    assert fake.count("list_instances") == 2


def test_concurrent_refreshes_share_one_list(fake: FakeVastClient, clock: ManualClock) -> None:
    release = threading.Event()
    original = fake.list_instances

    def slow_list(select_filters: Any = None) -> list[Instance]:
        release.wait(5)
        return original()

    fake.list_instances = slow_list  # type: ignore[method-assign]
    provider = make_provider(fake, clock)
    threads = [threading.Thread(target=provider.non_terminated_nodes, args=({},)) for _ in range(8)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(5)
    assert fake.count("list_instances") == 1


def test_a_node_missing_from_the_snapshot_costs_one_get_at_most(fake: FakeVastClient, clock: ManualClock) -> None:
    provider = make_provider(fake, clock)
    provider.non_terminated_nodes({})
    fake.add_instance(21, worker_label())  # appeared after the list (another process rented it)
    for _ in range(3):
        assert provider.node_tags("21")[TAG_RAY_USER_NODE_TYPE] == "gpu"
        assert provider.is_running("21")
    for _ in range(3):
        assert provider.is_terminated("999")  # unknown id: one GET says it does not exist
        assert provider.node_tags("999") == {}
    assert fake.count("get_instance") == 2


def test_list_failure_serves_the_stale_snapshot(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    provider = make_provider(fake, clock)
    assert provider.non_terminated_nodes({}) == ["11"]

    def broken(select_filters: Any = None) -> list[Instance]:
        raise ServerError("503", status=503)

    fake.list_instances = broken  # type: ignore[method-assign]
    clock.advance(10)
    assert provider.non_terminated_nodes({}) == ["11"]


def test_the_first_list_waits_and_its_failure_is_raised_not_an_empty_cluster(fake: FakeVastClient,
                                                                              clock: ManualClock) -> None:
    """A freshly started monitor (or ray up) that saw "no nodes" would rent a second head or duplicate workers."""
    fake.add_instance(11, worker_label())
    original = fake.list_instances

    def broken(select_filters: Any = None) -> list[Instance]:
        raise ServerError("503", status=503)

    fake.list_instances = broken  # type: ignore[method-assign]
    provider = make_provider(fake, clock)
    with pytest.raises(VastError):
        provider.non_terminated_nodes({})
    fake.list_instances = original  # type: ignore[method-assign]
    clock.advance(10)
    assert provider.non_terminated_nodes({}) == ["11"]


def test_a_tick_never_waits_on_a_list_one_refresher_runs_behind_it(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    provider = VastNodeProvider({**PROVIDER, "cache_ttl_s": 4.0}, CLUSTER, client=fake,  # type: ignore[arg-type]
                                clock=clock)  # threads on: the refresh runs in the background
    fake.provider = provider
    assert provider.non_terminated_nodes({}) == ["11"]  # the first list, in the caller
    listing, release = threading.Event(), threading.Event()
    original = fake.list_instances

    def slow(select_filters: Any = None) -> list[Instance]:
        rows = original()
        listing.set()
        assert release.wait(10)
        return rows

    fake.list_instances = slow  # type: ignore[method-assign]
    fake.add_instance(12, worker_label())
    clock.advance(5)
    try:
        longest = 0.0
        for _ in range(20):  # ticks while the list is stuck
            started = time.perf_counter()
            nodes = provider.non_terminated_nodes({})
            for node_id in nodes:
                provider.node_tags(node_id)
                provider.is_running(node_id)
                provider.internal_ip(node_id)
            longest = max(longest, time.perf_counter() - started)
            assert nodes == ["11"], "the last snapshot is served while the refresh runs"
        assert listing.wait(5)
        assert fake.count("list_instances") == 2, "one refresher at a time"
        assert longest < 0.5, f"a tick waited {longest:.3f} s"
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while sorted(provider.non_terminated_nodes({})) != ["11", "12"]:
        assert time.monotonic() < deadline, "the background refresh never landed"
        time.sleep(0.01)
    provider.close()


def test_a_booting_node_ray_waits_on_is_listed_every_two_seconds_ready_ones_every_ttl(fake: FakeVastClient,
                                                                                      clock: ManualClock) -> None:
    fake.add_instance(11, worker_label(), actual_status="loading", ports=None)
    fake.add_instance(12, worker_label())
    provider = make_provider(fake, clock, cache_ttl_s=4.0)
    provider.non_terminated_nodes({})
    assert not provider.is_running("11")
    fake.instances[11].update(actual_status="running",
                              ports={"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40023"}]})
    clock.advance(1.5)
    assert not provider.is_running("11") and fake.count("list_instances") == 1
    clock.advance(0.6)  # 2.1 s after the last list: Ray's updater polling a booting node gets a fresh look
    assert provider.is_running("11") and fake.count("list_instances") == 2
    clock.advance(2.5)
    assert provider.is_running("12") and provider.is_running("11")
    assert fake.count("list_instances") == 2, "ready nodes wait for the TTL"


def test_a_node_adopted_while_a_list_runs_does_not_vanish_with_that_list(fake: FakeVastClient,
                                                                         clock: ManualClock) -> None:
    provider = make_provider(fake, clock)
    provider.non_terminated_nodes({})
    listing, release = threading.Event(), threading.Event()
    original = fake.list_instances

    def slow(select_filters: Any = None) -> list[Instance]:
        rows = original()  # the server's view when the list began: without node 21
        listing.set()
        assert release.wait(10)
        return rows

    fake.list_instances = slow  # type: ignore[method-assign]
    clock.advance(5)
    refresher = threading.Thread(target=provider.refresh)
    refresher.start()
    assert listing.wait(5)
    clock.advance(1)
    fake.add_instance(21, worker_label())  # rented by the head meanwhile; this process looks it up
    assert provider.node_tags("21")[TAG_RAY_USER_NODE_TYPE] == "gpu"
    release.set()
    refresher.join(5)
    assert "21" in provider.non_terminated_nodes({}), "a list begun before the node existed must not drop it"
    fake.list_instances = original  # type: ignore[method-assign]
    clock.advance(5)
    provider.refresh()
    assert "21" in provider.non_terminated_nodes({})


def test_the_unpaged_list_is_one_call_and_the_paged_one_takes_over_when_it_is_not_served(
        fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    calls: list[str] = []

    def v0_gone() -> list[Instance]:
        calls.append("v0")
        raise NotFoundError("404 Not Found", status=404)  # no Vast error code: the route is gone

    fake.list_instances_v0 = v0_gone  # type: ignore[method-assign]
    provider = make_provider(fake, clock)
    assert provider.non_terminated_nodes({}) == ["11"]
    clock.advance(5)
    provider.non_terminated_nodes({})
    assert calls == ["v0"] and fake.count("list_instances") == 2, "the unpaged list is not asked for again"


def test_a_failing_unpaged_list_serves_the_snapshot_and_is_tried_again(fake: FakeVastClient,
                                                                       clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    provider = make_provider(fake, clock)
    assert provider.non_terminated_nodes({}) == ["11"]
    fake.list_instances_v0 = lambda: (_ for _ in ()).throw(ServerError("503", status=503))  # type: ignore[method-assign]
    clock.advance(5)
    assert provider.non_terminated_nodes({}) == ["11"]
    assert fake.count("list_instances") == 1, "a 5xx is a failure now, not a missing endpoint"
    assert provider.snapshot.list_source == "unpaged"


def test_paged_listing_never_asks_for_the_unpaged_list(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    fake.list_instances_v0 = None  # type: ignore[assignment]
    provider = make_provider(fake, clock, instance_list="paged")
    assert provider.non_terminated_nodes({}) == ["11"]


def test_a_labelled_row_that_did_not_parse_is_a_node_until_terminate_destroys_it(fake: FakeVastClient,
                                                                                 clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    fake.add_instance(12, worker_label())
    original = fake.list_instances
    broken: dict[int, dict[str, Any]] = {12: {"actual_status": {"odd": 1}}}  # row id -> fields that will not parse
    minimal: set[int] = set()

    def tolerant(select_filters: Any = None) -> list[Instance]:
        # What the client does with rows it cannot read whole: drop the fields that fail, or keep id + label only.
        rows = []
        for instance_id, row in fake.instances.items():
            if instance_id in minimal:
                rows.append(Instance(id=instance_id, label=row["label"]))
            elif instance_id in broken:
                rows.append(tolerant_instance({**row, **broken[instance_id]})[0])
            else:
                rows.append(Instance.model_validate(row))
        original()  # counted as a list
        return [row for row in rows if row is not None]

    fake.list_instances = tolerant  # type: ignore[method-assign]
    provider = make_provider(fake, clock, loading_timeout_s=60)
    assert sorted(provider.non_terminated_nodes({})) == ["11", "12"]
    assert provider.node_tags("12")[TAG_RAY_USER_NODE_TYPE] == "gpu"
    assert not provider.is_running("12"), "no status: not ready"
    broken[11] = {"ports": "not a mapping"}  # a node that parsed before keeps its last facts for what fails now
    clock.advance(120)  # past loading_timeout_s: no verdict on a row without its status
    assert sorted(provider.non_terminated_nodes({})) == ["11", "12"]
    assert provider.is_running("11") and provider.external_ip("11") == "198.51.100.4"
    minimal.add(11)  # nothing but id and label: the whole last instance is kept
    clock.advance(10)
    assert sorted(provider.non_terminated_nodes({})) == ["11", "12"] and provider.is_running("11")
    assert fake.count("destroy_instance") == 0
    provider.terminate_nodes(["11", "12"])
    assert 11 not in fake.instances and 12 not in fake.instances


# --- tags -----------------------------------------------------------------------------------------------------------


def test_set_node_tags_is_immediate_and_flushes_coalesced_into_one_label_write(fake: FakeVastClient,
                                                                               clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    provider = make_provider(fake, clock)
    provider.non_terminated_nodes({})
    for status in ("waiting-for-ssh", "syncing-files", "setting-up", "up-to-date"):
        provider.set_node_tags("11", {TAG_RAY_NODE_STATUS: status})
        assert provider.node_tags("11")[TAG_RAY_NODE_STATUS] == status
    assert fake.count("set_label") == 0
    assert provider.flush_tags()
    assert fake.count("set_label") == 1
    assert decode_label(fake.instances[11]["label"])[1][TAG_RAY_NODE_STATUS] == "up-to-date"  # type: ignore[index]


def test_a_new_provider_rebuilds_every_tag_from_vast(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    first = make_provider(fake, clock)
    first.non_terminated_nodes({})
    first.set_node_tags("11", {TAG_RAY_NODE_STATUS: "up-to-date", "ray-runtime-config": "b" * 40})
    first.flush_tags()
    expected = first.node_tags("11")
    second = make_provider(fake, clock)
    assert second.non_terminated_nodes({}) == ["11"]
    assert second.node_tags("11") == expected


def test_an_older_label_never_overwrites_newer_memory(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label())
    provider = make_provider(fake, clock, cache_ttl_s=1.0)
    provider.non_terminated_nodes({})
    provider.set_node_tags("11", {TAG_RAY_NODE_STATUS: "setting-up"})
    clock.advance(2)
    provider.non_terminated_nodes({})  # the label still says uninitialized: the write is pending
    assert provider.node_tags("11")[TAG_RAY_NODE_STATUS] == "setting-up"
    provider.flush_tags()
    # Another process changes the label later: a list after our write shows it, and it wins.
    fake.instances[11]["label"] = worker_label(**{TAG_RAY_NODE_STATUS: "up-to-date"})
    clock.advance(2)
    provider.non_terminated_nodes({})
    assert provider.node_tags("11")[TAG_RAY_NODE_STATUS] == "up-to-date"


# --- lifecycle rules ------------------------------------------------------------------------------------------------


def _wait_for(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_outbid_worker_is_destroyed_and_reported_terminated(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label(), is_bid=True, actual_status="stopped", cur_state="stopped",
                      intended_status="stopped", next_state="stopped")
    provider = make_provider(fake, clock)
    assert provider.non_terminated_nodes({}) == []
    assert provider.is_terminated("11")
    _wait_for(lambda: 11 not in fake.instances, "the destroy")
    assert 1 not in provider.state.avoided_until  # an outbid says nothing about the machine


def test_rebid_policy_raises_the_bid_up_to_max_bid(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label(), is_bid=True, actual_status="stopped", cur_state="stopped",
                      intended_status="stopped", next_state="stopped", min_bid=0.3, dph_total=0.25)
    provider = make_provider(fake, clock, interrupted_policy="rebid", max_bid=0.33, bid_multiplier=1.2)
    assert provider.non_terminated_nodes({}) == ["11"]
    _wait_for(lambda: fake.count("change_bid") == 1, "the rebid")
    assert fake.calls[-1] == ("change_bid", (11, pytest.approx(0.33)))  # 0.3 * 1.2 capped at max_bid


def test_failed_instance_is_destroyed_and_its_machine_avoided(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label(), actual_status="exited", machine_id=77)
    provider = make_provider(fake, clock)
    assert provider.non_terminated_nodes({}) == []
    assert 77 in provider.state.avoided_until
    _wait_for(lambda: 11 not in fake.instances, "the destroy")


def test_stuck_loading_is_ended_after_the_deadline(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label(), actual_status="loading", machine_id=78, ports=None)
    provider = make_provider(fake, clock, loading_timeout_s=300)
    assert provider.non_terminated_nodes({}) == ["11"]
    assert not provider.is_running("11")
    clock.advance(299)
    assert provider.non_terminated_nodes({}) == ["11"]
    clock.advance(5)  # past the deadline and past the snapshot's TTL: the next refresh judges it
    assert provider.non_terminated_nodes({}) == []
    assert 78 in provider.state.avoided_until


def test_node_ray_cannot_ssh_into_is_ended(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label(), machine_id=79)
    provider = make_provider(fake, clock, ssh_timeout_s=120)
    provider.non_terminated_nodes({})
    provider.set_node_tags("11", {TAG_RAY_NODE_STATUS: "waiting-for-ssh"})
    clock.advance(100)
    assert provider.non_terminated_nodes({}) == ["11"]
    clock.advance(30)
    assert provider.non_terminated_nodes({}) == []
    assert 79 in provider.state.avoided_until


def test_local_ipaddrs_counts_only_when_it_holds_an_overlay_address(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.add_instance(11, worker_label(**{TAG_OVERLAY_SUBNET: "10.9.0.0/24"}), local_ipaddrs="10.9.0.3 172.17.0.2")
    fake.add_instance(12, worker_label(**{TAG_OVERLAY_SUBNET: "10.9.0.0/24"}), local_ipaddrs="192.168.0.7 172.17.0.1")
    provider = make_provider(fake, clock)
    provider.non_terminated_nodes({})
    assert provider.internal_ip("11") == "10.9.0.3"
    assert provider.ssh_endpoints("11", use_internal_ip=True)[0] == ("10.9.0.3", 22)
    assert provider.ssh_endpoints("11", use_internal_ip=False)[0] == ("198.51.100.4", 40022)
    assert provider.internal_ip("12") is None, "host-side addresses are not the node's overlay address"
    assert provider.unknown_overlay_subnet("12") == "10.9.0.0/24"


# --- terminating ----------------------------------------------------------------------------------------------------


def test_terminate_nodes_is_one_bulk_call_hides_at_once_and_is_idempotent(fake: FakeVastClient,
                                                                          clock: ManualClock) -> None:
    for instance_id in (11, 12, 13):
        fake.add_instance(instance_id, worker_label())
    provider = make_provider(fake, clock)
    provider.non_terminated_nodes({})
    provider.terminate_nodes(["11", "12"])
    assert fake.calls[-1] == ("destroy_instances", [11, 12])
    assert provider.non_terminated_nodes({}) == ["13"]
    assert provider.is_terminated("11")
    provider.terminate_nodes(["11"])  # gone already: fine, no error
    provider.terminate_node("404")  # never existed: nothing to do


# --- renting --------------------------------------------------------------------------------------------------------


def test_workers_rent_concurrently_on_the_heads_cluster_and_are_visible_at_once(fake: FakeVastClient,
                                                                               clock: ManualClock) -> None:
    fake.offers = [offer(100 + i, 10 + i) for i in range(4)] + [offer(200, 30, cluster_id=8, price=0.1)]
    fake.add_instance(1, encode_label(CLUSTER, {**HEAD_TAGS, TAG_PHYSICAL_CLUSTER: "7", TAG_OVERLAY_SUBNET: SUBNET}))
    provider = make_provider(fake, clock, ssh_public_key="ssh-ed25519 AAAA test")
    created = provider.create_node_with_resources_and_labels(NODE_CONFIG, WORKER_TAGS, 3, {"GPU": 1}, {})
    assert created is not None and len(created) == 3
    assert sorted(provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "worker"})) == sorted(created)
    search = next(arg for name, arg in fake.calls if name == "search_offers")
    assert search["cluster_id"] == {"eq": 7}
    for _, (offer_id, kwargs) in (c for c in fake.calls if c[0] == "create_instance"):
        assert offer_id != 200  # cheaper, but on another physical cluster
        assert kwargs["env"][f"-n {provider.sites.overlay_name}"] == "1"
        assert kwargs["env"]["SKYWARD_OVERLAY_SUBNET"] == SUBNET
        assert kwargs["price"] is not None  # workers default to spot-if-available: a bid
        tags = decode_label(kwargs["label"])[1]  # type: ignore[index]
        assert tags[TAG_RAY_USER_NODE_TYPE] == "gpu" and tags[TAG_RAY_NODE_KIND] == "worker"
        assert "key" not in str(kwargs["env"]).lower()
    assert sorted(fake.ssh_keys_attached) == sorted(int(i) for i in created)


def test_head_picks_the_cluster_for_head_and_workers_and_creates_the_overlay(fake: FakeVastClient,
                                                                           clock: ManualClock) -> None:
    # Cluster 8 is cheaper for one node but has room for two; cluster 7 fits head + 3 workers.
    fake.offers = [offer(100 + i, 10 + i, cluster_id=7, price=0.5) for i in range(4)]
    fake.offers += [offer(200 + i, 20 + i, cluster_id=8, price=0.1) for i in range(2)]
    node_types = {
        "head": {"kind": "head", "node_config": NODE_CONFIG},
        "gpu": {"kind": "worker", "max_workers": 3, "node_config": NODE_CONFIG},
    }
    provider = make_provider(fake, clock, node_types=node_types)
    created = provider.create_node(NODE_CONFIG, HEAD_TAGS, 1)
    assert created is not None and len(created) == 1
    assert ("create_overlay", (7, provider.sites.overlay_name)) in fake.calls
    (head_id,) = created
    tags = provider.node_tags(head_id)
    assert tags[TAG_PHYSICAL_CLUSTER] == "7" and tags[TAG_OVERLAY_SUBNET] == SUBNET
    rent = next(arg for name, arg in fake.calls if name == "create_instance")
    assert rent[1]["price"] is None  # the head is on-demand by default
    assert provider.non_terminated_nodes(HEAD_TAGS) == [head_id]


def test_taken_offer_moves_on_to_the_next_offer(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.offers = [offer(100, 10), offer(101, 11)]
    fake.create_errors = [OfferGoneError("gone", status=404, error_code="no_such_ask")]
    provider = make_provider(fake, clock, use_overlay=False)
    on_demand = {**NODE_CONFIG, "allocation": "on-demand"}  # one search per round
    created = provider.create_node_with_resources_and_labels(on_demand, WORKER_TAGS, 1, {}, {})
    assert created is not None and len(created) == 1
    # The shared answer already holds the next offer (searches are budgeted: 10 per minute).
    assert fake.count("search_offers") == 1 and fake.count("create_instance") == 2


def test_ambiguous_rental_is_not_retried_and_its_ghost_is_destroyed(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.offers = [offer(100, 10)]
    error = ServerError("504 after sending", status=504)
    error.outcome_unknown = True
    fake.create_error = error
    provider = make_provider(fake, clock, use_overlay=False)
    with pytest.raises(NodeLaunchException) as info:
        provider.create_node_with_resources_and_labels(NODE_CONFIG, WORKER_TAGS, 1, {}, {})
    assert info.value.category == "rental-failed"
    assert fake.count("create_instance") == 1
    sent_label = fake.calls[-1][1][1]["label"]
    fake.add_instance(9999, sent_label, actual_status="loading")  # the rental happened after all
    clock.advance(10)
    assert provider.non_terminated_nodes({}) == []
    _wait_for(lambda: 9999 not in fake.instances, "the ghost's destroy")


def test_failed_create_that_names_an_instance_destroys_it(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.offers = [offer(100, 10)]
    fake.add_instance(4242, None, actual_status="stopped")
    error = ServerError("bid too low", status=400)
    error.new_contract = 4242
    fake.create_error = error
    provider = make_provider(fake, clock, use_overlay=False)
    with pytest.raises(NodeLaunchException):
        provider.create_node_with_resources_and_labels(NODE_CONFIG, WORKER_TAGS, 1, {}, {})
    assert ("destroy_instance", 4242) in fake.calls


def test_nothing_fits_raises_node_launch_exception_with_the_explanation(fake: FakeVastClient,
                                                                        clock: ManualClock) -> None:
    fake.offers = [offer(100, 10, price=0.4)]
    provider = make_provider(fake, clock, use_overlay=False, min_reliability=0.999)
    with pytest.raises(NodeLaunchException) as info:
        provider.create_node_with_resources_and_labels(NODE_CONFIG, WORKER_TAGS, 1, {}, {})
    assert info.value.category == "no-placement"
    assert "reliability" in info.value.description
    assert fake.count("create_instance") == 0


def test_max_hourly_cost_counts_live_nodes(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.offers = [offer(100 + i, 10 + i, price=0.4, min_bid=None) for i in range(4)]
    fake.add_instance(1, worker_label(), dph_total=0.5)
    provider = make_provider(fake, clock, use_overlay=False, max_hourly_cost=1.0)
    provider.non_terminated_nodes({})
    created = provider.create_node_with_resources_and_labels(NODE_CONFIG, WORKER_TAGS, 1, {}, {})
    assert created is not None and len(created) == 1  # 0.5 + 0.4 <= 1.0
    with pytest.raises(NodeLaunchException) as info:  # 0.9 + 0.4 > 1.0
        provider.create_node_with_resources_and_labels(NODE_CONFIG, WORKER_TAGS, 1, {}, {})
    assert "max_hourly_cost" in info.value.description


def test_rental_nonces_hide_instances_until_their_rental_returns(fake: FakeVastClient, clock: ManualClock) -> None:
    fake.offers = [offer(100, 10)]
    provider = make_provider(fake, clock, use_overlay=False)
    seen_during_rent: list[list[str]] = []
    original = fake.create_instance

    def create_and_list(offer_id: int, **kwargs: Any) -> CreatedInstance:
        created = original(offer_id, **kwargs)
        clock.advance(10)  # a refresh lands while the PUT is still "in flight"
        seen_during_rent.append(provider.non_terminated_nodes({}))
        return created

    fake.create_instance = create_and_list  # type: ignore[method-assign]
    created = provider.create_node_with_resources_and_labels(NODE_CONFIG, WORKER_TAGS, 1, {}, {})
    assert seen_during_rent == [[]]
    assert provider.non_terminated_nodes({}) == list(created or {})
    assert provider.node_tags(next(iter(created or {})))[TAG_RENTAL]


# --- teardown -------------------------------------------------------------------------------------------------------


def test_cleanup_destroys_labelled_leftovers_and_the_overlay(fake: FakeVastClient, clock: ManualClock) -> None:
    provider = make_provider(fake, clock)
    fake.add_instance(31, worker_label())
    fake.add_instance(32, "not ours")
    fake.overlays = [Overlay(overlay_id=1, name=provider.sites.overlay_name, cluster_id=7, internal_subnet=SUBNET),
                     Overlay(overlay_id=2, name="someone-else", cluster_id=7, internal_subnet="10.1.0.0/24")]
    provider.cleanup_cluster_resources()
    assert set(fake.instances) == {32}
    assert [o.name for o in fake.overlays] == ["someone-else"]


def test_overlay_node_is_running_at_once_and_its_address_is_learned_on_the_node(fake: FakeVastClient,
                                                                                 clock: ManualClock) -> None:
    # Vast lists host-side addresses only: the node is ready as soon as it runs with an SSH endpoint (no wait for an
    # address the API never serves), and the address read on the node goes into the label for every other process.
    fake.add_instance(11, worker_label(**{TAG_OVERLAY_SUBNET: "10.9.0.0/24"}), local_ipaddrs="192.168.0.7 172.17.0.1")
    provider = make_provider(fake, clock, overlay_timeout=60)
    provider.non_terminated_nodes({})
    assert provider.is_running("11") and provider.internal_ip("11") is None  # no clock advance: no fixed wait
    assert provider.unknown_overlay_subnet("11") == "10.9.0.0/24"
    assert provider.learn_node_addresses("11", ["127.0.0.1", "172.17.0.2", "10.9.0.4"]) == "10.9.0.4"
    assert provider.internal_ip("11") == "10.9.0.4" and provider.unknown_overlay_subnet("11") is None
    assert provider.ssh_endpoints("11", use_internal_ip=True)[0] == ("10.9.0.4", 22)
    provider.flush_tags()
    assert fake.count("set_label") == 1
    assert provider.learn_node_addresses("11", ["10.9.0.4"]) == "10.9.0.4"
    provider.flush_tags()
    assert fake.count("set_label") == 1, "an address known already is not written again"
    assert make_provider(fake, clock).internal_ip("11") == "10.9.0.4"  # a fresh process reads it from the label


def test_overlay_search_covers_the_subnet_minus_known_addresses_only_on_the_overlay(
        fake: FakeVastClient, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from skyward_ray.provider import overlay_addresses

    on_overlay = [("lo", ipaddress.IPv4Interface("127.0.0.1/8")), ("eth0", ipaddress.IPv4Interface("10.9.0.1/24"))]
    monkeypatch.setattr(overlay_addresses, "interface_addresses", lambda: on_overlay)
    subnet = {TAG_OVERLAY_SUBNET: "10.9.0.0/24"}
    fake.add_instance(11, worker_label(**subnet), local_ipaddrs="192.168.0.7")
    fake.add_instance(12, worker_label(**subnet, **{TAG_OVERLAY_IP: "10.9.0.2"}), local_ipaddrs="192.168.0.8")
    fake.add_instance(13, worker_label(), local_ipaddrs="192.168.0.9")  # not on an overlay
    provider = make_provider(fake, clock)
    provider.non_terminated_nodes({})
    targets = provider.overlay_search("11")
    assert targets[0] == "10.9.0.3" and len(targets) == 252  # .1 is this process, .2 is node 12
    provider.learn_node_addresses("777", ["10.9.0.3", "127.0.0.1"])  # an instance met on the overlay, unknown here
    assert "10.9.0.3" not in provider.overlay_search("11")
    assert provider.overlay_search("12") == [] and provider.overlay_search("13") == []
    provider.learn_node_addresses("11", ["10.9.0.9"])
    assert provider.overlay_search("11") == []
    # A destroyed node's address may be handed out again: it is searched again; a stranger's claim expires.
    provider.terminate_nodes(["12"])
    fake.add_instance(15, worker_label(**subnet), local_ipaddrs="192.168.0.11")
    clock.advance(121)
    provider.non_terminated_nodes({})
    targets = provider.overlay_search("15")
    assert "10.9.0.2" in targets and "10.9.0.3" in targets and "10.9.0.9" not in targets
    monkeypatch.setattr(overlay_addresses, "interface_addresses", lambda: on_overlay[:1])  # the laptop
    fake.add_instance(14, worker_label(**subnet), local_ipaddrs="192.168.0.10")
    assert provider.overlay_search("14") == []


