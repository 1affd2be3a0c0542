"""Every fault and dynamic, provoked through the admin API and checked on the wire with raw httpx.

The market clock is frozen (``frozen`` fixture): time moves only when a test advances it, so each rule fires
exactly when the test says.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from support.emulator_wire import FROZEN_BOOT_S, advance, first_offer, instance, rent, set_faults

from skyward_ray.emulator.server import EmulatorServer

# Raw wire calls with no pacer: each test switches on the one fault it is about (the documented limits are tested in
# test_documented_limits.py), so the fixtures start with the limits off.
EMULATOR_RATE_LIMITS = "off"

STATE_FIELDS = ("actual_status", "intended_status", "cur_state", "next_state")
RATE_TEXT = "API requests too frequent endpoint threshold=3.0"


def boot(client: httpx.Client, instance_id: int) -> dict[str, Any]:
    advance(client, FROZEN_BOOT_S + 1)
    row = instance(client, instance_id)
    assert row is not None and row["actual_status"] == "running", row
    return row


def test_rate_limit_undocumented_floor_per_key_and_endpoint(frozen: EmulatorServer, frozen_api: httpx.Client) -> None:
    """``min_interval_s`` limits the endpoints Vast documents no limit for (none by default)."""
    set_faults(frozen_api, rate_limit={"mode": "documented", "min_interval_s": 5, "body": "text"})
    assert frozen_api.get("/api/v0/users/current/").status_code == 200
    limited = frozen_api.get("/api/v0/users/current/")
    assert limited.status_code == 429
    assert limited.text == "API requests too frequent: endpoint threshold=5.0"
    assert limited.headers["content-type"].startswith("text/plain")
    assert "Retry-After" not in limited.headers  # the docs say Vast sends none
    other_key = frozen_api.post("/_emulator/users/", json={"credit": 5}).json()["api_key"]
    assert httpx.get(f"{frozen.url}/api/v0/users/current/", params={"api_key": other_key}).status_code == 200
    set_faults(frozen_api, rate_limit={"min_interval_s": None})
    assert all(frozen_api.get("/api/v0/users/current/").status_code == 200 for _ in range(5))


@pytest.mark.parametrize(("style", "expected"), [
    ("detail", {"detail": RATE_TEXT}),
    ("json", {"success": False, "error": "rate_limit_exceeded", "msg": RATE_TEXT}),
])
def test_rate_limit_json_bodies_and_optional_retry_after(frozen_api: httpx.Client, style: str,
                                                         expected: dict[str, Any]) -> None:
    set_faults(frozen_api, rate_limit={"mode": "documented", "body": style, "retry_after": True})
    frozen_api.request("DELETE", "/api/v0/instances/1/", json={})
    limited = frozen_api.request("DELETE", "/api/v0/instances/1/", json={})
    assert limited.status_code == 429 and limited.json() == expected
    assert limited.headers["Retry-After"] == "3"  # only because the test asked for one


def test_rate_limit_per_endpoint_override(frozen_api: httpx.Client) -> None:
    set_faults(frozen_api, rate_limit={"mode": "documented", "per_endpoint": {"GET /api/v0/instances/{id}/": 0}})
    assert all(frozen_api.get("/api/v0/instances/1/").status_code == 200 for _ in range(3))
    frozen_api.get("/api/v1/instances/")
    assert frozen_api.get("/api/v1/instances/").status_code == 429
    counters = frozen_api.get("/_emulator/counters/").json()
    assert counters["statuses"]["GET /api/v1/instances/"] == {"200": 1, "429": 1}
    assert counters["rate_limited"] == {"interval": 1}
    assert counters["rate_limited_from"] == {"GET /api/v1/instances/": {"127.0.0.1": 1}}  # by client address


def test_rate_limit_random_rate_refuses_a_share_of_requests_whatever_the_pace(frozen_api: httpx.Client) -> None:
    set_faults(frozen_api, rate_limit={"mode": "off", "random_rate": 0.3})
    statuses = [frozen_api.get("/api/v0/users/current/").status_code for _ in range(400)]
    assert set(statuses) == {200, 429}
    assert 0.2 < statuses.count(429) / len(statuses) < 0.4, statuses.count(429)
    refused = frozen_api.get("/_emulator/counters/").json()["statuses"]["GET /api/v0/users/current/"]["429"]
    assert refused == statuses.count(429)
    set_faults(frozen_api, rate_limit={"random_rate": 0.0})
    assert all(frozen_api.get("/api/v0/users/current/").status_code == 200 for _ in range(50))


def test_search_quota(frozen: EmulatorServer, frozen_api: httpx.Client) -> None:
    set_faults(frozen_api, search_quota_per_day=2)
    for _ in range(2):
        assert frozen_api.post("/api/v0/bundles/", json={"limit": 1}).status_code == 200
    over = frozen_api.post("/api/v0/bundles/", json={"limit": 1})
    assert over.status_code == 429 and over.json()["error"] == "search_quota_exceeded"
    reset = int(over.headers["X-RateLimit-Reset"])
    now = frozen_api.get("/_emulator/clock/").json()["epoch"]
    assert reset % 86_400 == 0 and 0 < reset - now <= 86_400  # the next UTC midnight
    assert frozen_api.get("/api/v0/users/current/").status_code == 200  # only searches count
    advance(frozen_api, reset - now + 1)
    assert frozen_api.post("/api/v0/bundles/", json={"limit": 1}).status_code == 200


def test_random_5xx(frozen_api: httpx.Client) -> None:
    set_faults(frozen_api, error_5xx_rate=1.0)
    statuses = set()
    for _ in range(30):
        response = frozen_api.get("/api/v0/users/current/")
        statuses.add(response.status_code)
        if response.status_code == 500:
            assert response.json() == {"success": False, "error": "server_error", "msg": "Internal Server Error"}
        else:
            assert f"<h1>{response.status_code}" in response.text
    assert statuses <= {500, 502, 503, 504} and len(statuses) >= 2
    set_faults(frozen_api, error_5xx_rate=0.0)
    assert frozen_api.get("/api/v0/users/current/").status_code == 200


def test_lost_response_still_rents(frozen_api: httpx.Client) -> None:
    offer = first_offer(frozen_api, num_gpus=1)
    set_faults(frozen_api, lost_response_rate=1.0)
    lost = frozen_api.put(f"/api/v0/asks/{offer['id']}/", json={"image": "img", "label": "ghost"})
    assert lost.status_code == 504
    rows = frozen_api.get("/api/v1/instances/").json()["instances"]  # GETs are never lost
    assert [r["label"] for r in rows] == ["ghost"]


def test_latency_and_spikes(frozen_api: httpx.Client) -> None:
    set_faults(frozen_api, latency_ms=300)
    started = time.monotonic()
    frozen_api.get("/api/v0/users/current/")
    assert time.monotonic() - started >= 0.3
    set_faults(frozen_api, latency_ms=0, latency_spike_rate=1.0, latency_spike_ms=400)
    started = time.monotonic()
    frozen_api.get("/api/v0/users/current/")
    assert time.monotonic() - started >= 0.4


def test_offer_taken_between_search_and_rent(frozen_api: httpx.Client) -> None:
    offer = first_offer(frozen_api, num_gpus=1)
    machine = offer["machine_id"]

    def free_counts() -> list[int]:
        found = frozen_api.post("/api/v0/bundles/", json={"machine_id": {"eq": machine}, "limit": 50}).json()
        return sorted(o["num_gpus"] for o in found["offers"])

    before = free_counts()
    set_faults(frozen_api, offer_taken_rate=1.0, rival_hold_s=600)
    taken = frozen_api.put(f"/api/v0/asks/{offer['id']}/", json={"image": "img"})
    assert taken.status_code == 404
    assert taken.json() == {"success": False, "error": "invalid_args", "ask_id": offer["id"],
                            "msg": f"error 404/3603: no_such_ask Instance type by id {offer['id']} is not "
                                   "available."}
    assert max(free_counts(), default=0) == max(before) - 1  # the rival holds the GPU
    set_faults(frozen_api, offer_taken_rate=0.0)
    advance(frozen_api, 601)
    assert free_counts() == before


def test_outbid_by_rate_then_a_winning_bid_resumes(frozen_api: httpx.Client) -> None:
    offer = first_offer(frozen_api, num_gpus=1)
    iid = rent(frozen_api, offer, price=offer["min_bid"] * 1.1)
    boot(frozen_api, iid)
    set_faults(frozen_api, outbid_rate_per_hour=1e6)
    advance(frozen_api, 1)
    row = instance(frozen_api, iid)
    assert row is not None
    assert {row[field] for field in STATE_FIELDS} == {"stopped"}
    assert "outbid" in row["status_msg"] and row["ports"] is None
    set_faults(frozen_api, outbid_rate_per_hour=0)
    assert frozen_api.put(f"/api/v0/instances/bid_price/{iid}/", json={"client_id": "me", "price": 5.0}).json() == \
        {"success": True}
    assert instance(frozen_api, iid)["actual_status"] == "loading"  # type: ignore[index]
    boot(frozen_api, iid)


def test_outbid_by_admin_trigger(frozen_api: httpx.Client) -> None:
    offer = first_offer(frozen_api, num_gpus=1)
    iid = rent(frozen_api, offer, price=offer["min_bid"] * 1.1)
    boot(frozen_api, iid)
    answer = frozen_api.post(f"/_emulator/instances/{iid}/outbid/", json={"rival_bid": 9.5}).json()
    assert answer == {"success": True, "rival_bid": 9.5}
    row = instance(frozen_api, iid)
    assert row is not None and {row[f] for f in STATE_FIELDS} == {"stopped"} and "outbid" in row["status_msg"]
    on_demand = rent(frozen_api, first_offer(frozen_api, num_gpus=1))
    assert frozen_api.post(f"/_emulator/instances/{on_demand}/outbid/", json={}).status_code == 400


@pytest.mark.parametrize(("kind", "status", "message"), [
    ("exited", "exited", "exited"),
    ("oci_error", "created", ": OCI runtime create failed:"),
    ("stuck_loading", "loading", None),
])
def test_host_failures(frozen_api: httpx.Client, kind: str, status: str, message: str | None) -> None:
    iid = rent(frozen_api, first_offer(frozen_api, num_gpus=1))
    boot(frozen_api, iid)
    assert frozen_api.post(f"/_emulator/instances/{iid}/fail/", json={"kind": kind}).json()["success"]
    advance(frozen_api, FROZEN_BOOT_S * 3)  # time does not heal it
    row = instance(frozen_api, iid)
    assert row is not None and row["actual_status"] == status and row["intended_status"] == "running"
    assert row["ports"] is None
    if message is None:
        assert row["status_msg"] is None
    else:
        assert message in row["status_msg"]


def test_host_offline_takes_the_machine_and_its_offers(frozen_api: httpx.Client) -> None:
    offer = first_offer(frozen_api, num_gpus=1)
    iid = rent(frozen_api, offer)
    boot(frozen_api, iid)
    frozen_api.post(f"/_emulator/instances/{iid}/fail/", json={"kind": "offline"})
    row = instance(frozen_api, iid)
    assert row is not None and row["actual_status"] == "offline"
    gone = frozen_api.post("/api/v0/bundles/", json={"machine_id": {"eq": offer["machine_id"]}}).json()
    assert gone == {"offers": []}
    bad = frozen_api.post(f"/_emulator/instances/{iid}/fail/", json={"kind": "melted"})
    assert bad.status_code == 400 and "allowed: exited, offline, stuck_loading, oci_error" in bad.json()["msg"]


def test_random_host_failures_and_boot_failures(frozen_api: httpx.Client) -> None:
    running = rent(frozen_api, first_offer(frozen_api, num_gpus=1))
    boot(frozen_api, running)
    set_faults(frozen_api, host_failure_rate_per_hour=1e6, host_failure_kinds=["exited"])
    advance(frozen_api, 1)
    assert instance(frozen_api, running)["actual_status"] == "exited"  # type: ignore[index]
    set_faults(frozen_api, host_failure_rate_per_hour=0, boot_failure_rate=1.0, host_failure_kinds=["oci_error"])
    booting = rent(frozen_api, first_offer(frozen_api, num_gpus=2))
    advance(frozen_api, FROZEN_BOOT_S + 1)
    row = instance(frozen_api, booting)
    assert row is not None and row["actual_status"] == "created" and ": OCI runtime create failed:" in row["status_msg"]


def test_price_drift(frozen_api: httpx.Client) -> None:
    def prices() -> dict[int, float]:
        found = frozen_api.post("/api/v0/bundles/", json={"limit": 500, "order": [["id", "asc"]]}).json()["offers"]
        return {o["id"]: o["dph_base"] for o in found}

    before = prices()
    set_faults(frozen_api, price_drift_pct_per_hour=40)
    advance(frozen_api, 2 * 3600)
    after = prices()
    common = before.keys() & after.keys()
    moved = [i for i in common if after[i] != before[i]]
    assert len(moved) > 0.9 * len(common)
    assert all(0.5 * before[i] - 1e-3 <= after[i] <= 2 * before[i] + 1e-3 for i in common)


def test_credit_drain_stops_instances_at_zero(frozen_api: httpx.Client) -> None:
    frozen_api.put("/_emulator/credit/", json={"credit": 2.0})
    offer = first_offer(frozen_api, num_gpus=1)
    iid = rent(frozen_api, offer)
    boot(frozen_api, iid)
    set_faults(frozen_api, credit_drain_multiplier=100)
    advance(frozen_api, 3600)
    row = instance(frozen_api, iid)
    assert row is not None and {row[f] for f in STATE_FIELDS} == {"stopped"} and "credit" in row["status_msg"]
    assert frozen_api.get("/api/v0/users/current/").json()["credit"] <= 0
    refused = frozen_api.put(f"/api/v0/asks/{first_offer(frozen_api, num_gpus=1)['id']}/", json={"image": "i"})
    assert refused.status_code == 400 and refused.json()["error"] == "insufficient_credit"
    spent = frozen_api.get("/_emulator/state/").json()["ledger"][0]["cost"]
    assert spent >= 2.0
