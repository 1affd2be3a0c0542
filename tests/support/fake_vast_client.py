"""A fake of our Vast client object (not of the HTTP API) for the provider's unit tests: instances, offers and
overlays in memory, every call recorded, and a check on every call that the provider's state lock is free, so an API
call made under the lock fails the test that provokes it. Also the provider and labels those tests build on."""

from __future__ import annotations

import threading
from typing import Any

from ray.autoscaler.tags import TAG_RAY_LAUNCH_CONFIG, TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS, TAG_RAY_USER_NODE_TYPE

from skyward_ray.emulator.testing import ManualClock
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.provider.tags import encode_label
from skyward_ray.vast.models import CreatedInstance, Instance, Offer, Overlay

CLUSTER = "unit"
PROVIDER = {"type": "external", "module": "skyward_ray.provider.VastNodeProvider"}
WORKER_TAGS = {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: "gpu", TAG_RAY_NODE_STATUS: "uninitialized",
               TAG_RAY_LAUNCH_CONFIG: "a" * 40}
HEAD_TAGS = {TAG_RAY_NODE_KIND: "head", TAG_RAY_USER_NODE_TYPE: "head", TAG_RAY_NODE_STATUS: "uninitialized"}
NODE_CONFIG = {"accelerator": "RTX 4090"}
SUBNET = "10.7.0.0/24"


class FakeVastClient:
    """Enough of VastClient for the provider, in memory (our client object, not the wire), counting calls and checking
    on every call that the provider's state lock is free."""

    base_url = "http://vast.invalid"

    def __init__(self) -> None:
        self.instances: dict[int, dict[str, Any]] = {}
        self.offers: list[Offer] = []
        self.overlays: list[Overlay] = []
        self.calls: list[tuple[str, Any]] = []
        self.provider: VastNodeProvider | None = None
        self.next_id = 5000
        self.create_error: Exception | None = None
        self.create_errors: list[Exception] = []
        self.ssh_keys_attached: list[int] = []
        self.lock = threading.Lock()

    def _record(self, name: str, arg: Any = None) -> None:
        if self.provider is not None:
            assert not self.provider._lock.locked(), f"{name} called while the provider's state lock is held"
        with self.lock:
            self.calls.append((name, arg))

    def count(self, name: str) -> int:
        return sum(1 for call, _ in self.calls if call == name)

    def add_instance(self, instance_id: int, label: str | None, **fields: Any) -> None:
        row = {"id": instance_id, "label": label, "actual_status": "running", "machine_id": instance_id // 10,
               "public_ipaddr": "198.51.100.4", "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40022"}]},
               "ssh_host": "203.0.113.9", "ssh_port": 20000 + instance_id % 1000,
               "local_ipaddrs": "10.7.0.5 172.17.0.2", "dph_total": 0.4}
        row.update(fields)
        self.instances[instance_id] = row

    # --- the client API the provider uses ---
    def list_instances(self, select_filters: Any = None) -> list[Instance]:
        self._record("list_instances")
        return [Instance.model_validate(row) for row in self.instances.values()]

    def list_instances_v0(self) -> list[Instance]:
        """The unpaged list: the same rows as ``list_instances`` (counted under that name; patch either)."""
        return self.list_instances()

    def get_instance(self, instance_id: int) -> Instance | None:
        self._record("get_instance", instance_id)
        row = self.instances.get(instance_id)
        return Instance.model_validate(row) if row else None

    def set_label(self, instance_id: int, label: str) -> None:
        self._record("set_label", (instance_id, label))
        self.instances[instance_id]["label"] = label

    def destroy_instance(self, instance_id: int) -> bool:
        self._record("destroy_instance", instance_id)
        return self.instances.pop(instance_id, None) is not None

    def destroy_instances(self, ids: list[int]) -> None:
        self._record("destroy_instances", list(ids))
        for instance_id in ids:
            self.instances.pop(instance_id, None)

    def change_bid(self, instance_id: int, price: float) -> None:
        self._record("change_bid", (instance_id, price))

    def search_offers(self, query: dict[str, Any]) -> list[Offer]:
        self._record("search_offers", query)
        return list(self.offers)

    def create_instance(self, offer_id: int, **kwargs: Any) -> CreatedInstance:
        self._record("create_instance", (offer_id, kwargs))
        if self.create_errors:
            raise self.create_errors.pop(0)
        if self.create_error is not None:
            raise self.create_error
        with self.lock:
            self.next_id += 1
            new_id = self.next_id
        offer = next(o for o in self.offers if o.id == offer_id)
        self.add_instance(new_id, kwargs["label"], actual_status="loading", machine_id=offer.machine_id, ports=None)
        return CreatedInstance(new_contract=new_id)

    def attach_ssh_key(self, instance_id: int, public_key: str) -> None:
        self._record("attach_ssh_key", instance_id)
        self.ssh_keys_attached.append(instance_id)

    def list_overlays(self) -> list[Overlay]:
        self._record("list_overlays")
        return list(self.overlays)

    def create_overlay(self, cluster_id: int, name: str) -> None:
        self._record("create_overlay", (cluster_id, name))
        self.overlays.append(Overlay(overlay_id=len(self.overlays) + 1, name=name, cluster_id=cluster_id,
                                     internal_subnet=SUBNET))

    def delete_overlay(self, overlay_id: int | None = None, name: str | None = None) -> bool:
        self._record("delete_overlay", name)
        before = len(self.overlays)
        self.overlays = [o for o in self.overlays if o.name != name]
        return len(self.overlays) < before


def offer(offer_id: int, machine_id: int, *, cluster_id: int | None = 7, price: float = 0.4,
          min_bid: float | None = 0.2, num_gpus: int = 1) -> Offer:
    """A plausible RTX 4090 offer on physical cluster 7 unless told otherwise."""
    return Offer.model_validate({
        "id": offer_id, "machine_id": machine_id, "cluster_id": cluster_id, "gpu_name": "RTX 4090",
        "num_gpus": num_gpus, "dph_total": price, "min_bid": min_bid, "reliability2": 0.99,
        "verification": "verified", "cuda_max_good": 12.4, "geolocation": "California, US", "rentable": True,
        "rented": False, "disk_space": 500, "direct_port_count": 100, "inet_down": 900,
    })


def make_provider(fake: FakeVastClient, clock: ManualClock, **config: Any) -> VastNodeProvider:
    """A provider for cluster ``unit`` on the fake, with no background threads (a test drives every step)."""
    provider = VastNodeProvider({**PROVIDER, **config}, CLUSTER, client=fake, clock=clock,  # type: ignore[arg-type]
                                start_threads=False)
    fake.provider = provider
    return provider


def worker_label(**extra: str) -> str:
    """The label a worker of cluster ``unit`` carries on Vast."""
    return encode_label(CLUSTER, {**WORKER_TAGS, **extra})
