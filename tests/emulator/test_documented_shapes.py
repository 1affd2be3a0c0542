"""What Vast documents besides its rate limits, over HTTP: the create input bounds and their error bodies, 404 for an
unknown offer, ``GET /ssh/`` with no keys, identity ports, host-side ``local_ipaddrs``, an account without overlays,
the legacy unpaged list and the v1 list's label filters, and a client hanging up mid-request.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import httpx
import pytest
from support.emulator_wire import first_offer, instance, rent, set_faults

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import wait_until

# Raw wire calls with no pacer, several creates in a row: the shapes are the subject here, so the limits are off
# (test_documented_limits.py tests them at their documented values).
EMULATOR_RATE_LIMITS = "off"

IMAGE = "vastai/base-image"


def invalid_args(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False and body["error"] in ("invalid_args", "invalid_price"), body
    assert body["msg"].startswith("error 400/3467: Invalid args: "), body
    return str(body["msg"])


@pytest.mark.parametrize(("body", "needle"), [
    ({"label": "x" * 257}, "label: must be a string of at most 256 characters"),
    ({"env": {"K": "v" * 257}}, "the value of 'K' has 257 characters; at most 256"),
    ({"env": {f"K{i}": "v" * 250 for i in range(140)}}, "characters in all; at most 32768"),
    ({"disk": 7.9}, "disk: 7.9 GB is below the minimum of 8 GB"),
    ({"price": 0.0009}, "price: 0.0009 is outside the allowed 0.001-128 $/h"),
    ({"price": 128.5}, "price: 128.5 is outside the allowed 0.001-128 $/h"),
    ({"image": "i" * 1025}, "image: must be a string of at most 1024 characters"),
    ({"onstart": "o" * 2000, "args": ["a" * 1000, "b" * 1000], "args_str": "c" * 96},
     "args, args_str and onstart: 4097 characters together; at most 4096"),
    ({"env": {"-p 65536:65536": "1"}}, "port request -p '65536:65536'"),
])
def test_create_input_bounds(api: httpx.Client, body: dict[str, Any], needle: str) -> None:
    offer = first_offer(api, num_gpus=1)
    response = api.put(f"/api/v0/asks/{offer['id']}/", json={"image": IMAGE, **body})
    assert needle in invalid_args(response)
    assert api.get("/api/v1/instances/").json()["total_instances"] == 0  # nothing rented


def test_create_bounds_accept_their_limits(api: httpx.Client) -> None:
    offer = first_offer(api, num_gpus=1)
    at_limits = {"image": "i" * 1024, "label": "l" * 256, "disk": 8, "price": 128,
                 "env": {f"K{i}": "v" * 256 for i in range(120)}, "onstart": "o" * 2000, "args": ["a" * 2096]}
    iid = rent(api, offer, **at_limits)
    row = instance(api, iid)
    assert row is not None and row["label"] == "l" * 256 and row["disk_space"] == 8
    label = api.put(f"/api/v0/instances/{iid}/", json={"label": "m" * 1024})  # label_instance.yaml keeps 1024
    assert label.json()["success"] is True


def test_unknown_or_taken_offer_is_404_no_such_ask(api: httpx.Client) -> None:
    offer = first_offer(api, num_gpus=8)
    rent(api, offer)  # all of the machine's GPUs: its offer is gone
    for ask in (offer["id"], 1299):
        taken = api.put(f"/api/v0/asks/{ask}/", json={"image": IMAGE})
        assert taken.status_code == 404
        assert taken.json() == {"success": False, "error": "invalid_args", "ask_id": ask,
                                "msg": f"error 404/3603: no_such_ask Instance type by id {ask} is not available."}


def test_ssh_keys_404_for_an_account_without_keys(api: httpx.Client) -> None:
    none = api.get("/api/v0/ssh/")
    assert none.status_code == 404 and none.json()["msg"] == "No SSH keys found for the user."
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIShapeKey t@t"
    created = api.post("/api/v0/ssh/", json={"ssh_key": key}).json()["key"]
    assert [k["key"] for k in api.get("/api/v0/ssh/").json()] == [key]
    api.delete(f"/api/v0/ssh/{created['id']}/")
    assert api.get("/api/v0/ssh/").status_code == 404


def test_identity_ports_map_a_random_host_port_to_the_same_port_inside(emulator: EmulatorServer,
                                                                       api: httpx.Client) -> None:
    offer = first_offer(api, num_gpus=1)
    iid = rent(api, offer, env={"-p 70000:70000": "1", "-p 70001:70001/udp": "1", "-p 8265:8265": "1"})
    row = wait_until(lambda: (r := instance(api, iid)) and r["actual_status"] == "running" and r, timeout_s=10,
                     what="the instance running")
    ports = row["ports"]
    identity = {key: int(bindings[0]["HostPort"]) for key, bindings in ports.items()
                if key not in ("22/tcp", "8265/tcp")}
    assert len(identity) == 2
    for key, host_port in identity.items():
        assert key.split("/")[0] == str(host_port)  # the same number inside and outside
        assert row["direct_port_start"] <= host_port <= row["direct_port_end"]
    assert {key.split("/")[1] for key in identity} == {"tcp", "udp"}
    assert row["extra_env"][:2] == [["-p 70000:70000", "1"], ["-p 70001:70001/udp", "1"]]
    tcp = next(p for k, p in identity.items() if k.endswith("/tcp"))
    udp = next(p for k, p in identity.items() if k.endswith("/udp"))
    [spec] = [s for s in _specs(emulator) if s.instance_id == iid]
    assert spec.env["VAST_TCP_PORT_70000"] == str(tcp) and spec.env["VAST_UDP_PORT_70001"] == str(udp)


def _specs(emulator: EmulatorServer) -> list[Any]:
    recorded: list[Any] = emulator.market.runtime.specs  # type: ignore[attr-defined]
    return recorded


@pytest.fixture
def emulator() -> Any:
    """The default market with a recording runtime, so the test sees each instance's login environment."""
    from skyward_ray.emulator.testing import RecordingRuntime, running_emulator

    with running_emulator(seed=0, boot_delay_s=0.2, rate_limits=EMULATOR_RATE_LIMITS,
                          runtime=RecordingRuntime()) as emu:
        yield emu


def test_open_port_limit_is_64_and_the_offers_direct_ports(api: httpx.Client) -> None:
    offer = first_offer(api, num_gpus=1, direct_port_count=1000)
    too_many = {f"-p {70000 + i}:{70000 + i}": "1" for i in range(64)}  # 64 + port 22 = 65
    assert "65 open ports requested; at most 64" in invalid_args(
        api.put(f"/api/v0/asks/{offer['id']}/", json={"image": IMAGE, "env": too_many}))
    small = first_offer(api, num_gpus=1, direct_port_count=16)
    asks = {f"-p {70000 + i}:{70000 + i}": "1" for i in range(16)}
    assert "17 ports requested; machine" in invalid_args(
        api.put(f"/api/v0/asks/{small['id']}/", json={"image": IMAGE, "env": asks}))


def test_local_ipaddrs_hold_host_side_addresses_and_the_overlay_address_is_on_eth0(emulator: EmulatorServer,
                                                                                   api: httpx.Client) -> None:
    offer = first_offer(api, num_gpus=1, cluster_id=_a_cluster(api))
    assert api.post("/api/v0/overlay/", json={"cluster_id": offer["cluster_id"], "name": "shapes"}).json()["success"]
    iid = rent(api, offer, env={"-n shapes": "1"})
    row = wait_until(lambda: (r := instance(api, iid)) and r["actual_status"] == "running" and r, timeout_s=10,
                     what="the instance running")
    [overlay] = api.get("/api/v0/overlay/").json()
    subnet = overlay["internal_subnet"].rsplit(".", 1)[0]
    addresses = row["local_ipaddrs"].split()
    assert len(addresses) == 2 and addresses[1] == "172.17.0.1"
    assert not any(a.startswith(subnet) for a in addresses)
    joins = [args for name, args in emulator.market.runtime.calls if name == "join_overlay"]  # type: ignore[attr-defined]
    assert joins == [(overlay["overlay_id"], iid, f"{subnet}.1", 24)]  # eth0 inside the instance
    set_faults(api, overlay_address_in_local_ipaddrs=True)  # the inferred old behaviour, for a test that needs it
    assert instance(api, iid)["local_ipaddrs"].split()[0] == f"{subnet}.1"  # type: ignore[index]


def _a_cluster(api: httpx.Client) -> int:
    found = api.post("/api/v0/bundles/", json={"cluster_id": {"neq": None}, "num_gpus": {"eq": 1}, "limit": 1})
    return int(found.json()["offers"][0]["cluster_id"])


def test_overlays_unavailable_for_the_account(api: httpx.Client) -> None:
    cluster = _a_cluster(api)
    set_faults(api, overlays_available=False)
    calls = [("GET", None), ("POST", {"cluster_id": cluster, "name": "nope"}), ("PUT", {"name": "nope",
             "instance_id": 1}), ("DELETE", {"overlay_name": "nope"})]
    for method, body in calls:
        refused = api.request(method, "/api/v0/overlay/", json=body)
        assert refused.status_code == 403, (method, refused.text)
        assert refused.json() == {"success": False, "error": "permission_denied",
                                  "msg": "Overlay networks are not available for this account."}
    assert api.get("/_emulator/faults/").json()["overlays_available"] is False
    set_faults(api, overlays_available=True)
    assert api.get("/api/v0/overlay/").json() == []


def test_legacy_unpaged_list_and_v1_label_filters(api: httpx.Client) -> None:
    offers = api.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 30}).json()["offers"]
    made = {rent(api, offer, label="ours" if i % 3 == 0 else f"other-{i}") for i, offer in enumerate(offers)}
    legacy = api.get("/api/v0/instances/", params={"owner": "me"}).json()
    assert set(legacy) == {"instances"} and {row["id"] for row in legacy["instances"]} == made  # 30, no paging
    eq = api.get("/api/v1/instances/", params={"select_filters": json.dumps({"label": {"eq": "ours"}})}).json()
    assert eq["total_instances"] == 10 and {row["label"] for row in eq["instances"]} == {"ours"}
    within = api.get("/api/v1/instances/", params={
        "select_filters": json.dumps({"label": {"in": ["ours", "other-1"]}})}).json()
    assert within["total_instances"] == 11 and within["label_counts"] == {"ours": 10, "other-1": 1}


def test_a_client_hanging_up_mid_request_is_one_log_line(emulator: EmulatorServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as sock:
        sock.sendall(f"PUT /api/v0/asks/123/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {emulator.api_key}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"image\":".encode())
    wait_until(lambda: any("hung up during PUT /api/v0/asks/123/" in r.getMessage() for r in caplog.records),
               timeout_s=10, what="the hang-up logged")
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert httpx.get(f"{emulator.url}/api/v0/users/current/",
                     params={"api_key": emulator.api_key}).status_code == 200  # still serving
