"""Wire details a client depends on: paths with and without slashes, auth styles and the 401 body, legacy search
forms, v1 paging and its errors, bulk calls, instance keys, admin counters and state."""

from __future__ import annotations

import json

import httpx
from support.emulator_wire import FROZEN_BOOT_S, advance, first_offer, instance, rent

from skyward_ray.emulator.server import EmulatorServer

# Raw wire calls with no pacer, many in a row: the shapes are the subject here, so the limits are off (they have their
# own tests at the documented values in test_documented_limits.py).
EMULATOR_RATE_LIMITS = "off"

AUTH_ERROR = {"success": False, "error": "auth_error", "msg": "Invalid user key"}


def test_auth_styles_and_the_401_body(emulator: EmulatorServer) -> None:
    base = emulator.url
    assert httpx.get(f"{base}/api/v0/users/current/", params={"api_key": emulator.api_key}).status_code == 200
    for bad in ({"headers": {"Authorization": "Bearer nope"}}, {"params": {"api_key": "nope"}}, {}):
        response = httpx.get(f"{base}/api/v0/users/current/", **bad)  # type: ignore[arg-type]
        assert response.status_code == 401 and response.json() == AUTH_ERROR
    anonymous = httpx.post(f"{base}/api/v0/bundles/", json={"limit": 2})  # gpuhunt searches without a key
    assert anonymous.status_code == 200 and len(anonymous.json()["offers"]) == 2
    assert anonymous.headers["content-type"] == "application/json"  # exact: the CLI compares it verbatim


def test_paths_with_or_without_trailing_slash_and_legacy_search(api: httpx.Client) -> None:
    assert api.get("/api/v0/users/current").status_code == 200  # the CLI sends no slash here
    assert api.get("/api/v0/users/current/").status_code == 200
    query = {"gpu_name": {"eq": "RTX 4090"}, "limit": 3}
    posted = api.post("/api/v0/bundles/", json=query).json()["offers"]
    legacy = api.get("/api/v0/bundles/", params={"q": json.dumps(query)}).json()["offers"]
    new = api.put("/api/v0/search/asks/", json={"select_cols": ["*"], "q": query}).json()["offers"]
    assert [o["id"] for o in posted] == [o["id"] for o in legacy] == [o["id"] for o in new]
    assert api.get("/api/v0/no/such/thing/").status_code == 404


def test_v1_paging_filters_and_errors(api: httpx.Client) -> None:
    offers = api.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 12}).json()["offers"]
    made = [rent(api, offer, label="even" if i % 2 == 0 else None) for i, offer in enumerate(offers)]
    seen: list[int] = []
    params = {"limit": "5", "order_by": json.dumps([{"col": "id", "dir": "desc"}])}
    while True:
        page = api.get("/api/v1/instances/", params=params).json()
        assert page["success"] and page["total_instances"] == 12 and page["instances_found"] <= 5
        seen += [row["id"] for row in page["instances"]]
        if not page["next_token"]:
            break
        params["after_token"] = page["next_token"]
    assert seen == sorted(made, reverse=True)
    assert page["label_counts"] == {"even": 6, "": 6}
    filtered = api.get("/api/v1/instances/", params={
        "select_filters": json.dumps({"label": {"in": ["even", None]}, "actual_status": {"in": [None, "loading",
                                                                                              "running"]}}),
        "select_cols": json.dumps(["label"]), "limit": "25"}).json()
    assert filtered["total_instances"] == 12 and set(filtered["instances"][0]) == {"id", "label"}
    computed = api.get("/api/v1/instances/", params={"select_filters": json.dumps({"dph_total": {"lt": 1}})})
    assert computed.status_code == 400 and computed.json() == {
        "success": False, "error": "invalid_request",
        "msg": "Error in query parameters: dph_total is not a valid search key"}
    bad_token = api.get("/api/v1/instances/", params={"after_token": "not-a-token"})
    assert bad_token.status_code == 400 and bad_token.json()["error"] == "invalid_token"
    legacy = api.get("/api/v0/instances/", params={"owner": "me"}).json()["instances"]
    assert sorted(row["id"] for row in legacy) == sorted(made)


def test_bulk_create_stop_and_destroy(api: httpx.Client) -> None:
    offers = api.post("/api/v0/bundles/", json={"num_gpus": {"eq": 1}, "limit": 3}).json()["offers"]
    created = api.post("/api/v0/asks/bulk/", json={"image": "img", "ids": [o["id"] for o in offers]}).json()
    assert created["success"] is True and len(created["new_contracts"]) == 3
    assert api.put("/api/v0/instances/", json={"state": "stopped", "ids": created["new_contracts"]}).json() == \
        {"success": True}
    assert {instance(api, i)["actual_status"] for i in created["new_contracts"]} == {"stopped"}  # type: ignore[index]
    gone = api.request("DELETE", "/api/v0/instances/", json={"instance_ids": created["new_contracts"]}).json()
    assert gone["success"] is True
    assert all(instance(api, i) is None for i in created["new_contracts"])
    again = api.request("DELETE", f"/api/v0/instances/{created['new_contracts'][0]}/", json={})
    assert again.status_code == 404 and again.json()["error"] == "no_such_instance"


def test_labels_and_states(api: httpx.Client) -> None:
    iid = rent(api, first_offer(api, num_gpus=1))
    assert api.put(f"/api/v0/instances/{iid}/", json={"label": "x" * 1024}).json()["success"]
    too_long = api.put(f"/api/v0/instances/{iid}/", json={"label": "x" * 1025})
    assert too_long.status_code == 400 and "1024" in too_long.json()["msg"]
    assert api.put(f"/api/v0/instances/{iid}/", json={"state": "paused"}).status_code == 400
    assert api.put("/api/v0/instances/1/", json={"label": "a"}).status_code == 404


def test_create_refusals(api: httpx.Client) -> None:
    offer = first_offer(api, num_gpus=1)
    assert api.put(f"/api/v0/asks/{offer['id']}/", json={}).status_code == 400  # no image
    taken = api.put("/api/v0/asks/1299/", json={"image": "img"})  # no such machine
    assert taken.status_code == 404 and "no_such_ask" in taken.json()["msg"]
    low = api.put(f"/api/v0/asks/{offer['id']}/", json={"image": "img", "price": offer["min_bid"] / 2})
    body = low.json()
    assert low.status_code == 400 and body["success"] is False and body["error"] == "invalid_price"
    stopped = instance(api, body["new_contract"])  # created anyway, stopped: a client must destroy it
    assert stopped is not None and stopped["actual_status"] == "stopped" and stopped["is_bid"] is True


def test_instance_key_can_only_stop_or_destroy_itself(emulator: EmulatorServer, api: httpx.Client) -> None:
    offer = first_offer(api, num_gpus=1)
    created = api.put(f"/api/v0/asks/{offer['id']}/", json={"image": "img"}).json()
    other = rent(api, first_offer(api, num_gpus=2))
    scoped = {"Authorization": f"Bearer {created['instance_api_key']}"}
    mine = f"{emulator.url}/api/v0/instances/{created['new_contract']}/"
    assert httpx.get(mine, headers=scoped).status_code == 403
    assert httpx.put(mine, headers=scoped, json={"label": "x"}).status_code == 403
    assert httpx.get(f"{emulator.url}/api/v1/instances/", headers=scoped).status_code == 403
    assert httpx.request("DELETE", f"{emulator.url}/api/v0/instances/{other}/", headers=scoped,
                         json={}).status_code == 403
    assert httpx.put(mine, headers=scoped, json={"state": "stopped"}).json() == {"success": True}
    assert httpx.request("DELETE", mine, headers=scoped, json={}).json()["success"] is True


def test_lifecycle_fields_on_the_wire(frozen_api: httpx.Client) -> None:
    iid = rent(frozen_api, first_offer(frozen_api, num_gpus=1), env="-p 8080:8080 -e A=1")
    early = instance(frozen_api, iid)
    assert early is not None and early["actual_status"] is None
    assert early["ssh_host"] and early["ssh_port"] and early["ports"] is None and early["public_ipaddr"] is None
    advance(frozen_api, FROZEN_BOOT_S / 2)
    assert instance(frozen_api, iid)["actual_status"] == "loading"  # type: ignore[index]
    advance(frozen_api, FROZEN_BOOT_S)
    row = instance(frozen_api, iid)
    assert row is not None and row["actual_status"] == "running"
    assert set(row["ports"]) == {"22/tcp", "8080/tcp"}
    assert row["ports"]["22/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(row["ssh_port"])}]
    assert row["public_ipaddr"].startswith(("198.51.100.", "203.0.113."))
    assert row["extra_env"] == [["-p 8080:8080", "1"], ["A", "1"]]


def test_instance_ssh_keys(api: httpx.Client) -> None:
    iid = rent(api, first_offer(api, num_gpus=1))
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIInstanceKey me@laptop"
    assert api.post(f"/api/v0/instances/{iid}/ssh/", json={"ssh_key": key}).json()["success"]
    listed = api.get(f"/api/v0/instances/{iid}/ssh/").json()
    keys = json.loads(listed["ssh_keys"])  # a JSON string, as Vast sends it
    assert [k["public_key"] for k in keys] == [key]
    assert api.request("DELETE", f"/api/v0/instances/{iid}/ssh/{keys[0]['id']}/", json={}).json()["success"]
    assert api.post(f"/api/v0/instances/{iid}/ssh/", json={}).json()["error"] == "no_ssh_key"


def test_admin_counters_state_and_fault_validation(api: httpx.Client) -> None:
    api.delete("/_emulator/counters/")
    iid = rent(api, first_offer(api, num_gpus=1), label="audited")
    api.get(f"/api/v0/instances/{iid}/")
    api.get(f"/api/v0/instances/{iid}")
    counters = api.get("/_emulator/counters/").json()["requests"]
    assert counters == {"POST /api/v0/bundles/": 1, "PUT /api/v0/asks/{id}/": 1, "GET /api/v0/instances/{id}/": 2}
    state = api.get("/_emulator/state/").json()
    assert [i["label"] for i in state["instances"]] == ["audited"]
    assert state["ledger"][0]["instance_id"] == iid and state["ledger"][0]["price"] > 0
    assert state["market"]["offers"] > 500
    bad = api.put("/_emulator/faults/", json={"error_5xx_rate": 3})
    assert bad.status_code == 400 and "error_5xx_rate" in bad.json()["msg"]
    unknown = api.put("/_emulator/faults/", json={"teleport": True})
    assert unknown.status_code == 400
    assert api.get("/_emulator/faults/").json()["error_5xx_rate"] == 0.0


def test_admin_key_guards_the_admin_api() -> None:
    from skyward_ray.emulator.testing import running_emulator

    with running_emulator(admin_key="sesame") as emu:
        assert httpx.get(f"{emu.admin_url}/state/").status_code == 401
        assert httpx.get(f"{emu.admin_url}/state/", headers={"Authorization": "Bearer sesame"}).status_code == 200


def test_admin_clock_scale_speeds_the_market_up(frozen: EmulatorServer, frozen_api: httpx.Client) -> None:
    from skyward_ray.emulator.testing import wait_until

    iid = rent(frozen_api, first_offer(frozen_api, num_gpus=1))
    assert frozen_api.post("/_emulator/clock/", json={"scale": 300}).json()["scale"] == 300
    wait_until(lambda: instance(frozen_api, iid)["actual_status"] == "running", timeout_s=10,  # type: ignore[index]
               what=f"a {FROZEN_BOOT_S} s boot at 300x")
    assert frozen_api.post("/_emulator/clock/", json={"scale": -1}).status_code == 400


def test_listens_on_the_runtime_bind_address_too() -> None:
    from skyward_ray.emulator.runtime import NoneRuntime
    from skyward_ray.emulator.testing import running_emulator

    class BoundRuntime(NoneRuntime):
        @property
        def api_bind_host(self) -> str | None:
            return "127.0.0.2"  # stands for the netns public bridge address

    with running_emulator(runtime=BoundRuntime()) as emu:
        assert emu.url == f"http://127.0.0.2:{emu.port}"
        for host in ("127.0.0.1", "127.0.0.2"):
            response = httpx.get(f"http://{host}:{emu.port}/api/v0/users/current/", params={"api_key": emu.api_key})
            assert response.status_code == 200
