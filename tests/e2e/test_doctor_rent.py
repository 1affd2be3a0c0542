"""``skyward-ray doctor --rent`` and ``--overlay`` end to end on network-namespace hosts (each instance its own
namespace with an sshd, each overlay a bridge joined on ``eth0``), with Vast's documented rate limits on.

The doctor runs as a child process, as a user runs it: it rents through the provider, SSHes in with our runner,
probes the node, has the instance key prove its scope and destroy its own instance, sweeps by label, and exits 0.
Afterwards nothing is rented, no overlay is left, and the runtime fixture checks that no namespace or process is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.vast.client import VastClient


@pytest.fixture
def emulator(make_netns_emulator: Callable[..., EmulatorServer]) -> EmulatorServer:
    return make_netns_emulator(scenario="default", seed=3, boot_delay_s=2.0)


def run_doctor(emulator: EmulatorServer, tmp_path: Path, key: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    env = {**os.environ, "VAST_URL": emulator.url, "VAST_API_KEY": emulator.api_key, "HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path / ".config"), "XDG_CACHE_HOME": str(tmp_path / ".cache")}
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "skyward_ray.cli", "doctor", "--yes", "--ssh-key", str(key), "--report",
           str(report), "--loading-timeout", "60", "--ssh-timeout", "60", "--overlay-timeout", "30", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400,
                          stdin=subprocess.DEVNULL)
    return done.returncode, json.loads(report.read_text()), done.stdout + done.stderr


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["check"]: row for row in report["rows"]}


def assert_nothing_left(emulator: EmulatorServer) -> None:
    with VastClient(api_key=emulator.api_key, base_url=emulator.url) as client:
        assert client.list_instances() == []
        assert client.list_overlays() == []


@pytest.mark.timeout(420)
def test_rent_checks_one_node_and_destroys_it(emulator: EmulatorServer, tmp_path: Path, ssh_key: Any) -> None:
    code, report, output = run_doctor(emulator, tmp_path, ssh_key.private_path, "--rent")
    found = rows(report)
    assert code == 0, output
    bad = [row for row in report["rows"] if row["ok"] not in ("ok", "info")]
    assert not bad, [(row["check"], row["observed"], row["details"]) for row in bad]
    for check in ("rent: create head", "rent: phases (head)", "rent: api view (head)", "rent: ssh (head)",
                  "rent: node view (head)", "instance key: scope", "instance key: own (head)", "rent: destroyed",
                  "rent: spend"):
        assert check in found, (check, output)
    body = found["rent: create head"]["details"]["create_body"]
    assert body["disk"] == 10 and body["label"].startswith("skyr1:doctor-")
    assert "CONTAINER_API_KEY present" in found["rent: node view (head)"]["observed"]
    assert "destroyed itself" in found["instance key: own (head)"]["observed"]
    assert found["rent: phases (head)"]["details"]["running_s"] < 60
    assert report["rented"] and sorted(report["destroyed"]) == sorted(report["rented"])
    assert emulator.api_key not in output and emulator.api_key not in json.dumps(report)
    assert_nothing_left(emulator)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("api_shows_it", [False, True])
def test_overlay_checks_two_nodes_reaching_each_other_on_eth0(emulator: EmulatorServer, tmp_path: Path,
                                                               ssh_key: Any, api_shows_it: bool) -> None:
    # As documented, no API field carries the overlay address; the emulator's inferred switch lists it in
    # local_ipaddrs, and the doctor must then say where it saw it.
    emulator.market.set_faults(emulator.market.faults.merged({"overlay_address_in_local_ipaddrs": api_shows_it}))
    code, report, output = run_doctor(emulator, tmp_path, ssh_key.private_path, "--overlay")
    found = rows(report)
    assert code == 0, output
    bad = [row for row in report["rows"] if row["ok"] not in ("ok", "info")]
    assert not bad, [(row["check"], row["observed"], row["details"]) for row in bad]
    assert "listed with its subnet" in found["overlay: listed"]["observed"]
    assert "eth0" in found["overlay: joined (head)"]["observed"]
    assert "eth0" in found["overlay: joined (worker)"]["observed"]
    assert found["overlay: head -> worker"]["observed"] == "answers"
    assert found["overlay: worker -> head"]["observed"] == "answers"
    assert "still there" in found["instance key: scope"]["observed"]  # one node's key cannot destroy the other
    in_api = found["overlay: address in the API"]
    assert in_api["ok"] == "info"
    if api_shows_it:
        assert "head: local_ipaddrs" in in_api["observed"] and "worker: local_ipaddrs" in in_api["observed"]
    else:
        assert in_api["observed"].startswith("no field shows it")
    assert len(report["rented"]) == 2 and sorted(report["destroyed"]) == sorted(report["rented"])
    assert_nothing_left(emulator)
