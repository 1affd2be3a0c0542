"""``max_hourly_cost`` where it binds: a cap with room for the target and almost nothing else, under churn.

The soak's cap leaves room for its churn (it must converge); this one does not. Workers are outbid, scaled down and
up again while the API fails 10% of requests (5xx, some after the fact), so replacements are rented while their
predecessors are being destroyed. What the emulator bills (sampled from its ledger) must never exceed the cap: a
node the provider stopped counting must also have stopped costing.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.autoscaler.node_launch_exception import NodeLaunchException
from support.emulator_chaos import ChaosActor, FailNext, Sampler, admin, overlay_address
from support.ray_v2_driver import MiniAutoscaler, ProviderFactory, ray_up, spot_cluster

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import running_emulator, wait_until
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.vast.client import VastClient

CLUSTER = spot_cluster("budget")
TARGET = 4


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with running_emulator(seed=11, boot_delay_s=0.3, rate_limits="documented") as emu:
        yield emu


def provider_config(emulator: EmulatorServer, tmp_path: Path) -> dict[str, Any]:
    """The provider section both budget tests start from: a 0600 key file, fast refreshes, an unbounded cap (each
    test sets the binding one after learning the market's prices)."""
    key_file = tmp_path / "key"
    key_file.write_text(emulator.api_key)
    key_file.chmod(0o600)
    return {"type": "external", "module": "skyward_ray.provider.VastNodeProvider", "api_url": emulator.url,
            "api_key_file": str(key_file), "cache_ttl_s": 0.25, "tag_flush_delay_s": 0.1, "ssh_proxy": False,
            "min_reliability": 0.9, "max_hourly_cost": 100.0,
            "node_types": {"head": {"kind": "head", "node_config": CLUSTER.head_config},
                           "gpu": {"kind": "worker", "max_workers": TARGET, "node_config": CLUSTER.worker_config}}}


@pytest.mark.timeout(300)
def test_the_billed_rate_never_exceeds_a_binding_cap(emulator: EmulatorServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = provider_config(emulator, tmp_path)
    # Learn the market's prices with an unbounded cap: the head, then the target's workers.
    probe = ProviderFactory(config, CLUSTER, emulator.api_key)
    factory: ProviderFactory | None = None
    scaler: MiniAutoscaler | None = None
    chaos: ChaosActor | None = None
    sampler = Sampler(emulator.url, CLUSTER.name, interval_s=0.1)
    try:
        head = ray_up(probe.new(), CLUSTER)
        first = probe.new()
        for index in range(TARGET):
            first.create_node_with_resources_and_labels(
                CLUSTER.worker_config, CLUSTER.worker_tags(f"00000000-0000-0000-0000-{index:012d}"), 1, {}, {})
        rates = sampler.sample()
        cap = round(rates.committed_dph * 1.05, 4)  # the target fits; one extra worker never does
        worker_prices = sorted(row["price"] for row in rates.rows if row["id"] != int(head))
        assert cap - rates.committed_dph < worker_prices[0], "the cap must not leave room for a fifth worker"
        first.close()

        factory = ProviderFactory({**config, "max_hourly_cost": cap}, CLUSTER, emulator.api_key)
        admin(emulator.url, "PUT", "faults/", json={"error_5xx_rate": 0.1, "lost_response_rate": 0.05})
        sampler.start()
        scaler = MiniAutoscaler(factory.new, CLUSTER, interval_s=0.2, eth0=overlay_address(emulator.url, sampler))
        scaler.set_target(TARGET)
        scaler.start()
        chaos = ChaosActor(emulator.url, sampler, CLUSTER.name, head, seed=3, interval_s=0.5, outbid_p=0.5,
                           failure_p=0.0)
        chaos.start()
        for target in (2, TARGET, 1, TARGET):  # scale-downs destroy while the next scale-up rents
            time.sleep(4)
            scaler.set_target(target)
        time.sleep(4)
    finally:
        if chaos is not None:
            chaos.stop()
        if scaler is not None:
            scaler.stop()
        sampler.stop()
        admin(emulator.url, "PUT", "faults/", json={"error_5xx_rate": 0.0, "lost_response_rate": 0.0})
        if factory is not None:
            factory.close()  # flushes pending tag writes while the emulator still answers
        down = probe.new()
        down.terminate_nodes(down.non_terminated_nodes({}))
        down.cleanup_cluster_resources()
        probe.close()

    over = [(round(s.at - sampler.samples[0].at, 2), s.billed_dph, s.rows) for s in sampler.samples
            if s.billed_dph > cap + 1e-6]
    worst = max(s.billed_dph for s in sampler.samples)
    refused = scaler.stats.launch_failures.get("budget", 0) if scaler else 0
    with capsys.disabled():
        print("\nBUDGET " + json.dumps({"max_hourly_cost": cap, "max_billed_dph": round(worst, 4),
                                        "samples_over": len(over), "launches_refused_by_budget": refused,
                                        "outbids": chaos.counts.outbids if chaos else 0}), flush=True)
    assert refused > 0, "the cap never bound: this test proves nothing"
    assert not over, f"billed above max_hourly_cost {cap}: {over[:3]}"


def test_a_node_whose_destroy_failed_still_counts_against_the_cap(emulator: EmulatorServer, tmp_path: Path) -> None:
    """Terminating a node whose destroy keeps failing (the API down for that call) leaves it running and billing;
    until a list shows it gone, a new rental must not spend its share of ``max_hourly_cost``."""
    config = provider_config(emulator, tmp_path)
    probe = ProviderFactory(config, CLUSTER, emulator.api_key)
    sampler = Sampler(emulator.url, CLUSTER.name)
    transport = FailNext()
    client = VastClient(api_key=emulator.api_key, base_url=emulator.url, transport=transport, retry_deadline_s=1,
                        backoff_base_s=0.05)
    provider: VastNodeProvider | None = None
    try:
        ray_up(probe.new(), CLUSTER)
        first = probe.new()
        workers = [node for index in range(2) for node in first.create_node_with_resources_and_labels(
            CLUSTER.worker_config, CLUSTER.worker_tags(f"00000000-0000-0000-0000-{index:012d}"), 1, {}, {}) or {}]
        wait_until(lambda: all(first.is_running(n) for n in workers), timeout_s=10, what="workers running")
        now = sampler.sample()
        # This cluster plus half a worker: no room for one more worker while all three run.
        cap = round(now.billed_dph + 0.5 * min(r["price"] for r in now.rows if str(r["id"]) in workers), 4)

        provider = VastNodeProvider({**config, "max_hourly_cost": cap}, CLUSTER.name, client=client)
        provider.non_terminated_nodes({})
        victim = workers[0]
        transport.arm("DELETE", f"/api/v0/instances/{victim}/", 500, count=1000)
        provider.terminate_nodes([victim])  # the API refuses every try: the instance keeps running
        assert victim not in provider.non_terminated_nodes({})
        with contextlib.suppress(NodeLaunchException):  # the right answer: max_hourly_cost leaves no room
            provider.create_node_with_resources_and_labels(CLUSTER.worker_config, CLUSTER.worker_tags(
                "00000000-0000-0000-0000-000000000009"), 1, {}, {})
        assert transport.fired > 1 and str(victim) in {str(r["id"]) for r in sampler.sample().rows}
        # A rental that went through boots in 0.3 s; sample until then (a fixed window: nothing to poll for when
        # the provider rightly refused).
        deadline = time.monotonic() + 1.5
        billed = 0.0
        while time.monotonic() < deadline:
            billed = max(billed, sampler.sample().billed_dph)
            time.sleep(0.1)
        assert billed <= cap + 1e-6, (f"billed ${billed:.4f}/h > max_hourly_cost ${cap}/h: the node whose destroy "
                                      "failed was not counted")
    finally:
        if provider is not None:
            provider.close()
        client.close()
        down = probe.new()
        down.cleanup_cluster_resources()
        probe.close()
