"""The dead-man switch end to end: a worker whose head is gone destroys its own instance with its scoped key.

An emulated instance (netns runtime: its own network, PID and mount namespaces, sshd) gets the environment our
provider gives workers (``SKYWARD_VAST_URL``, ``SKYWARD_INSTANCE_TIMEOUT``) plus what Vast gives every container
(``CONTAINER_ID``, ``CONTAINER_API_KEY``). The switch is started over SSH exactly as the default worker start command
starts it (``setsid nohup python -m skyward_ray.provider.deadman --head $RAY_HEAD_IP:6379 &``), aimed at a head
address where nothing listens. Within ``instance_timeout`` plus a few seconds the instance must be gone from the
market, a second instance of the same account must still be there, and no account key was ever on the instance.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import wait_until
from skyward_ray.vast.client import VastClient

INSTANCE_TIMEOUT_S = 3


@pytest.fixture
def emulator(make_netns_emulator: Callable[..., EmulatorServer]) -> EmulatorServer:
    return make_netns_emulator(scenario="default", seed=3, boot_delay_s=0.2)


def closed_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(120)
def test_a_worker_whose_head_is_gone_destroys_itself(emulator: EmulatorServer, ssh_key: object,
                                                     netns_kit: object) -> None:
    started = time.monotonic()
    with VastClient(api_key=emulator.api_key, base_url=emulator.url) as client:
        client.create_ssh_key(ssh_key.public)  # type: ignore[attr-defined]
        offers = client.search_offers({"gpu_name": {"eq": "RTX 4090"}, "num_gpus": {"eq": 1},
                                       "rentable": {"eq": True}, "limit": 2, "order": [["dph_total", "asc"]]})
        worker_env = {"SKYWARD_VAST_URL": emulator.url, "SKYWARD_INSTANCE_TIMEOUT": str(INSTANCE_TIMEOUT_S)}
        worker = client.create_instance(offers[0].id, image="vastai/base", disk_gb=10, label="deadman-worker",
                                        env=worker_env).new_contract
        bystander = client.create_instance(offers[1].id, image="vastai/base", disk_gb=10,
                                           label="deadman-bystander").new_contract
        ready = wait_until(lambda: (i := client.get_instance(worker)) is not None and i.ready and i,
                           timeout_s=30, what="the worker running")
        wait_until(lambda: (i := client.get_instance(bystander)) is not None and i.ready, timeout_s=30,
                   what="the bystander running")
        assert ready.ssh_direct is not None
        host, port = ready.ssh_direct

        # The head's GCS address as the worker sees it, with nothing listening there: the head is gone.
        api_host = httpx.URL(emulator.url).host
        head = f"{api_host}:{closed_port(api_host)}"
        seen = netns_kit.ssh(host, port, 'echo "$CONTAINER_ID ${CONTAINER_API_KEY:+scoped} $VAST_API_KEY"',  # type: ignore[attr-defined]
                             ssh_key)
        assert seen.returncode == 0, seen.stderr
        assert seen.stdout.split() == [str(worker), "scoped"], "the instance must hold its scoped key only"
        start = netns_kit.ssh(  # type: ignore[attr-defined]
            host, port, f"setsid nohup {sys.executable} -m skyward_ray.provider.deadman --head {head} "
            "--interval 0.5 > /tmp/skyward-deadman.log 2>&1 < /dev/null &", ssh_key)
        assert start.returncode == 0, start.stderr
        launched = time.monotonic()

        wait_until(lambda: client.get_instance(worker) is None, timeout_s=INSTANCE_TIMEOUT_S + 20,
                   interval_s=0.2, what="the worker destroying itself")
        took = time.monotonic() - launched
        assert took >= INSTANCE_TIMEOUT_S - 0.5, f"it destroyed itself after {took:.1f} s, before instance_timeout"
        assert client.get_instance(bystander) is not None, "only its own instance may go"
        client.destroy_instance(bystander)

    state = httpx.get(f"{emulator.admin_url}/state/", timeout=10).json()
    assert state["account_key_leaks"] == 0
    ledger = {entry["instance_id"]: entry for entry in state["ledger"]}
    assert ledger[worker]["destroyed_at"] is not None
    assert time.monotonic() - started < 60
