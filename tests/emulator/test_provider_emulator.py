"""VastNodeProvider against the running emulator (records-only hosts), driven the way Ray drives it.

The call patterns are Ray's (autoscaler v2 and ``ray up``/``ray down``): ``ray up`` creates the head with
``create_node`` and polls ``non_terminated_nodes(head tags)``, its updater writes the head's status tags; the head's
own provider (a new instance, as in the head's monitor) launches workers with
``create_node_with_resources_and_labels`` from two launcher threads, and every reconcile lists
``non_terminated_nodes({})`` then ``node_tags``/``is_running`` per node; ``ray down`` terminates through
``nodes_for_teardown`` until nothing is left, then calls ``cleanup_cluster_resources``. What happened on the market is
checked through the emulator's own state, not through the provider.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import (
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
)
from support.ray_launch_tags import head_tags, request_id, worker_tags

from skyward_ray.demo import CLUSTER_CONFIG
from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import running_emulator, wait_until
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.provider.tags import TAG_RENTAL, decode_label, is_cluster_label

CLUSTER = "emu-test"
HEAD_CONFIG = {"accelerator": "RTX 4090"}
WORKER_CONFIG = {"accelerator": "RTX 4090", "allocation": "spot"}
NODE_TYPES = {
    "head": {"kind": "head", "node_config": HEAD_CONFIG},
    "gpu": {"kind": "worker", "min_workers": 0, "max_workers": 3, "node_config": WORKER_CONFIG},
}
HEAD_TAGS = head_tags(CLUSTER)


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with running_emulator(boot_delay_s=0.3, seed=3) as emu:
        yield emu


@pytest.fixture
def provider_config(emulator: EmulatorServer, tmp_path: Path) -> dict[str, Any]:
    key_file = tmp_path / "vast_api_key"
    key_file.write_text(emulator.api_key + "\n")
    key_file.chmod(0o600)
    return {
        "type": "external", "module": "skyward_ray.provider.VastNodeProvider", "api_url": emulator.url,
        "api_key_file": str(key_file), "cache_ttl_s": 0.2, "tag_flush_delay_s": 0.05, "ssh_proxy": False,
        "min_reliability": 0.9, "node_types": NODE_TYPES,
    }


class Providers:
    """Every provider a test makes, closed at the end (their flush threads and pools stop)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.made: list[VastNodeProvider] = []

    def new(self, **overrides: Any) -> VastNodeProvider:
        provider = VastNodeProvider({**self.config, **overrides}, CLUSTER)
        self.made.append(provider)
        return provider


@pytest.fixture
def providers(provider_config: dict[str, Any]) -> Iterator[Providers]:
    made = Providers(provider_config)
    yield made
    for provider in made.made:
        provider.close()


def state(emulator: EmulatorServer) -> dict[str, Any]:
    return httpx.get(f"{emulator.admin_url}/state/", timeout=10).json()


def our_instances(emulator: EmulatorServer) -> list[dict[str, Any]]:
    return [i for i in state(emulator)["instances"] if is_cluster_label(i.get("label"), CLUSTER)]


def reconcile(provider: VastNodeProvider) -> dict[str, tuple[dict[str, str], bool]]:
    """One v2 reconcile's provider calls: the list, then tags and running state per node."""
    return {node_id: (provider.node_tags(node_id), provider.is_running(node_id))
            for node_id in provider.non_terminated_nodes({})}


def ray_up_head(provider: VastNodeProvider) -> str:
    """What ``ray up`` does with the provider for a new head, and its updater's tag writes."""
    assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "head"}) == []
    provider.create_node(HEAD_CONFIG, dict(HEAD_TAGS), 1)
    heads = wait_until(lambda: provider.non_terminated_nodes(HEAD_TAGS), timeout_s=10, what="the head listed")
    assert len(heads) == 1
    head = heads[0]
    wait_until(lambda: provider.is_running(head), timeout_s=10, what="the head running")
    for status in ("waiting-for-ssh", "syncing-files", "setting-up", "up-to-date"):
        provider.set_node_tags(head, {TAG_RAY_NODE_STATUS: status})
    assert provider.flush_tags()
    return head


def launch_workers(provider: VastNodeProvider, count: int) -> list[str]:
    """v2's NodeLauncherPool: one create call per node, from concurrent threads."""
    results: list[dict[str, Any] | None] = []
    errors: list[BaseException] = []

    def launch(index: int) -> None:
        try:
            results.append(provider.create_node_with_resources_and_labels(
                WORKER_CONFIG, worker_tags(CLUSTER, request_id(index)), 1, {"GPU": 1}, {}))
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return [node_id for result in results for node_id in (result or {})]


def test_head_and_workers_share_one_physical_cluster_and_one_overlay(emulator: EmulatorServer,
                                                                     providers: Providers) -> None:
    laptop = providers.new()
    head = ray_up_head(laptop)

    monitor = providers.new()  # the head's autoscaler: a fresh process, state from Vast alone
    assert monitor.node_tags(head)[TAG_RAY_NODE_STATUS] == "up-to-date"
    workers = launch_workers(monitor, 2)
    assert len(workers) == 2
    wait_until(lambda: all(running for _, running in reconcile(monitor).values()) and len(reconcile(monitor)) == 3,
               timeout_s=15, what="head and 2 workers running")

    dump = state(emulator)
    ours = [i for i in dump["instances"] if is_cluster_label(i.get("label"), CLUSTER)]
    assert sorted(str(i["id"]) for i in ours) == sorted([head, *workers])
    assert len({i["cluster_id"] for i in ours}) == 1 and ours[0]["cluster_id"] is not None
    overlays = [o for o in dump["overlays"] if o["name"] == monitor.sites.overlay_name]
    assert len(overlays) == 1 and overlays[0]["cluster_id"] == ours[0]["cluster_id"]
    assert sorted(overlays[0]["members"]) == sorted([head, *workers])
    # Vast lists host-side addresses only: every node is running (ready for SSH) with no overlay address from the
    # API. What the SSH runner reads on each node at first contact goes into its label for every process.
    members = overlays[0]["members"]
    rows = {str(i["id"]): i for i in ours}
    for node_id in (head, *workers):
        assert monitor.internal_ip(node_id) is None
        assert members[node_id] not in rows[node_id]["local_ipaddrs"]
        assert monitor.learn_node_addresses(node_id, ["127.0.0.1", members[node_id], "172.17.0.2"]) == members[node_id]
        assert monitor.internal_ip(node_id) == members[node_id]
    assert monitor.flush_tags()
    fresh = providers.new()
    assert {node_id: fresh.internal_ip(node_id) for node_id in (head, *workers)} == members
    # Workers are bids (allocation spot), the head is on-demand.
    by_id = {str(i["id"]): i for i in ours}
    assert not by_id[head]["is_bid"] and all(by_id[w]["is_bid"] for w in workers)


def test_tags_survive_a_new_provider_instance(emulator: EmulatorServer, providers: Providers) -> None:
    laptop = providers.new()
    head = ray_up_head(laptop)
    monitor = providers.new()
    (worker,) = launch_workers(monitor, 1)
    monitor.set_node_tags(worker, {TAG_RAY_NODE_STATUS: "up-to-date", "ray-runtime-config": "3" * 40})
    assert monitor.flush_tags()
    expected = {node_id: monitor.node_tags(node_id) for node_id in (head, worker)}

    restarted = providers.new()  # the monitor restarted: nothing in memory
    assert sorted(restarted.non_terminated_nodes({})) == sorted(expected)
    for node_id, tags in expected.items():
        assert restarted.node_tags(node_id) == tags


def test_outbid_worker_is_replaced(emulator: EmulatorServer, providers: Providers) -> None:
    laptop = providers.new()
    ray_up_head(laptop)
    monitor = providers.new()
    (worker,) = launch_workers(monitor, 1)
    wait_until(lambda: monitor.is_running(worker), timeout_s=10, what="the worker running")

    response = httpx.post(f"{emulator.admin_url}/instances/{worker}/outbid/", json={}, timeout=10)
    assert response.status_code == 200, response.text
    wait_until(lambda: worker not in reconcile(monitor), timeout_s=10, what="the outbid worker dropped")
    assert monitor.is_terminated(worker)
    wait_until(lambda: all(str(i["id"]) != worker for i in our_instances(emulator)), timeout_s=10,
               what="the outbid worker destroyed on the market")
    # The autoscaler asks for a replacement: it rents on the same physical cluster.
    (replacement,) = launch_workers(monitor, 1)
    assert replacement != worker
    assert len({i["cluster_id"] for i in our_instances(emulator)}) == 1


def test_stuck_host_is_ended_and_its_machine_avoided(emulator: EmulatorServer, providers: Providers) -> None:
    laptop = providers.new()
    ray_up_head(laptop)
    monitor = providers.new(loading_timeout_s=1.5)
    (stuck,) = launch_workers(monitor, 1)
    stuck_machine = next(i["machine_id"] for i in our_instances(emulator) if str(i["id"]) == stuck)
    response = httpx.post(f"{emulator.admin_url}/instances/{stuck}/fail/", json={"kind": "stuck_loading"},
                          timeout=10)
    assert response.status_code == 200, response.text

    wait_until(lambda: stuck not in reconcile(monitor), timeout_s=15, what="the stuck worker ended")
    wait_until(lambda: all(str(i["id"]) != stuck for i in our_instances(emulator)), timeout_s=10,
               what="the stuck worker destroyed")
    replacements = launch_workers(monitor, 2)
    machines = {i["machine_id"] for i in our_instances(emulator) if str(i["id"]) in replacements}
    assert stuck_machine not in machines


def test_ghost_of_a_lost_rental_response_is_swept(emulator: EmulatorServer, providers: Providers,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    laptop = providers.new()
    ray_up_head(laptop)
    monitor = providers.new()
    before = {i["id"] for i in our_instances(emulator)}
    faults = f"{emulator.admin_url}/faults/"
    rent = monitor.client.create_instance

    def rent_with_lost_response(*args: Any, **kwargs: Any) -> Any:
        # Only the rental loses its response (the search before it must work): the PUT takes effect, the answer is
        # a 504, and the client must not send it again.
        httpx.put(faults, json={"lost_response_rate": 1.0}, timeout=10).raise_for_status()
        try:
            return rent(*args, **kwargs)
        finally:
            httpx.put(faults, json={"lost_response_rate": 0.0}, timeout=10).raise_for_status()

    monkeypatch.setattr(monitor.client, "create_instance", rent_with_lost_response)
    httpx.delete(f"{emulator.admin_url}/counters/", timeout=10).raise_for_status()
    with pytest.raises(NodeLaunchException):
        monitor.create_node_with_resources_and_labels(WORKER_CONFIG, worker_tags(CLUSTER, request_id(1)), 1,
                                                      {"GPU": 1}, {})
    counters = httpx.get(f"{emulator.admin_url}/counters/", timeout=10).json()["requests"]
    assert counters["PUT /api/v0/asks/{id}/"] == 1, "a rental with an unknown outcome must not be sent again"
    ledger = state(emulator)["ledger"]
    ghosts = [e for e in ledger if e["instance_id"] not in before and is_cluster_label(e["label"], CLUSTER)]
    assert len(ghosts) == 1, "the rental took effect although its response was lost"
    ghost = ghosts[0]["instance_id"]
    assert decode_label(ghosts[0]["label"])[1][TAG_RENTAL]  # type: ignore[index]

    wait_until(lambda: reconcile(monitor) is not None and all(i["id"] != ghost for i in our_instances(emulator)),
               timeout_s=10, what="the ghost destroyed")
    assert str(ghost) not in monitor.non_terminated_nodes({})
    ledger = {e["instance_id"]: e for e in state(emulator)["ledger"]}
    assert ledger[ghost]["destroyed_at"] is not None


def test_ray_down_leaves_no_instance_and_no_overlay(emulator: EmulatorServer, providers: Providers) -> None:
    laptop = providers.new()
    ray_up_head(laptop)
    monitor = providers.new()
    launch_workers(monitor, 2)
    assert len(our_instances(emulator)) == 3

    down = providers.new()  # ray down runs in a fresh process on the laptop
    for _ in range(20):  # ray down: terminate until nothing is left, then clean up
        remaining = down.nodes_for_teardown({TAG_RAY_NODE_KIND: "worker"}) + down.nodes_for_teardown(
            {TAG_RAY_NODE_KIND: "head"})
        if not remaining:
            break
        down.terminate_nodes(remaining)
    down.cleanup_cluster_resources()

    dump = state(emulator)
    assert [i for i in dump["instances"] if is_cluster_label(i.get("label"), CLUSTER)] == []
    assert dump["instances"] == []
    assert dump["overlays"] == []
    assert all(entry["destroyed_at"] is not None for entry in dump["ledger"])


def test_rays_own_v2_adapter_launches_lists_and_terminates_workers(emulator: EmulatorServer, providers: Providers,
                                                                   tmp_path: Path) -> None:
    """Ray's NodeProviderAdapter (what the v2 autoscaler wraps a v1 provider in) drives the provider itself."""
    import yaml
    from ray.autoscaler.v2.instance_manager.config import FileConfigReader
    from ray.autoscaler.v2.instance_manager.node_provider import NodeProviderAdapter

    head = ray_up_head(providers.new())
    config = yaml.safe_load(CLUSTER_CONFIG.read_text())
    config["cluster_name"] = CLUSTER
    config["provider"].update({k: providers.config[k] for k in ("api_url", "api_key_file", "cache_ttl_s",
                                                                "tag_flush_delay_s", "min_reliability")})
    config["available_node_types"]["head"]["node_config"] = HEAD_CONFIG
    config["available_node_types"]["rtx4090"]["node_config"] = WORKER_CONFIG
    path = tmp_path / "autoscaling.yaml"
    path.write_text(yaml.safe_dump(config))
    reader = FileConfigReader(str(path))
    provider = providers.new(**{k: v for k, v in config["provider"].items() if k in providers.config})
    adapter = NodeProviderAdapter(provider, reader)

    adapter.launch({"rtx4090": 2}, request_id="req-1")
    instances = wait_until(
        lambda: (found := adapter.get_non_terminated()) and len(found) == 3 and all(
            i.is_running for i in found.values()) and found,
        timeout_s=20, what="the adapter listing head + 2 running workers")
    assert not adapter.poll_errors()
    workers = [i for i in instances.values() if i.node_type == "rtx4090"]
    assert len(workers) == 2 and all(i.request_id == "req-1" for i in workers)
    assert instances[head].node_type == "head"

    adapter.terminate([workers[0].cloud_instance_id], request_id="req-2")
    wait_until(lambda: workers[0].cloud_instance_id not in adapter.get_non_terminated(), timeout_s=10,
               what="the terminated worker gone from the adapter's view")
    wait_until(lambda: all(str(i["id"]) != workers[0].cloud_instance_id for i in our_instances(emulator)),
               timeout_s=10, what="the worker destroyed on the market")
    assert not adapter.poll_errors()


def test_bootstrap_registers_a_generated_key_once_and_workers_get_it(emulator: EmulatorServer, providers: Providers,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from ray.autoscaler._private.util import prepare_config

    from skyward_ray.provider.bootstrap import bootstrap_config
    from skyward_ray.vast.client import VastClient

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VAST_URL", emulator.url)
    monkeypatch.setenv("VAST_API_KEY", emulator.api_key)
    raw = yaml.safe_load(CLUSTER_CONFIG.read_text())
    raw["provider"].pop("api_url", None)  # taken from VAST_URL, as on a laptop pointed at the emulator
    first = bootstrap_config(prepare_config(raw))
    second = bootstrap_config(prepare_config(raw))
    assert first["provider"]["api_url"] == emulator.url
    assert Path(first["auth"]["ssh_private_key"]).is_file()  # generated (ssh-keygen), then reused
    public_key = first["provider"]["ssh_public_key"]
    assert second["provider"]["ssh_public_key"] == public_key
    with VastClient(api_key=emulator.api_key, base_url=emulator.url) as client:
        account_keys = [key.public_key for key in client.list_ssh_keys()]
        assert account_keys == [public_key]  # registered once for two ray up runs

        ray_up_head(providers.new())
        monitor = providers.new(ssh_public_key=public_key)
        (worker,) = launch_workers(monitor, 1)
        keys = [key.public_key for key in client.list_instance_ssh_keys(int(worker))]
        assert public_key in keys
