"""``ray down`` against an API that fails once: what the soak found, pinned deterministically.

Ray's ``ray down`` terminates nodes until none is left, then calls ``cleanup_cluster_resources`` once. The soak's
random 5xx showed that one 500 inside that cleanup (then not retried by the client) ended ``ray down`` with an
exception, leaving the overlay behind. Each case fails exactly one request of the cleanup and expects ``ray down``
to finish with nothing left, as it does for a status the client always retried (502).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.autoscaler.tags import TAG_RAY_NODE_KIND
from support.emulator_chaos import FailNext, admin
from support.ray_v2_driver import ray_up, spot_cluster

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import running_emulator
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.vast.client import VastClient

CLUSTER = spot_cluster("down")


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with running_emulator(seed=3, boot_delay_s=0.2, rate_limits="documented") as emu:
        yield emu


def config(emulator: EmulatorServer, tmp_path: Path) -> dict[str, Any]:
    key_file = tmp_path / "key"
    key_file.write_text(emulator.api_key)
    key_file.chmod(0o600)
    return {"type": "external", "module": "skyward_ray.provider.VastNodeProvider", "api_url": emulator.url,
            "api_key_file": str(key_file), "cache_ttl_s": 0.2, "tag_flush_delay_s": 0.05, "ssh_proxy": False,
            "min_reliability": 0.9,
            "node_types": {"head": {"kind": "head", "node_config": CLUSTER.head_config},
                           "gpu": {"kind": "worker", "max_workers": 2, "node_config": CLUSTER.worker_config}}}


@pytest.mark.parametrize(("method", "path", "status"), [
    # The sweep lists the account the cheap way (the unpaged list, as the snapshot does).
    ("GET", "/api/v0/instances/", 502),  # a status the client retries: the control case
    ("GET", "/api/v0/instances/", 500),
    ("GET", "/api/v0/overlay/", 500),
    ("DELETE", "/api/v0/overlay/", 500),
])
def test_ray_down_survives_one_failed_request_in_its_cleanup(emulator: EmulatorServer, tmp_path: Path,
                                                            method: str, path: str, status: int) -> None:
    settings = config(emulator, tmp_path)
    laptop = VastNodeProvider(settings, CLUSTER.name)
    transport = FailNext()
    client = VastClient(api_key=emulator.api_key, base_url=emulator.url, transport=transport)
    down = VastNodeProvider(settings, CLUSTER.name, client=client)
    try:
        ray_up(laptop, CLUSTER)
        laptop.create_node_with_resources_and_labels(CLUSTER.worker_config, CLUSTER.worker_tags(
            "00000000-0000-0000-0000-000000000001"), 1, {"GPU": 1}, {})
        assert admin(emulator.url, "GET", "state/")["overlays"]
        for _ in range(20):  # ray down's loop
            remaining = down.nodes_for_teardown({TAG_RAY_NODE_KIND: "worker"}) + \
                down.nodes_for_teardown({TAG_RAY_NODE_KIND: "head"})
            if not remaining:
                break
            down.terminate_nodes(remaining)
        transport.arm(method, path, status)
        down.cleanup_cluster_resources()
        assert transport.fired == 1
        dump = admin(emulator.url, "GET", "state/")
        assert dump["instances"] == [] and dump["overlays"] == []
    finally:
        laptop.close()
        down.close()
        client.close()
