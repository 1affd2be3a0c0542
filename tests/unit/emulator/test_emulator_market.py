"""Market rules without HTTP: the offer rule under rentals, the lifecycle on the clock and what the runtime is asked,
bids, credit, overlays, keys, the ledger."""

from __future__ import annotations

from typing import Any

import pytest

from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.errors import MarketError
from skyward_ray.emulator.faults import FaultConfig
from skyward_ray.emulator.market import Market
from skyward_ray.emulator.parse import parse_env
from skyward_ray.emulator.records import Caller
from skyward_ray.emulator.search import offer_id
from skyward_ray.emulator.testing import RecordingRuntime, make_machine, make_scenario

M, CLUSTER_M, OTHER_CLUSTER_M = 20001, 20002, 20003
BOOT = 10.0


@pytest.fixture
def runtime() -> RecordingRuntime:
    return RecordingRuntime()


@pytest.fixture
def market(runtime: RecordingRuntime) -> Market:
    machines = [
        make_machine(M, num_gpus=8, gpu_price=0.4, bid_price=0.2),
        make_machine(CLUSTER_M, num_gpus=4, cluster_id=700),
        make_machine(OTHER_CLUSTER_M, num_gpus=4, cluster_id=701),
    ]
    return Market(make_scenario(*machines), clock=Clock(scale=0), runtime=runtime, boot_delay_s=BOOT)


@pytest.fixture
def me(market: Market) -> Caller:
    caller = market.authenticate(market.default_user.api_key)
    assert caller is not None
    return caller


def counts(market: Market, machine_id: int) -> list[int]:
    return sorted(o["num_gpus"] for o in market.search({"machine_id": {"eq": machine_id}}, None)["offers"])


def row(market: Market, caller: Caller, instance_id: int) -> dict[str, Any]:
    found = market.get_instance(caller, instance_id)["instances"]
    assert found is not None
    return found


def rent(market: Market, caller: Caller, machine_id: int, n: int, **body: Any) -> int:
    return int(market.create_instance(caller, offer_id(machine_id, n), {"image": "img", **body})["new_contract"])


def test_rentals_follow_the_offer_rule(market: Market, me: Caller) -> None:
    assert counts(market, M) == [1, 2, 4, 8]
    first = rent(market, me, M, 1)
    assert counts(market, M) == [1, 2, 4, 7]
    with pytest.raises(MarketError) as gone:
        rent(market, me, M, 8)
    assert gone.value.status == 404
    assert gone.value.body == {"success": False, "error": "invalid_args", "ask_id": offer_id(M, 8),
                               "msg": f"error 404/3603: no_such_ask Instance type by id {offer_id(M, 8)} is not "
                                      "available."}
    rent(market, me, M, 4)  # still rentable: 7 free >= 4; the same id as before the first rental
    assert counts(market, M) == [1, 2, 3]
    market.destroy_instance(me, first)
    assert counts(market, M) == [1, 2, 4]


def test_lifecycle_on_the_clock(market: Market, me: Caller, runtime: RecordingRuntime) -> None:
    iid = rent(market, me, M, 2, env={"-p 8265:8265": "1", "FOO": "bar"})
    first = row(market, me, iid)
    assert first["actual_status"] is None and first["intended_status"] == "running"
    assert first["ssh_host"] and first["ssh_port"]  # early, as Vast does
    assert first["ports"] is None and first["public_ipaddr"] is None
    market.clock.advance(BOOT * 0.5)
    assert row(market, me, iid)["actual_status"] == "loading"
    assert runtime.specs == []
    market.clock.advance(BOOT)
    running = row(market, me, iid)
    assert running["actual_status"] == "running"
    assert set(running["ports"]) == {"22/tcp", "8265/tcp"}
    for bindings in running["ports"].values():
        assert isinstance(bindings[0]["HostPort"], str) and bindings[0]["HostPort"].isdigit()
    assert running["public_ipaddr"] == "198.51.100.10"
    assert (running["ssh_host"], str(running["ssh_port"])) == (running["public_ipaddr"],
                                                                running["ports"]["22/tcp"][0]["HostPort"])
    [spec] = runtime.specs
    assert spec.instance_id == iid and spec.num_gpus == 2
    assert spec.env["CONTAINER_ID"] == str(iid)
    assert spec.env["FOO"] == "bar" and "-p 8265:8265" not in spec.env
    assert spec.env["VAST_TCP_PORT_22"] == running["ports"]["22/tcp"][0]["HostPort"]
    assert spec.env["VAST_TCP_PORT_8265"] == running["ports"]["8265/tcp"][0]["HostPort"]
    assert spec.port_map == {k: int(v[0]["HostPort"]) for k, v in running["ports"].items()}
    assert market.default_user.api_key not in spec.env.values()
    assert market.default_user.api_key not in repr(spec)


def test_runtime_failure_shows_as_exited(runtime: RecordingRuntime, market: Market, me: Caller) -> None:
    runtime.fail_start = "sshd did not come up"
    iid = rent(market, me, M, 1)
    market.clock.advance(BOOT * 2)
    got = row(market, me, iid)
    assert (got["actual_status"], got["status_msg"]) == ("exited", "sshd did not come up")


def test_container_key_only_stops_or_destroys_its_instance(market: Market, me: Caller,
                                                           runtime: RecordingRuntime) -> None:
    created = market.create_instance(me, offer_id(M, 1), {"image": "img"})
    other = rent(market, me, M, 2)
    scoped = market.authenticate(created["instance_api_key"])
    assert scoped is not None and scoped.instance_scope == created["new_contract"]
    for forbidden in (lambda: market.get_instance(scoped, created["new_contract"]),
                      lambda: market.update_instance(scoped, created["new_contract"], {"label": "x"}),
                      lambda: market.update_instance(scoped, created["new_contract"], {"state": "running"}),
                      lambda: market.destroy_instance(scoped, other),
                      lambda: market.create_instance(scoped, offer_id(M, 1), {"image": "img"})):
        with pytest.raises(MarketError) as info:
            forbidden()
        assert info.value.status == 403
    assert market.update_instance(scoped, created["new_contract"], {"state": "stopped"})["success"]
    assert market.destroy_instance(scoped, created["new_contract"])["success"]
    assert ("stop", (created["new_contract"],)) in runtime.calls
    assert ("destroy", (created["new_contract"],)) in runtime.calls
    assert market.authenticate(created["instance_api_key"]) is None  # the key dies with the instance


def test_bid_below_min_creates_a_stopped_instance_and_an_error(market: Market, me: Caller) -> None:
    with pytest.raises(MarketError) as info:
        market.create_instance(me, offer_id(M, 1), {"image": "img", "price": 0.05})
    body = info.value.body
    assert info.value.status == 400 and isinstance(body, dict)
    assert body["success"] is False and body["error"] == "invalid_price"
    got = row(market, me, body["new_contract"])
    assert {got[k] for k in ("actual_status", "intended_status", "cur_state", "next_state")} == {"stopped"}
    assert got["is_bid"] is True
    market.change_bid(me, body["new_contract"], {"client_id": "me", "price": 0.5})
    assert row(market, me, body["new_contract"])["actual_status"] == "loading"


def test_change_bid_rules(market: Market, me: Caller) -> None:
    on_demand = rent(market, me, M, 1)
    with pytest.raises(MarketError, match="on-demand"):
        market.change_bid(me, on_demand, {"price": 1.0})
    bid = rent(market, me, M, 2, price=0.5)
    with pytest.raises(MarketError, match=r"bid price >= 0.001"):
        market.change_bid(me, bid, {"price": 0})
    with pytest.raises(MarketError) as missing:
        market.change_bid(me, 1, {"price": 1})
    assert missing.value.status == 404
    assert market.change_bid(me, bid, {"price": None})["success"]  # "a winning bid"
    assert row(market, me, bid)["dph_total"] >= 0.4


def test_insufficient_credit(market: Market, me: Caller) -> None:
    market.set_credit(0.1)
    with pytest.raises(MarketError) as info:
        rent(market, me, M, 8)
    assert info.value.status == 400 and info.value.body["error"] == "insufficient_credit"  # type: ignore[index]


def test_credit_drains_and_stops_everything_at_zero(market: Market, me: Caller) -> None:
    market.set_credit(1.0)
    iid = rent(market, me, M, 1)  # $0.4/h plus storage
    market.clock.advance(BOOT + 1)
    assert row(market, me, iid)["actual_status"] == "running"
    market.clock.advance(3 * 3600)
    got = row(market, me, iid)
    assert {got[k] for k in ("actual_status", "intended_status", "cur_state", "next_state")} == {"stopped"}
    assert "credit" in got["status_msg"]
    assert market.current_user(me)["credit"] <= 0
    with pytest.raises(MarketError):
        market.update_instance(me, iid, {"state": "running"})


def test_overlays(market: Market, me: Caller, runtime: RecordingRuntime) -> None:
    market.create_overlay(me, {"cluster_id": 700, "name": "ray-a"})
    [overlay] = market.list_overlays(me)
    assert overlay["internal_subnet"].endswith(".0/24") and overlay["cluster_id"] == 700
    first = rent(market, me, CLUSTER_M, 1, env={"-n ray-a": "1"})
    second = rent(market, me, CLUSTER_M, 2)
    market.join_overlay(me, {"name": "ray-a", "instance_id": second})
    base = overlay["internal_subnet"].rsplit(".", 1)[0]
    for iid in (first, second):  # host-side addresses only: the overlay address lives on eth0 in the instance
        assert not any(a.startswith(base) for a in row(market, me, iid)["local_ipaddrs"].split())
    assert market.list_overlays(me)[0]["instances"] == [first, second]
    with pytest.raises(MarketError, match="not in cluster 700"):
        market.join_overlay(me, {"name": "ray-a", "instance_id": rent(market, me, OTHER_CLUSTER_M, 1)})
    with pytest.raises(MarketError, match="outside that cluster"):
        rent(market, me, M, 1, env="-n ray-a")
    with pytest.raises(MarketError, match="lowercase"):
        market.create_overlay(me, {"cluster_id": 700, "name": "Bad_Name"})
    market.clock.advance(BOOT * 2)
    market.tick()
    joins = [args for name, args in runtime.calls if name == "join_overlay"]
    assert (overlay["overlay_id"], first, f"{base}.1", 24) in joins
    assert (overlay["overlay_id"], second, f"{base}.2", 24) in joins
    assert runtime.eth0 == {first: f"{base}.1/24", second: f"{base}.2/24"}
    market.set_faults(market.faults.merged({"overlay_address_in_local_ipaddrs": True}))  # the old, inferred way
    assert row(market, me, first)["local_ipaddrs"].split()[0] == f"{base}.1"
    market.delete_overlay(me, {"overlay_name": "ray-a"})
    assert market.list_overlays(me) == []
    assert row(market, me, first)["actual_status"] == "running"  # members are not destroyed


def test_env_string_and_dict_forms() -> None:
    text = parse_env("-e TZ=UTC -e 'GREETING=hi there' -p 8080:8080 -p 9000:9000/udp -n ov-1 -h myhost")
    assert text.variables == {"TZ": "UTC", "GREETING": "hi there"}
    assert text.ports == ["8080/tcp", "9000/udp"] and text.overlays == ["ov-1"] and text.hostname == "myhost"
    as_dict = parse_env({"TZ": "UTC", "-p 8080:8080": "1", "-n ov-1": "1"})
    assert as_dict.variables == {"TZ": "UTC"} and as_dict.ports == ["8080/tcp"] and as_dict.overlays == ["ov-1"]
    assert as_dict.pairs == [["TZ", "UTC"], ["-p 8080:8080", "1"], ["-n ov-1", "1"]]
    assert parse_env({"-p 70000:70000": "1"}).ports == ["70000/tcp"]  # an identity request
    for bad in ("-p 65536:65536", "-p 69999:69999", "-p 0:0", "-p 80:80/sctp"):
        with pytest.raises(MarketError, match="port request"):
            parse_env({bad: "1"})


def test_ledger_keeps_destroyed_instances(market: Market, me: Caller) -> None:
    iid = rent(market, me, M, 1, label="keep-me", price=0.3)
    market.update_instance(me, iid, {"label": "renamed"})
    market.destroy_instance(me, iid)
    assert market.get_instance(me, iid) == {"instances": None}
    [entry] = market.dump()["ledger"]
    assert entry["instance_id"] == iid and entry["is_bid"] is True and entry["price"] == 0.3
    assert entry["label"] == "renamed" and entry["destroyed_at"] >= entry["created_at"]
    with pytest.raises(MarketError) as again:
        market.destroy_instance(me, iid)
    assert again.value.status == 404 and again.value.body["error"] == "no_such_instance"  # type: ignore[index]


def test_users_never_see_keys(market: Market, me: Caller) -> None:
    user = market.current_user(me)
    dump = repr(market.dump())
    assert market.default_user.api_key not in repr(user) and market.default_user.api_key not in dump
    assert "api_key" not in user


def test_clock_scale_and_advance() -> None:
    fake = [100.0]
    clock = Clock(scale=2.0, monotonic=lambda: fake[0])
    fake[0] += 5
    assert clock.now() == pytest.approx(10.0)
    clock.scale = 0
    fake[0] += 50
    assert clock.now() == pytest.approx(10.0)
    assert clock.advance(30) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="negative"):
        clock.advance(-1)


def test_fault_config_patches_validate() -> None:
    merged = FaultConfig().merged({"rate_limit": {"enabled": True}, "error_5xx_rate": 0.5})
    assert merged.rate_limit.enabled and merged.rate_limit.min_interval_s is None and merged.error_5xx_rate == 0.5
    assert merged.rate_limit.mode == "documented" and merged.rate_limit.interval("PUT /api/v0/asks/{id}/") == 4.5
    scaled = merged.merged({"rate_limit": {"mode": "x0.1"}})
    assert scaled.rate_limit.mode == "x0.1" and scaled.rate_limit.interval("GET /api/v0/instances/{id}/") == 0.2
    assert scaled.rate_limit.penalty_s == 1.2 and scaled.rate_limit.search_window_s == 6.0
    assert scaled.merged({"rate_limit": {"mode": "off"}}).rate_limit.enabled is False
    assert FaultConfig.model_validate(scaled.model_dump(mode="json")) == scaled  # a dump (with "mode") validates back
    with pytest.raises(ValueError, match=r"allowed: documented \| off \| x<scale>"):
        FaultConfig().merged({"rate_limit": {"mode": "x-1"}})
    with pytest.raises(ValueError, match="error_5xx_rate"):
        FaultConfig().merged({"error_5xx_rate": 2})
    with pytest.raises(ValueError, match="nonsense"):
        FaultConfig().merged({"nonsense": 1})


def test_account_keys_never_reach_an_instance(market: Market, me: Caller, runtime: RecordingRuntime) -> None:
    account_key = market.default_user.api_key
    clean = rent(market, me, M, 1, env={"A": "1"})
    assert market.dump()["account_key_leaks"] == 0
    leaky = rent(market, me, M, 2, env={"VAST_API_KEY": account_key, "B": "2"})
    assert market.dump()["account_key_leaks"] == 1
    market.clock.advance(BOOT * 2)
    market.tick()
    specs = {spec.instance_id: spec for spec in runtime.specs}
    assert specs[clean].env["A"] == "1"
    assert specs[leaky].env["B"] == "2" and "VAST_API_KEY" not in specs[leaky].env
    assert all(account_key not in value for spec in specs.values() for value in spec.env.values())
