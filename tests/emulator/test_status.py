"""``skyward-ray status`` against the emulator: two clusters, an orphan, an outbid node and a failed node, in table and
JSON, with the spend checked against the emulator's ledger (what it actually billed each instance).

The market is set up in-process (the emulator's own ``Market`` calls), so only status itself talks HTTP, under Vast's
documented rate limits, and the test can count its calls. The clock is frozen and advanced by hand: an hour of renting
takes no time, and status reads "now" from the same emulated clock that stamps ``start_date``. The emulator keeps
Vast's documented rate limits at their real intervals (not this directory's scaled fixtures): status makes one list
call a run, and the client's pacer spaces the few runs of one test as Vast requires.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

from skyward_ray.cli import main
from skyward_ray.cli import status as status_cli
from skyward_ray.emulator.clock import Clock
from skyward_ray.emulator.faults import FailureKind
from skyward_ray.emulator.market import Market
from skyward_ray.emulator.records import Caller
from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import running_emulator
from skyward_ray.provider.tags import TAG_OVERLAY_SUBNET, TAG_PHYSICAL_CLUSTER, encode_label

BOOT_S = 30.0
RUN_S = 3600.0  # every node runs this long before the outbid and the failure
AFTER_S = 1800.0  # and the clock moves on this long after them


def _label(cluster: str, kind: str, **extra: str) -> str:
    return encode_label(cluster, {TAG_RAY_NODE_KIND: kind, TAG_RAY_USER_NODE_TYPE: f"{kind}_type", **extra})


def _rent(market: Market, caller: Caller, offer: dict[str, Any], label: str, *, bid: bool,
          env: dict[str, str] | None = None) -> int:
    body: dict[str, Any] = {"image": "vastai/base-image", "label": label, "disk": 20, "env": env or {}}
    if bid:
        body["price"] = round(float(offer["min_bid"]) * 1.5, 4)
    return int(market.create_instance(caller, int(offer["id"]), body)["new_contract"])


@pytest.fixture
def account() -> Iterator[tuple[EmulatorServer, dict[str, int]]]:
    """alpha: head + 2 bid workers on one physical cluster and overlay (one worker outbid); beta: head + a failed
    worker; an orphan worker of 'gamma' (no head); an instance of someone else's making (not ours)."""
    with running_emulator(seed=0, boot_delay_s=BOOT_S, clock=Clock(scale=0)) as emu:
        market = emu.market
        caller = Caller(market.default_user)
        offers = market.search({"rentable": {"eq": True}, "cluster_id": {"neq": None}, "num_gpus": {"eq": 1},
                                "order": [["dph_total", "asc"]], "limit": 200, "type": "bid"}, caller)["offers"]
        by_cluster: dict[int, list[dict[str, Any]]] = {}
        for row in offers:
            by_cluster.setdefault(int(row["cluster_id"]), []).append(row)
        physical, rows = next((cid, rows) for cid, rows in by_cluster.items() if len(rows) >= 3)
        others = [row for row in offers if int(row["cluster_id"]) != physical]
        market.create_overlay(caller, {"name": "skyr-alpha", "cluster_id": physical})
        subnet = next(o.internal_subnet for o in market.overlays.values() if o.name == "skyr-alpha")
        on_overlay = {"-n skyr-alpha": "1"}
        ours = {TAG_PHYSICAL_CLUSTER: str(physical), TAG_OVERLAY_SUBNET: subnet}
        ids = {
            "alpha_head": _rent(market, caller, rows[0], _label("alpha", "head", **ours), bid=False, env=on_overlay),
            "alpha_w1": _rent(market, caller, rows[1], _label("alpha", "worker", **ours), bid=True, env=on_overlay),
            "alpha_w2": _rent(market, caller, rows[2], _label("alpha", "worker", **ours), bid=True, env=on_overlay),
            "beta_head": _rent(market, caller, others[0], _label("beta", "head"), bid=False),
            "beta_w1": _rent(market, caller, others[1], _label("beta", "worker"), bid=False),
            "orphan": _rent(market, caller, others[2], _label("gamma", "worker"), bid=True),
            "not_ours": _rent(market, caller, others[3], "my notebook", bid=False),
        }
        market.clock.advance(BOOT_S + 1)
        market.tick()
        market.clock.advance(RUN_S)
        market.tick()
        market.trigger_outbid(ids["alpha_w2"])
        market.trigger_failure(ids["beta_w1"], FailureKind.EXITED)
        market.clock.advance(AFTER_S)
        market.tick()
        yield emu, ids


@pytest.fixture
def run_status(account: tuple[EmulatorServer, dict[str, int]], monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> Any:
    emu, _ = account
    monkeypatch.setenv("VAST_URL", emu.url)
    monkeypatch.setenv("VAST_API_KEY", emu.api_key)
    # The emulated clock stamps start_date; status must read "now" on that clock, not the machine's.
    monkeypatch.setattr(status_cli, "_now", lambda: emu.market.clock.epoch())

    def run(*argv: str) -> str:
        httpx.delete(f"{emu.admin_url}/counters/").raise_for_status()
        assert main(["status", *argv]) == 0
        counted = httpx.get(f"{emu.admin_url}/counters/").json()["requests"]
        assert counted == {"GET /api/v1/instances/": 1}, counted  # one list call, nothing per node
        return capsys.readouterr().out

    return run


def _ledger(emu: EmulatorServer) -> dict[int, dict[str, Any]]:
    return {entry["instance_id"]: entry for entry in emu.market.dump()["ledger"]}


def test_json_clusters_orphans_trouble_and_spend_against_the_ledger(
    account: tuple[EmulatorServer, dict[str, int]], run_status: Any
) -> None:
    emu, ids = account
    data = json.loads(run_status("--json"))
    alpha, beta = data["clusters"]
    assert [alpha["name"], beta["name"]] == ["alpha", "beta"]
    assert alpha["nodes"] == {"head": 1, "workers": 2, "on_demand": 1, "bid": 2}
    assert beta["nodes"] == {"head": 1, "workers": 1, "on_demand": 2, "bid": 0}
    assert len(alpha["physical_clusters"]) == 1 and alpha["overlays"] and "skyr-alpha" in alpha["overlays"][0]
    assert sum(alpha["gpus"].values()) == 3
    assert [(t["id"], t["reason"].split(" ")[0]) for t in alpha["trouble"]] == [(ids["alpha_w2"], "outbid")]
    assert [(t["id"], t["reason"]) for t in beta["trouble"]] == [
        (ids["beta_w1"], "failed (exited: container exited unexpectedly (exit code 137))")]
    assert [(o["id"], o["cluster"], o["kind"]) for o in data["orphans"]] == [(ids["orphan"], "gamma", "worker")]
    listed = {node["id"] for cluster in data["clusters"] for node in cluster["instances"]} | {ids["orphan"]}
    assert ids["not_ours"] not in listed and len(listed) == 6

    ledger = _ledger(emu)
    state = {row["id"]: row for row in emu.market.dump()["instances"]}
    nodes = {node["id"]: node for cluster in data["clusters"] for node in cluster["instances"]}
    nodes[ids["orphan"]] = data["orphans"][0]
    age_h = (BOOT_S + 1 + RUN_S + AFTER_S) / 3600
    for instance_id, node in nodes.items():
        billed = ledger[instance_id]["cost"]
        row = state[instance_id]
        storage, gpu = row["storage_total_cost"], row["dph_total"] - row["storage_total_cost"]
        assert node["age_s"] == pytest.approx(age_h * 3600)
        if node["state"] == "running":
            # The emulator bills by tick: the boot tick may count at either rate, so allow one boot's GPU time.
            assert not node["spent_is_floor"]
            assert node["spent"] == pytest.approx(billed, abs=gpu * (BOOT_S + 1) / 3600 + 1e-5)
            assert node["per_hour"] == pytest.approx(row["dph_total"])
        else:
            # Stopped: Vast lists no run time for it, so status counts storage only and says it is a floor; the
            # ledger also holds the GPU hour it ran before the outbid or failure.
            assert node["spent_is_floor"]
            assert node["spent"] == pytest.approx(storage * age_h, abs=1e-5)
            assert node["spent"] == pytest.approx(billed - gpu * RUN_S / 3600, abs=gpu * (BOOT_S + 1) / 3600 + 1e-5)
            assert node["per_hour"] == pytest.approx(storage)
    total = sum(node["spent"] for node in nodes.values())
    assert data["total"]["spent"] == pytest.approx(total, abs=1e-5) and data["total"]["spent_is_floor"]
    assert data["total"]["instances"] == 6 and data["total"]["clusters"] == 2


def test_table(account: tuple[EmulatorServer, dict[str, int]], run_status: Any) -> None:
    _, ids = account
    out = run_status()
    lines = out.splitlines()
    assert lines[0].split() == ["CLUSTER", "NODES", "GPUS", "PHYSICAL", "OVERLAY", "$/H", "NOW", "SPENT", "AGE"]
    assert lines[1].startswith("alpha ") and "1 head, 2 workers (1 on-demand, 2 bid)" in lines[1]
    assert "skyr-alpha" in lines[1] and " 1h30m" in lines[1] and ">=$" in lines[1]
    assert lines[2].startswith("beta ") and "1 head, 1 worker (2 on-demand, 0 bid)" in lines[2]
    assert f"  alpha: instance {ids['alpha_w2']} (worker): outbid" in out
    assert f"  beta: instance {ids['beta_w1']} (worker): failed (exited: container exited" in out
    assert f"  instance {ids['orphan']}: cluster 'gamma', worker" in out
    assert lines[-1].startswith("total: 2 clusters, 6 instances, $")


def test_one_cluster(account: tuple[EmulatorServer, dict[str, int]], run_status: Any) -> None:
    _, ids = account
    table = run_status("--cluster", "alpha").splitlines()
    assert table[1].startswith("alpha ") and table[2].split()[:3] == ["INSTANCE", "KIND", "TYPE"]
    shown = [line.split() for line in table[3:6]]
    assert [(int(r[0]), r[1], r[3]) for r in shown] == [(ids["alpha_head"], "head", "on-demand"),
                                                        (ids["alpha_w1"], "worker", "bid"),
                                                        (ids["alpha_w2"], "worker", "bid")]
    assert "stopped" in shown[2] and any(token.startswith(">=$") for token in shown[2])
    assert "running" in shown[0] and not any(token.startswith(">=$") for token in shown[0])
    data = json.loads(run_status("--cluster", "beta", "--json"))
    assert [c["name"] for c in data["clusters"]] == ["beta"] and data["orphans"] == []
    data = json.loads(run_status("--cluster", "gamma", "--json"))
    assert data["clusters"] == [] and [o["cluster"] for o in data["orphans"]] == ["gamma"]


def test_loading_too_long_is_trouble(account: tuple[EmulatorServer, dict[str, int]], run_status: Any) -> None:
    emu, _ = account
    caller = Caller(emu.market.default_user)
    offer = emu.market.search({"rentable": {"eq": True}, "order": [["dph_total", "asc"]], "limit": 1}, caller)
    stuck = _rent(emu.market, caller, offer["offers"][0], _label("beta", "worker"), bid=False)
    emu.market.trigger_failure(stuck, FailureKind.STUCK_LOADING)
    emu.market.clock.advance(1000)
    data = json.loads(run_status("--cluster", "beta", "--json", "--loading-timeout", "900"))
    reasons = {t["id"]: t["reason"] for t in data["clusters"][0]["trouble"]}
    assert reasons[stuck].startswith("loading for 16m (over 15m)")
