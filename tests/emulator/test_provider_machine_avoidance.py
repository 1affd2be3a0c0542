"""A machine that failed one of our instances is avoided for ``avoid_machine_s``, then rented again.

Avoiding it forever starves a cluster confined to one physical cluster once faults have touched each of its
machines. The provider runs on the emulator's clock, so the period passes with one ``advance`` instead of a sleep.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray.autoscaler.tags import TAG_RAY_LAUNCH_CONFIG, TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS, TAG_RAY_USER_NODE_TYPE

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import make_machine, make_scenario, running_emulator, wait_until
from skyward_ray.provider.node_provider import VastNodeProvider

CLUSTER = "avoid-test"
WORKER_CONFIG = {"accelerator": "RTX 4090"}
WORKER_TAGS = {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: "gpu", TAG_RAY_NODE_STATUS: "uninitialized",
               TAG_RAY_LAUNCH_CONFIG: "2" * 40}
CHEAP, DEAR = 101, 201  # two standalone machines: the provider always prefers CHEAP unless it avoids it
AVOID_S = 600.0


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    scenario = make_scenario(make_machine(CHEAP, gpu_price=0.3, public_ipaddr="198.51.100.11"),
                             make_machine(DEAR, gpu_price=0.6, public_ipaddr="198.51.100.12"))
    with running_emulator(scenario=scenario, boot_delay_s=0.2) as emu:
        yield emu


@pytest.fixture
def provider(emulator: EmulatorServer, tmp_path: Path) -> Iterator[VastNodeProvider]:
    key_file = tmp_path / "vast_api_key"
    key_file.write_text(emulator.api_key + "\n")
    key_file.chmod(0o600)
    config: dict[str, Any] = {
        "type": "external", "module": "skyward_ray.provider.VastNodeProvider", "api_url": emulator.url,
        "api_key_file": str(key_file), "cache_ttl_s": 0.2, "tag_flush_delay_s": 0.05, "ssh_proxy": False,
        "use_overlay": False, "avoid_machine_s": AVOID_S,
    }
    made = VastNodeProvider(config, CLUSTER, clock=emulator.market.clock.now)
    try:
        yield made
    finally:
        made.close()
        made.terminate_nodes(made.non_terminated_nodes({}))
        made.cleanup_cluster_resources()


def machine_of(emulator: EmulatorServer, node_id: str) -> int:
    instances = httpx.get(f"{emulator.admin_url}/state/", timeout=10).json()["instances"]
    return next(int(i["machine_id"]) for i in instances if str(i["id"]) == node_id)


def rent_one(provider: VastNodeProvider) -> str:
    created = provider.create_node_with_resources_and_labels(WORKER_CONFIG, dict(WORKER_TAGS), 1, {"GPU": 1}, {})
    assert created is not None and len(created) == 1, created
    return next(iter(created))


def test_a_failed_machine_is_avoided_for_the_period_then_used_again(emulator: EmulatorServer,
                                                                    provider: VastNodeProvider) -> None:
    first = rent_one(provider)
    assert machine_of(emulator, first) == CHEAP
    response = httpx.post(f"{emulator.admin_url}/instances/{first}/fail/", json={"kind": "oci_error"}, timeout=10)
    assert response.status_code == 200, response.text
    wait_until(lambda: first not in provider.non_terminated_nodes({}), timeout_s=10, what="the failed node ended")

    second = rent_one(provider)
    assert machine_of(emulator, second) == DEAR, "the machine that just failed must be avoided"

    httpx.post(f"{emulator.admin_url}/clock/", json={"advance": AVOID_S + 1}, timeout=10).raise_for_status()
    third = rent_one(provider)
    assert machine_of(emulator, third) == CHEAP, "after avoid_machine_s the cheapest machine is used again"
