"""Fakes for driving ``VastSSHCommandRunner`` without SSH: endpoints, a process runner that records commands instead
of running them, and a runner built on them whose probes and scans answer from a set of reachable endpoints."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

from skyward_ray.emulator.testing import ManualClock
from skyward_ray.provider.command_runner import Endpoint, VastSSHCommandRunner

DIRECT: Endpoint = ("198.51.100.7", 41022)
PROXY: Endpoint = ("203.0.113.9", 20417)
OVERLAY: Endpoint = ("10.8.0.3", 22)


class FakeProcessRunner:
    """Stands in for ``subprocess``: records every command instead of running it."""

    DEVNULL = subprocess.DEVNULL
    PIPE = subprocess.PIPE

    def check_call(self, cmd: list[str], **_: Any) -> int:
        self.commands.append(list(cmd))
        return 0

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.identities: dict[str, bytes] = {}  # overlay address -> what IDENTIFY prints there

    def check_output(self, cmd: list[str], **_: Any) -> bytes:
        self.commands.append(list(cmd))
        if any("SKYWARD-ID" in part for part in cmd):
            host = next(part for part in cmd if part.startswith("root@")).split("@", 1)[1]
            if host not in self.identities:
                raise subprocess.CalledProcessError(255, cmd)  # not up yet / refused
            return self.identities[host]
        if any("fib_trie" in part for part in cmd):
            return b"Welcome to vast.ai\r\n10.8.0.3\r\n127.0.0.1\r\n172.17.0.5\r\n"
        return b"ok"


class FakeEndpoints:
    """Stands in for the provider's address book: fixed endpoints, an optional unknown overlay subnet, and the
    overlay addresses a search would try; records what the runner learned on each node."""

    def __init__(self, by_internal: dict[bool, list[Endpoint]], unknown_subnet: str | None = None,
                 search: list[str] | None = None) -> None:
        self.by_internal = by_internal
        self.calls = 0
        self.unknown_subnet = unknown_subnet
        self.search = search or []
        self.learned: list[list[str]] = []
        self.learned_by: dict[str, list[str]] = {}

    def ssh_endpoints(self, node_id: str, use_internal_ip: bool) -> list[Endpoint]:
        self.calls += 1
        return list(self.by_internal.get(use_internal_ip, []))

    def unknown_overlay_subnet(self, node_id: str) -> str | None:
        return self.unknown_subnet

    def learn_node_addresses(self, node_id: str, addresses: list[str]) -> str | None:
        self.learned.append(addresses)
        self.learned_by[node_id] = addresses
        if node_id == "4242":
            self.unknown_subnet = None
        return None

    def overlay_search(self, node_id: str) -> list[str]:
        return [a for a in self.search if all(a not in seen for seen in self.learned_by.values())]


class FakeProvider:
    """A provider whose node is never terminated."""

    def is_terminated(self, node_id: str) -> bool:
        return False


def make_runner(endpoints: FakeEndpoints, reachable: set[Endpoint], *, use_internal_ip: bool = False,
                key: str | None = "/keys/id_ed25519", clock: ManualClock | None = None,
                ) -> tuple[VastSSHCommandRunner, FakeProcessRunner, list[Endpoint]]:
    """A runner for node 4242 on these endpoints, where ``reachable`` answers probes and scans; also returns the
    recording process runner and the list of every endpoint probed."""
    probed: list[Endpoint] = []

    def probe(endpoint: Endpoint) -> bool:
        probed.append(endpoint)
        return endpoint in reachable

    def scan(targets: Sequence[Endpoint]) -> list[Endpoint]:
        probed.extend(targets)
        return [endpoint for endpoint in targets if endpoint in reachable]

    process = FakeProcessRunner()
    auth = {"ssh_user": "root", **({"ssh_private_key": key} if key else {})}
    runner = VastSSHCommandRunner(
        endpoints=endpoints, probe=probe, scan=scan, clock=clock or ManualClock(100.0), log_prefix="test: ",
        node_id="4242", provider=FakeProvider(), auth_config=auth, cluster_name="unit", process_runner=process,
        use_internal_ip=use_internal_ip,
    )
    return runner, process, probed


def ssh_option(cmd: list[str], name: str) -> str | None:
    """The value of ``-o name=value`` in an ssh command line, or None."""
    for index, token in enumerate(cmd[:-1]):
        if token == "-o" and cmd[index + 1].startswith(f"{name}="):
            return cmd[index + 1].split("=", 1)[1]
    return None
