"""The provider living within Vast's documented limits, against the emulator over HTTP.

* A 16-worker scale-up, asked for the way Ray's autoscaler v2 asks (its own ``NodeProviderAdapter``: batches of 5 on
  two launcher threads), rents at Vast's pace with no 429 earned: creates 4.5 s apart, the sixteenth about 67.5 s
  after the first, each node visible as soon as it is accepted, progress in the log, searches shared.
* The searches of one scale-up are shared (Vast allows 10 per minute).
* An account without overlays: ``ray up`` of a multi-node cluster fails in one line with Vast's answer and nothing
  rented; a single-node cluster still comes up and goes down.
* A fresh account without SSH keys (``GET /ssh/`` answers 404) goes through ``bootstrap_config`` and gets its head.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS, TAG_RAY_USER_NODE_TYPE
from ray.autoscaler.v2.instance_manager.node_provider import NodeProviderAdapter

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import AdapterConfigReader, running_emulator, wait_until
from skyward_ray.provider.bootstrap import bootstrap_config, key_body
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.provider.tags import is_cluster_label
from skyward_ray.vast.client import VastClient

REPO = Path(__file__).resolve().parents[2]
CREATE = "PUT /api/v0/asks/{id}/"
SEARCH = "POST /api/v0/bundles/"
WORKER_CONFIG = {"accelerator": "RTX 4090", "allocation": "spot-if-available"}
HEAD_CONFIG = {"accelerator": "RTX 4090"}
HEAD_TAGS = {TAG_RAY_NODE_KIND: "head", TAG_RAY_USER_NODE_TYPE: "head", TAG_RAY_NODE_STATUS: "uninitialized"}
NODE_TYPES = {
    "head": {"kind": "head", "node_config": HEAD_CONFIG},
    "gpu": {"kind": "worker", "min_workers": 0, "max_workers": 3, "node_config": WORKER_CONFIG},
}


def admin(emu: EmulatorServer, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, f"{emu.url}/_emulator/{path}", timeout=30, **kwargs)
    response.raise_for_status()
    return response.json()


def refused(emu: EmulatorServer) -> int:
    """429s the emulator answered, over every endpoint."""
    statuses = admin(emu, "GET", "counters/")["statuses"]
    return sum(int(by_status.get("429", 0)) for by_status in statuses.values())


def provider_config(emu: EmulatorServer, key_file: Path, **extra: Any) -> dict[str, Any]:
    return {"type": "external", "module": "skyward_ray.provider.VastNodeProvider", "api_url": emu.url,
            "api_key_file": str(key_file), "ssh_proxy": False, "min_reliability": 0.0, "verified_only": False,
            "min_cuda": None, **extra}


def key_file_for(tmp_path: Path, api_key: str) -> Path:
    path = tmp_path / f"key-{uuid.uuid4().hex[:6]}"
    path.write_text(api_key + "\n")
    path.chmod(0o600)
    return path


def ledger(emu: EmulatorServer, cluster: str) -> list[dict[str, Any]]:
    return [e for e in admin(emu, "GET", "state/")["ledger"] if is_cluster_label(e["label"], cluster)]


@pytest.fixture
def documented() -> Iterator[EmulatorServer]:
    """Vast's documented limits, at their real intervals."""
    with running_emulator(seed=5, boot_delay_s=0.2, rate_limits="documented") as emu:
        yield emu


@pytest.fixture
def scaled() -> Iterator[EmulatorServer]:
    """Vast's documented limits scaled by 0.1 (the client paces with the same scale): this test is about which
    requests are made, not about their intervals, which the 16-worker test checks at the real pace."""
    with running_emulator(seed=5, boot_delay_s=0.2, rate_limits="x0.1") as emu:
        yield emu


@pytest.mark.timeout(300)
def test_sixteen_workers_rent_at_vasts_pace_without_earning_a_429(documented: EmulatorServer, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="skyward_ray.provider")
    cluster = "rate16"
    provider = VastNodeProvider(provider_config(documented, key_file_for(tmp_path, documented.api_key),
                                                use_overlay=False), cluster)
    adapter = NodeProviderAdapter(provider, AdapterConfigReader(cluster, WORKER_CONFIG))  # type: ignore[arg-type]
    admin(documented, "DELETE", "counters/")
    visible_early: list[int] = []
    try:
        adapter.launch({"gpu": 16}, request_id=str(uuid.uuid4()))

        def all_rented() -> bool:
            count = len(provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "worker"}))
            if 0 < count < 16:
                visible_early.append(count)
            return count >= 16

        wait_until(all_rented, timeout_s=200, interval_s=0.5, what="16 workers rented")
        assert adapter.poll_errors() == []
        requests = admin(documented, "GET", "counters/")["requests"]
        assert refused(documented) == 0, "no 429 earned by our own pace"
        assert requests[CREATE] == 16, "one create per node: none refused, none repeated"
        times = sorted(e["created_at"] for e in ledger(documented, cluster))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 4.5 - 0.05, f"creates closer than Vast's 4.5 s: {gaps}"
        assert times[-1] - times[0] <= 1.1 * 15 * 4.5, f"16 rentals took {times[-1] - times[0]:.1f} s"
        # Ray's 4 batches plan on one answer (an on-demand and a bid search): it stays in use while they rent.
        assert requests[SEARCH] <= 2
        assert len(set(visible_early)) > 5, "nodes show up one by one, not per batch"
        lines = [r.getMessage() for r in caplog.records if "node(s)" in r.getMessage()]
        assert any("Vast accepts one rental every" in line for line in lines)
        assert any(line.startswith("rented 2 of 5 gpu node(s); the next rental goes out in") for line in lines)
    finally:
        with VastClient(api_key=documented.api_key, base_url=documented.url) as client:
            ids = [i.id for i in client.list_instances() if is_cluster_label(i.label, cluster)]
            if ids:
                client.destroy_instances(ids)
        provider.close()


def test_one_scale_up_shares_its_searches(scaled: EmulatorServer, tmp_path: Path) -> None:
    cluster = "shared"
    config = provider_config(scaled, key_file_for(tmp_path, scaled.api_key), use_overlay=False, api_rate_scale=0.1)
    provider = VastNodeProvider(config, cluster)
    admin(scaled, "DELETE", "counters/")
    try:
        launches = [threading.Thread(target=provider.create_node_with_resources_and_labels,
                                     args=(WORKER_CONFIG, {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: "gpu"},
                                           3, {}, {})) for _ in range(2)]
        for thread in launches:
            thread.start()
        for thread in launches:
            thread.join(60)
        provider.create_node_with_resources_and_labels(WORKER_CONFIG, {TAG_RAY_NODE_KIND: "worker",
                                                                       TAG_RAY_USER_NODE_TYPE: "gpu"}, 2, {}, {})
        requests = admin(scaled, "GET", "counters/")["requests"]
        assert len(provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "worker"})) == 8
        assert requests[SEARCH] == 2, "three launches, one on-demand and one bid search between them"
        machines = [(e["machine_id"], e["offer_id"]) for e in ledger(scaled, cluster)]
        assert len(machines) == 8
        assert refused(scaled) == 0
    finally:
        provider.terminate_nodes(provider.non_terminated_nodes({}))
        provider.close()


def test_no_overlays_fails_ray_up_in_one_line_and_rents_nothing(scaled: EmulatorServer, tmp_path: Path) -> None:
    admin(scaled, "PUT", "faults/", json={"overlays_available": False})
    key_file = key_file_for(tmp_path, scaled.api_key)
    provider = VastNodeProvider(provider_config(scaled, key_file, node_types=NODE_TYPES, api_rate_scale=0.1), "ovl")
    try:
        with pytest.raises(NodeLaunchException) as info:
            provider.create_node(HEAD_CONFIG, dict(HEAD_TAGS), 1)
        message = info.value.description
        assert info.value.category == "overlay-unavailable"
        assert "\n" not in message and "/api/v0/overlay/" in message and "HTTP 4" in message
        assert "use_overlay: false" in message
        assert ledger(scaled, "ovl") == [], "nothing rented"
        assert str(info.value).count("\n") == 0
    finally:
        provider.close()
    # A single-node cluster on the same account comes up and goes down.
    single = VastNodeProvider(provider_config(scaled, key_file, node_types=NODE_TYPES, use_overlay=False,
                                              api_rate_scale=0.1), "single")
    try:
        (head,) = single.create_node(HEAD_CONFIG, dict(HEAD_TAGS), 1) or {}
        wait_until(lambda: single.is_running(head), timeout_s=20, what="the single-node head running")
        single.terminate_nodes([head])
        single.cleanup_cluster_resources()
        assert all(e["destroyed_at"] is not None for e in ledger(scaled, "single"))
    finally:
        single.close()


def test_a_fresh_account_without_ssh_keys_gets_through_bootstrap_and_its_head(
        scaled: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = admin(scaled, "POST", "users/", json={"credit": 100.0})
    with httpx.Client(base_url=scaled.url, headers={"Authorization": f"Bearer {fresh['api_key']}"}) as raw:
        assert raw.get("/api/v0/ssh/").status_code == 404, "Vast answers 404 to an account with no keys"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VAST_URL", scaled.url)
    monkeypatch.setenv("VAST_API_KEY", fresh["api_key"])
    private = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(private)], check=True)
    config = yaml.safe_load((REPO / "cluster_configs" / "vast-multinode.yaml").read_text())
    config["auth"]["ssh_private_key"] = str(private)
    config["provider"]["api_rate_scale"] = 0.1
    with VastClient(api_key=fresh["api_key"], base_url=scaled.url, rate_scale=0.1) as client:
        booted = bootstrap_config(prepare_config(config), client=client)
        keys = client.list_ssh_keys()
    public = private.with_suffix(".pub").read_text()
    assert [key_body(k.public_key or "") for k in keys] == [key_body(public)], "the key was registered once"
    provider_section = {**booted["provider"], "api_key_file": str(key_file_for(tmp_path, fresh["api_key"])),
                        "use_overlay": False, "min_reliability": 0.0, "verified_only": False, "min_cuda": None}
    head_type = booted["head_node_type"]
    head_config = booted["available_node_types"][head_type]["node_config"]
    provider = VastNodeProvider(provider_section, "fresh")
    try:
        created = provider.create_node(head_config, {**HEAD_TAGS, TAG_RAY_USER_NODE_TYPE: head_type}, 1)
        assert created is not None and len(created) == 1
        (head,) = created
        wait_until(lambda: provider.is_running(head), timeout_s=20, what="the fresh account's head running")
        instance_keys = provider.client.list_instance_ssh_keys(int(head))
        assert key_body(public) in [key_body(k.public_key or "") for k in instance_keys]
        provider.terminate_nodes([head])
    finally:
        provider.close()
