"""The official client (PyPI ``vastai`` 1.9.1) against a running emulator.

How 1.9.1 talks (read from its installed source): ``VastClient._build_url`` prefixes ``/api/v0`` unless the subpath
already names ``/api/vN/``, appends JSON-encoded, ``quote_plus``-ed query args, and sends ``Authorization: Bearer``;
the base URL is ``server_url`` (SDK) or ``--url`` / ``VAST_URL`` (CLI, read at import). The CLI's cluster/overlay
commands are disabled in 1.9.1, so overlays go through the SDK class, whose methods remain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from support.emulator_wire import first_offer, rent
from vastai import VastAI

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import running_emulator, wait_until

# The official client has no pacer: it retries a 429 at most twice, 0.15 s and 0.225 s later, so against Vast's
# documented intervals (2 s for a show, 4.5 s and a 12 s penalty for a create) its back-to-back calls fail as they
# would against Vast itself. These tests are about shapes, so the limits are off here;
# test_official_client_gets_vasts_429_and_retries_as_it_does shows what it does under the documented limits.
EMULATOR_RATE_LIMITS = "off"

VASTAI_CLI = Path(sys.executable).with_name("vastai")


@pytest.fixture
def sdk(emulator: EmulatorServer) -> VastAI:
    return VastAI(api_key=emulator.api_key, server_url=emulator.url, raw=True, retry=1)


def running(sdk: VastAI, instance_id: int) -> dict[str, Any]:
    return wait_until(lambda: (row := sdk.show_instance(instance_id)) and row["actual_status"] == "running" and row,
                      timeout_s=10, what=f"instance {instance_id} running")


def test_sdk_search_with_several_operators_and_geolocation(sdk: VastAI, emulator: EmulatorServer) -> None:
    offers = sdk.search_offers(
        query="gpu_name=RTX_4090 num_gpus>=1 num_gpus<=4 reliability>0.95 geolocation in [US,CA] "
              "cluster_id!=None dph<5", order="dph_total", limit=20)
    assert offers, "the default market has US RTX 4090 clusters"
    for offer in offers:
        assert offer["gpu_name"] == "RTX 4090" and 1 <= offer["num_gpus"] <= 4
        assert offer["reliability2"] > 0.95 and offer["geolocation"][-2:] in ("US", "CA")
        assert offer["cluster_id"] is not None and offer["dph_total"] < 5
        assert offer["verification"] == "verified" and offer["rentable"] and not offer["rented"]  # SDK defaults
        assert offer["datacenter"] == (offer["hosting_type"] == 1)
    prices = [o["dph_total"] for o in offers]
    assert prices == sorted(prices)
    interruptible = sdk.search_offers(query="gpu_name=RTX_4090 num_gpus=1", type="bid", limit=5)
    assert all(o["is_bid"] and o["dph_total"] < o["dph_base"] for o in interruptible)


def test_sdk_instance_lifecycle(sdk: VastAI, emulator: EmulatorServer) -> None:
    on_demand_offer, bid_offer = sdk.search_offers(query="gpu_name=RTX_4090 num_gpus=1", order="dph_total",
                                                   limit=2)
    created = sdk.create_instance(id=on_demand_offer["id"], image="vastai/base-image", disk=16, label="od",
                                  env="-e FOO=bar -p 8265:8265")
    assert created["success"] is True and created["instance_api_key"]
    on_demand = created["new_contract"]
    bid = sdk.create_instance(id=bid_offer["id"], image="vastai/base-image", label="spot",
                              price=round(bid_offer["min_bid"] * 1.2, 4))["new_contract"]
    row = running(sdk, on_demand)
    assert row["extra_env"] == {"FOO": "bar", "-p 8265:8265": "1"}  # the SDK rebuilt the dict from pairs
    assert set(row["ports"]) == {"22/tcp", "8265/tcp"}
    assert row["is_bid"] is False and running(sdk, bid)["is_bid"] is True

    shown = {r["id"]: r for r in sdk.show_instances()}
    assert shown[on_demand]["label"] == "od" and shown[bid]["label"] == "spot"

    assert sdk.label_instance(on_demand, "renamed")["success"]
    assert sdk.show_instance(on_demand)["label"] == "renamed"

    assert sdk.change_bid(bid, price=1.25)["success"]
    assert sdk.show_instance(bid)["dph_total"] == pytest.approx(1.25 + 10 * bid_offer["storage_cost"] / 720,
                                                               rel=1e-3)

    assert sdk.stop_instance(on_demand)["success"]
    assert sdk.show_instance(on_demand)["actual_status"] == "stopped"
    assert sdk.start_instance(on_demand)["success"]
    running(sdk, on_demand)

    assert sdk.destroy_instance(on_demand)["success"]
    assert sdk.show_instance(on_demand) is None
    assert sdk.destroy_instances([bid])["success"]
    assert sdk.show_instances() == []


def test_sdk_show_instances_pages_through_v1(sdk: VastAI, emulator: EmulatorServer) -> None:
    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {emulator.api_key}"}) as client:
        offers = client.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 30}).json()["offers"]
        made = {rent(client, offer, label=f"n{i}") for i, offer in enumerate(offers)}
    assert len(made) == 30
    assert {row["id"] for row in sdk.show_instances()} == made  # 25 + 5: one next_token followed
    page = sdk.show_instances_v1({"limit": 25, "select_filters": {"label": {"in": ["n1", "n2"]}}})
    assert page["total_instances"] == 2 and page["next_token"] is None
    assert page["label_counts"] == {"n1": 1, "n2": 1}


def test_sdk_overlays(sdk: VastAI, emulator: EmulatorServer) -> None:
    offer = sdk.search_offers(query="gpu_name=RTX_4090 cluster_id!=None num_gpus=1", limit=1)[0]
    cluster = offer["cluster_id"]
    assert sdk.create_overlay(cluster, "ray-net")["success"]
    [overlay] = sdk.show_overlays()
    assert overlay["name"] == "ray-net" and overlay["cluster_id"] == cluster and overlay["instances"] == []
    first = sdk.create_instance(id=offer["id"], image="vastai/base-image", env={"-n ray-net": "1"})["new_contract"]
    second_offer = sdk.search_offers(query=f"cluster_id={cluster} num_gpus=1", limit=1)[0]
    second = sdk.create_instance(id=second_offer["id"], image="vastai/base-image")["new_contract"]
    assert sdk.join_overlay("ray-net", second)["success"]
    [overlay] = sdk.show_overlays()
    assert overlay["instances"] == [first, second]
    subnet = overlay["internal_subnet"].rsplit(".", 1)[0]
    for iid in (first, second):  # host-side addresses only, as Vast documents
        assert not any(a.startswith(subnet) for a in running(sdk, iid)["local_ipaddrs"].split())
    eth0 = emulator.market.runtime.eth0  # type: ignore[attr-defined]  # the none runtime's record of eth0
    assert eth0 == {first: f"{subnet}.1/24", second: f"{subnet}.2/24"}
    assert sdk.delete_overlay("ray-net")["success"]
    assert sdk.show_overlays() == []
    assert sdk.show_clusters() == {"clusters": {}}  # the host view: renters own no clusters


def test_sdk_user_and_keys(sdk: VastAI, emulator: EmulatorServer) -> None:
    user = sdk.show_user()
    assert user["credit"] > 0 and "api_key" not in user
    with pytest.raises(requests.HTTPError) as none_yet:  # show_ssh_keys.yaml: 404 for an account with no keys
        sdk.show_ssh_keys()
    assert none_yet.value.response.status_code == 404
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEmulatorTestKey test@emulator"
    created = sdk.create_ssh_key(key)
    assert created["key"]["public_key"] == key
    assert [k["key"] for k in sdk.show_ssh_keys()] == [key]
    assert sdk.delete_ssh_key(created["key"]["id"])["success"]
    with pytest.raises(requests.HTTPError, match="404"):
        sdk.show_ssh_keys()


def test_official_client_gets_vasts_429_and_retries_as_it_does() -> None:
    """Under the documented limits the SDK sees Vast's 429 (no Retry-After), retries it twice after 0.15 s and
    0.225 s as 1.9.1 does, then gives up; a caller that waits the documented 2 s gets through."""
    with running_emulator(seed=0, boot_delay_s=0.2, rate_limits="documented") as emu:
        sdk = VastAI(api_key=emu.api_key, server_url=emu.url, raw=True)  # the default retry=3
        with httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.api_key}"}) as client:
            iid = rent(client, first_offer(client, num_gpus=1))
            assert sdk.show_instance(iid)["id"] == iid
            with pytest.raises(requests.HTTPError, match="429"):
                sdk.show_instance(iid)
            counted = client.get("/_emulator/counters/").json()
            assert counted["statuses"]["GET /api/v0/instances/{id}/"] == {"200": 1, "429": 3}
            wait_until(lambda: _show_ok(sdk, iid), timeout_s=5, interval_s=0.5, what="the 2 s show interval to pass")


def _show_ok(sdk: VastAI, instance_id: int) -> bool:
    try:
        return sdk.show_instance(instance_id)["id"] == instance_id
    except requests.HTTPError:
        return False


def _cli(emulator: EmulatorServer, home: Path, *args: str, url_flag: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAST")}
    env.update({"HOME": str(home), "VASTAI_NO_UPDATE_CHECK": "1", "XDG_CONFIG_HOME": str(home / ".config")})
    cmd = [str(VASTAI_CLI)]
    if url_flag:
        cmd += ["--url", emulator.url]
    else:
        env["VAST_URL"] = emulator.url
    cmd += ["--api-key", emulator.api_key, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
                          check=False)


def test_cli_as_a_subprocess(emulator: EmulatorServer, tmp_path: Path) -> None:
    found = _cli(emulator, tmp_path, "search", "offers",
                 "gpu_name=RTX_4090 num_gpus=1 reliability>0.9 geolocation in [US,DE] dph<2", "-o", "dph",
                 "--limit", "3", "--raw")
    assert found.returncode == 0, found.stderr
    offers = json.loads(found.stdout)
    assert len(offers) == 3 and all(o["geolocation"][-2:] in ("US", "DE") for o in offers)

    made = _cli(emulator, tmp_path, "create", "instance", str(offers[0]["id"]), "--image", "vastai/base-image",
                "--disk", "16", "--label", "cli-od", "--raw")
    assert made.returncode == 0, made.stderr
    on_demand = json.loads(made.stdout)["new_contract"]
    spot = _cli(emulator, tmp_path, "create", "instance", str(offers[1]["id"]), "--image", "vastai/base-image",
                "--bid_price", str(round(offers[1]["min_bid"] * 1.3, 4)), "--raw", url_flag=False)  # via VAST_URL
    assert spot.returncode == 0, spot.stderr
    bid = json.loads(spot.stdout)["new_contract"]

    shown = _cli(emulator, tmp_path, "show", "instances", "--raw")
    assert shown.returncode == 0, shown.stderr
    rows = {row["id"]: row for row in json.loads(shown.stdout)}
    assert rows[on_demand]["label"] == "cli-od" and rows[bid]["is_bid"] is True

    labelled = _cli(emulator, tmp_path, "label", "instance", str(on_demand), "renamed")
    assert labelled.returncode == 0 and "set to renamed" in labelled.stdout
    changed = _cli(emulator, tmp_path, "change", "bid", str(bid), "--price", "0.9")
    assert changed.returncode == 0 and "bid price changed" in changed.stdout
    destroyed = _cli(emulator, tmp_path, "destroy", "instance", str(on_demand), "-y")
    assert destroyed.returncode == 0 and f"destroying instance {on_demand}" in destroyed.stdout

    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {emulator.api_key}"}) as client:
        assert client.get(f"/api/v0/instances/{on_demand}/").json() == {"instances": None}
        row = client.get(f"/api/v0/instances/{bid}/").json()["instances"]
        assert row["dph_total"] == pytest.approx(0.9 + 10 * offers[1]["storage_cost"] / 720, rel=1e-3)
        assert first_offer(client, gpu_name="RTX 4090")["id"]  # the market still answers
