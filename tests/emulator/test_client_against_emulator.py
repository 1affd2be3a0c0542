"""Our client (skyward_ray.vast.client) against the emulator over real HTTP on loopback: the full operation set,
the state mapping, and what each fault turns into on our side."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from support.emulator_wire import FROZEN_BOOT_S, advance, set_faults

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import wait_until
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import (
    AuthError,
    BadRequestError,
    OfferGoneError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
)
from skyward_ray.vast.models import Instance, NodeState, node_state

IMAGE = "vastai/base-image:@vastai-automatic-tag"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIClientTestKey client@test"


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[VastClient]:
    with VastClient(api_key=emulator.api_key, base_url=emulator.url, retry_deadline_s=5) as vast:
        yield vast


@pytest.fixture
def frozen_client(frozen: EmulatorServer) -> Iterator[VastClient]:
    with VastClient(api_key=frozen.api_key, base_url=frozen.url, retry_deadline_s=2, backoff_base_s=0.01) as vast:
        yield vast


def ready(client: VastClient, instance_id: int) -> Instance:
    def check() -> Instance | None:
        got = client.get_instance(instance_id)
        return got if got is not None and got.ready else None

    return wait_until(check, timeout_s=10, what=f"instance {instance_id} ready")


def test_full_operation_set(client: VastClient, emulator: EmulatorServer) -> None:
    user = client.current_user()
    assert user.credit is not None and user.credit > 0

    offers = client.search_offers({"gpu_name": {"eq": "RTX 4090"}, "cluster_id": {"neq": None},
                                   "geolocation": {"in": ["US"]}, "reliability2": {"gte": 0.98},
                                   "num_gpus": {"eq": 1}, "order": [["dph_total", "asc"]], "type": "bid"})
    assert offers and all(o.cluster_id is not None and o.country_code == "US" for o in offers)
    cluster = offers[0].cluster_id
    assert cluster is not None

    key = client.create_ssh_key(PUBLIC_KEY)
    assert key.public_key == PUBLIC_KEY
    assert [k.public_key for k in client.list_ssh_keys()] == [PUBLIC_KEY]

    client.create_overlay(cluster, "sky-net")
    [overlay] = client.list_overlays()
    assert overlay.name == "sky-net" and overlay.cluster_id == cluster and overlay.internal_subnet

    head = client.create_instance(offers[0].id, image=IMAGE, disk_gb=20, label="sky-head",
                                  env={"-n sky-net": "1", "-p 8265:8265": "1", "RAY_ROLE": "head"})
    assert head.instance_api_key
    worker_offer = client.search_offers({"cluster_id": {"eq": cluster}, "num_gpus": {"eq": 1}, "type": "bid",
                                         "order": [["dph_total", "asc"]]})[0]
    worker = client.create_instance(worker_offer.id, image=IMAGE, disk_gb=20, label="sky-worker",
                                    price=round((worker_offer.min_bid or 0.1) * 1.2, 4))
    client.join_overlay("sky-net", worker.new_contract)

    head_row = ready(client, head.new_contract)
    worker_row = ready(client, worker.new_contract)
    assert head_row.state is NodeState.RUNNING and head_row.ssh_endpoint is not None
    assert head_row.host_port(8265) is not None and head_row.host_port(22) == head_row.ssh_endpoint[1]
    assert head_row.overlay_name == "sky-net" and worker_row.is_bid is True
    [overlay] = client.list_overlays()
    assert overlay.instances == [head.new_contract, worker.new_contract]
    assert overlay.internal_subnet is not None
    # As on Vast, no field of the API carries an overlay address (the node finds it on its eth0):
    # local_ipaddrs holds host-side addresses only.
    assert head_row.overlay_ip(overlay.internal_subnet) is None
    assert worker_row.overlay_ip(overlay.internal_subnet) is None
    assert head_row.local_ipaddrs and worker_row.local_ipaddrs

    assert client.attach_ssh_key(worker.new_contract, PUBLIC_KEY).success
    assert [k.public_key for k in client.list_instance_ssh_keys(worker.new_contract)] == [PUBLIC_KEY]

    client.set_label(head.new_contract, "sky-head-renamed")
    client.change_bid(worker.new_contract, 2.5)
    listed = {i.id: i for i in client.list_instances()}
    assert listed[head.new_contract].label == "sky-head-renamed"
    assert listed[worker.new_contract].dph_total == pytest.approx(2.5 + 20 * worker_offer.storage_cost / 720,
                                                                 rel=1e-3)
    assert {i.id for i in client.list_instances({"label": {"in": ["sky-worker"]}})} == {worker.new_contract}
    assert {i.id for i in client.list_instances_v0()} == {head.new_contract, worker.new_contract}

    client.stop_instance(head.new_contract)
    assert client.get_instance(head.new_contract).actual_status == "stopped"  # type: ignore[union-attr]
    client.start_instance(head.new_contract)
    ready(client, head.new_contract)

    assert client.delete_overlay(name="sky-net") is True
    assert client.delete_overlay(name="sky-net") is False
    assert client.destroy_instance(head.new_contract) is True
    assert client.destroy_instance(head.new_contract) is False
    assert node_state(client.get_instance(head.new_contract)) is NodeState.GONE
    client.destroy_instances([worker.new_contract])
    assert client.list_instances() == []


def test_paging_past_one_page(client: VastClient) -> None:
    offers = client.search_offers({"num_gpus": {"eq": 1}, "limit": 27})
    made = {client.create_instance(o.id, image=IMAGE, disk_gb=10, label=f"page-{i}").new_contract
            for i, o in enumerate(offers)}
    assert len(made) == 27
    assert {i.id for i in client.list_instances()} == made
    assert {i.id for i in client.list_instances(page_size=4)} == made


def test_rental_errors(client: VastClient, emulator: EmulatorServer) -> None:
    offer = client.search_offers({"num_gpus": {"eq": 1}, "type": "bid", "limit": 1})[0]
    with pytest.raises(BadRequestError) as low:
        client.create_instance(offer.id, image=IMAGE, disk_gb=10, label="too-low",
                               price=round((offer.min_bid or 0.1) / 2, 4))
    assert low.value.new_contract is not None  # created stopped: ours to destroy
    stopped = client.get_instance(low.value.new_contract)
    assert stopped is not None and stopped.state is NodeState.INTERRUPTED
    assert client.destroy_instance(low.value.new_contract)

    whole = client.search_offers({"machine_id": {"eq": offer.machine_id}, "order": [["num_gpus", "desc"]]})[0]
    client.create_instance(whole.id, image=IMAGE, disk_gb=10, label="all-of-it")
    with pytest.raises(OfferGoneError) as gone:
        client.create_instance(whole.id, image=IMAGE, disk_gb=10, label="again")
    assert gone.value.ask_id == whole.id

    with VastClient(api_key="not-a-key", base_url=emulator.url) as stranger, pytest.raises(AuthError):
        stranger.current_user()


def test_instance_key_states_and_faults(frozen_client: VastClient, frozen: EmulatorServer) -> None:
    admin = httpx.Client(base_url=frozen.url, timeout=30)
    offer = frozen_client.search_offers({"num_gpus": {"eq": 1}, "type": "bid", "order": [["dph_total", "asc"]],
                                         "limit": 3})
    spot = frozen_client.create_instance(offer[0].id, image=IMAGE, disk_gb=10, label="spot",
                                         price=round((offer[0].min_bid or 0.1) * 1.5, 4))
    broken = frozen_client.create_instance(offer[1].id, image=IMAGE, disk_gb=10, label="broken")
    assert node_state(frozen_client.get_instance(spot.new_contract)) is NodeState.PENDING
    advance(admin, FROZEN_BOOT_S + 1)
    assert node_state(frozen_client.get_instance(spot.new_contract)) is NodeState.RUNNING

    admin.post(f"/_emulator/instances/{spot.new_contract}/outbid/", json={})
    admin.post(f"/_emulator/instances/{broken.new_contract}/fail/", json={"kind": "oci_error"})
    assert node_state(frozen_client.get_instance(spot.new_contract)) is NodeState.INTERRUPTED
    assert node_state(frozen_client.get_instance(broken.new_contract)) is NodeState.FAILED

    with VastClient(api_key=broken.instance_api_key, base_url=frozen.url, retry_deadline_s=0) as scoped:
        with pytest.raises(AuthError):
            scoped.get_instance(broken.new_contract)
        assert scoped.destroy_instance(broken.new_contract) is True  # the dead-man switch's one power

    set_faults(admin, rate_limit={"enabled": True, "min_interval_s": 60})
    frozen_client.current_user()
    with pytest.raises(RateLimitedError):
        frozen_client.current_user()
    set_faults(admin, rate_limit={"enabled": False}, search_quota_per_day=0)
    with pytest.raises(QuotaExceededError) as quota:
        frozen_client.search_offers({"limit": 1})
    assert quota.value.reset_at is not None and quota.value.attempts == 1

    admin.delete("/_emulator/counters/")
    set_faults(admin, search_quota_per_day=None, error_5xx_rate=1.0)
    with pytest.raises(ServerError) as failed:
        frozen_client.create_instance(offer[2].id, image=IMAGE, disk_gb=10, label="maybe")
    assert failed.value.attempts == 1  # never retried: it might have rented
    counted = admin.get("/_emulator/counters/").json()["requests"]
    assert counted["PUT /api/v0/asks/{id}/"] == 1

    set_faults(admin, error_5xx_rate=0.0, lost_response_rate=1.0)
    with pytest.raises(ServerError) as lost:
        frozen_client.create_instance(offer[2].id, image=IMAGE, disk_gb=10, label="ghost")
    assert lost.value.outcome_unknown is True
    set_faults(admin, lost_response_rate=0.0)
    assert [i.label for i in frozen_client.list_instances({"label": {"in": ["ghost"]}})] == ["ghost"]
    admin.close()


def test_anonymous_client_searches_without_a_key(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """`skyward-ray offers` works with no account: search needs no key, and no Authorization header is sent."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    with VastClient(base_url=emulator.url, anonymous=True) as client:
        offers = client.search_offers({"gpu_name": {"eq": "RTX 4090"}, "limit": 5})
        assert offers and all(offer.gpu_name == "RTX 4090" for offer in offers)
        with pytest.raises(AuthError):
            client.list_instances()
