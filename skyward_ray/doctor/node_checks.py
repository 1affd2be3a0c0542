"""The checks on rented nodes: what the API shows, SSH with ray up's runner, the node's own view (run by
:mod:`.node_probe`), the overlay between two nodes, and the scope of the instance key.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyward_ray.doctor import node_probe
from skyward_ray.doctor.report import Report, Status
from skyward_ray.doctor.wire import WireLog
from skyward_ray.provider.command_runner import tcp_accepts
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.endpoints import GET_INSTANCE
from skyward_ray.vast.models import Instance

POLL_S = 1.0  # the pacer spaces GET /instances/{id}/ to Vast's 2 s anyway
SELF_DESTROY_TIMEOUT_S = 60.0
NO_PYTHON = "DOCTOR-NO-PYTHON"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Node:
    """One rental as the doctor follows it."""

    node_id: str
    kind: str
    requested_at: float
    accepted_at: float
    create_seconds: float | None = None
    loading_at: float | None = None
    running_at: float | None = None
    ssh_open_at: float | None = None
    login_at: float | None = None
    instance: Instance | None = None
    probe: dict[str, Any] = field(default_factory=dict)
    gone_at: float | None = None

    @property
    def instance_id(self) -> int:
        return int(self.node_id)


class NodeChecks:
    """The checks on running nodes of one rental, each adding its rows to the report."""

    def __init__(self, report: Report, client: VastClient, wire: WireLog, provider: VastNodeProvider, key_path: str,
                 cluster_name: str, overlay_name: str, nodes: list[Node], *, prefix: str,
                 ssh_timeout_s: float) -> None:
        self.report = report
        self.client = client
        self.wire = wire
        self.provider = provider
        self.key_path = key_path
        self.cluster_name = cluster_name
        self.overlay_name = overlay_name
        self.nodes = nodes
        self.prefix = prefix
        self.ssh_timeout_s = ssh_timeout_s

    def api_view(self) -> None:
        for node in self.nodes:
            inst = node.instance
            assert inst is not None
            ports = sorted((inst.ports or {}).keys())
            direct = inst.ssh_direct
            observed = (f"ports {ports}; ssh_host:ssh_port {inst.ssh_host}:{inst.ssh_port}; public_ipaddr "
                        f"{inst.public_ipaddr}; local_ipaddrs {inst.local_ipaddrs}")
            ok = Status.OK if direct else Status.WARN
            if not direct:
                observed += "; no 22/tcp mapping: ray up falls back to the proxy"
            self.report.add(f"{self.prefix}api view ({node.kind})", "ports with 22/tcp, ssh_host/ssh_port, "
                            "public_ipaddr", observed, ok, ports=ports, ssh_host=inst.ssh_host, ssh_port=inst.ssh_port,
                            public_ipaddr=inst.public_ipaddr, local_ipaddrs=inst.local_ipaddrs)

    def runner(self, node: Node) -> Any:
        assert self.provider is not None and self.key_path is not None
        runner = self.provider.get_command_runner("doctor", node.node_id,
                                                  {"ssh_user": "root", "ssh_private_key": self.key_path},
                                                  self.cluster_name, subprocess, False)
        runner.ssh_options.arg_dict["LogLevel"] = "ERROR"  # ssh's own chatter would break the report's rows
        return runner

    def wait_ssh(self) -> bool:
        assert self.provider is not None
        deadline = time.monotonic() + self.ssh_timeout_s
        for node in self.nodes:
            while node.ssh_open_at is None:
                endpoints = self.provider.ssh_endpoints(node.node_id, False)
                if any(tcp_accepts(endpoint) for endpoint in endpoints):
                    node.ssh_open_at = time.monotonic()
                    break
                if time.monotonic() >= deadline:
                    self.report.add(f"{self.prefix}ssh open ({node.kind})", "the mapped SSH port accepts TCP",
                                    f"nothing answered at {endpoints} within {self.ssh_timeout_s:g} s",
                                    Status.FAIL)
                    return False
                time.sleep(POLL_S)
            runner = self.runner(node)
            last_error = ""
            while True:
                try:
                    output = runner.run("echo doctor-ssh-ok", with_output=True, timeout=10)
                    if b"doctor-ssh-ok" in output if isinstance(output, bytes) else "doctor-ssh-ok" in str(output):
                        node.login_at = time.monotonic()
                        break
                    last_error = "no answer"
                except Exception as exc:  # Ray's ProcessRunnerError, click errors: a failed login attempt
                    last_error = " ".join(str(exc).split())[:200]
                if time.monotonic() >= deadline:
                    self.report.add(f"{self.prefix}ssh login ({node.kind})", "our runner logs in as root",
                                    f"no login within {self.ssh_timeout_s:g} s: {last_error}", Status.FAIL)
                    return False
                time.sleep(POLL_S)
            endpoint = runner.endpoint
            open_s = node.ssh_open_at - node.accepted_at
            login_s = node.login_at - node.accepted_at
            self.report.add(f"{self.prefix}ssh ({node.kind})", "our runner logs in at the mapped port",
                            f"port open {open_s:.1f} s and login {login_s:.1f} s after acceptance, via "
                            f"{endpoint[0]}:{endpoint[1] if endpoint else '?'}", Status.OK, seconds=login_s,
                            endpoint=list(endpoint) if endpoint else None)
        return True

    def probe(self, node: Node, *args: str) -> dict[str, Any]:
        """Run :mod:`node_probe` on ``node`` with our runner; its JSON line, or {"error": ...}."""
        script = base64.b64encode(Path(node_probe.__file__).read_bytes()).decode()
        target = f"/tmp/skyward-doctor-probe-{secrets.token_hex(3)}.py"
        command = (f'P=$(command -v python3 || command -v python) || {{ echo {NO_PYTHON}; exit 0; }}; '
                   f'echo {script} | base64 -d > {target} && "$P" {target} {" ".join(args)}; rm -f {target}')
        try:
            output = self.runner(node).run(command, with_output=True, timeout=15)
        except Exception as exc:  # the node's answer is the observation
            result: dict[str, Any] = {"error": " ".join(str(exc).split())[:300]}
        else:
            text = _ANSI.sub("", output.decode(errors="replace") if isinstance(output, bytes) else str(output))
            result = {"error": "the probe printed no result"}
            if NO_PYTHON in text:
                result = {"error": "the image has no python3 or python: ray up's setup runs Python on every node "
                                   "(choose a docker_image with Python)"}
            for line in text.replace("\r", "\n").splitlines():
                if line.startswith(node_probe.MARK):
                    with contextlib.suppress(ValueError):
                        result = json.loads(line[len(node_probe.MARK):])
        if not args:
            node.probe = result
        return result

    def node_view(self) -> None:
        for node in self.nodes:
            found = node.probe
            if "error" in found:
                self.report.add(f"{self.prefix}node view ({node.kind})", "the node describes itself",
                                str(found["error"]), Status.FAIL)
                continue
            interfaces = ", ".join(f"{i['name']} {i['address']}/{i['prefix']}" for i in found.get("interfaces", []))
            same_id = str(found.get("container_id")) == node.node_id
            key = bool(found.get("container_api_key_present"))
            observed = (f"hostname {found.get('hostname')}; {interfaces}; CONTAINER_ID "
                        f"{'matches' if same_id else repr(found.get('container_id'))}; CONTAINER_API_KEY "
                        f"{'present' if key else 'MISSING'}")
            ok = Status.OK if same_id and key else Status.FAIL
            self.report.add(f"{self.prefix}node view ({node.kind})", "interfaces; CONTAINER_ID = the instance id; "
                            "CONTAINER_API_KEY present", observed, ok, interfaces=found.get("interfaces"),
                            container_api_key_present=key, container_id_matches=same_id)

    # --- the overlay -----------------------------------------------------------------------------------------------

    def overlay_checks(self) -> None:
        overlay = next((o for o in self.client.list_overlays() if o.name == self.overlay_name), None)
        ids = {node.instance_id for node in self.nodes}
        if overlay is None or not overlay.internal_subnet:
            self.report.add("overlay: listed", "the overlay with its subnet", "not listed", Status.FAIL)
            return
        members = set(overlay.instances)
        appeared = self.overlay_appeared_s()
        took = f", listed with its subnet {appeared:.1f} s after its creation" if appeared is not None else ""
        self.report.add("overlay: listed", "the overlay on one physical cluster with both instances",
                        f"{overlay.name} on cluster {overlay.cluster_id}, subnet {overlay.internal_subnet}, members "
                        f"{sorted(members)}{took}", Status.OK if ids <= members else Status.WARN,
                        seconds=appeared, subnet=overlay.internal_subnet, cluster_id=overlay.cluster_id)
        network = ipaddress.ip_network(overlay.internal_subnet, strict=False)
        addresses: dict[str, str] = {}
        for node in self.nodes:
            match = [i for i in node.probe.get("interfaces", []) if ipaddress.ip_address(i["address"]) in network]
            if not match:
                self.report.add(f"overlay: joined ({node.kind})", f"an address in {network} on eth0",
                                "no address in the overlay subnet on any interface", Status.FAIL)
                continue
            addresses[node.node_id] = match[0]["address"]
            on_eth0 = match[0]["name"] == "eth0"
            self.report.add(f"overlay: joined ({node.kind})", f"an address in {network} on eth0",
                            f"{match[0]['address']} on {match[0]['name']}", Status.OK if on_eth0 else Status.WARN,
                            interface=match[0]["name"], address=match[0]["address"])
        if len(addresses) != len(self.nodes):
            return
        for node, peer in ((self.nodes[0], self.nodes[1]), (self.nodes[1], self.nodes[0])):
            seen = self.probe(node, "--peer-addr", addresses[peer.node_id])
            reached = seen.get("peer_tcp_22") is True
            self.report.add(f"overlay: {node.kind} -> {peer.kind}", f"{addresses[peer.node_id]}:22 answers over the "
                            "overlay", "answers" if reached else f"no answer ({seen.get('error', 'closed')})",
                            Status.OK if reached else Status.FAIL)
        shown: list[str] = []
        for node in self.nodes:
            row = self.client.call(GET_INSTANCE, ids={"id": node.instance_id}, params={"owner": "me"})
            where = fields_holding(row.get("instances") if isinstance(row, dict) else None, addresses[node.node_id])
            shown += [f"{node.kind}: {', '.join(where)}"] if where else []
        self.report.add("overlay: address in the API", "not documented (read on the node, on eth0)",
                        "; ".join(shown) if shown else "no field shows it (as documented; ray up reads it on the node)",
                        Status.INFO, fields=shown)

    def overlay_appeared_s(self) -> float | None:
        """From ``POST /overlay/`` to the answer of the last overlay list before the head's rental (the provider
        rents the head as soon as a list shows the overlay with its subnet)."""
        exchanges = self.wire.snapshot()
        created = next((e for e in exchanges if e.method == "POST" and e.path == "/api/v0/overlay/"), None)
        if created is None:
            return None
        rented = next((e for e in exchanges if e.at > created.at and e.method == "PUT"
                       and e.path.startswith("/api/v0/asks/")), None)
        lists = [e for e in exchanges if e.method == "GET" and e.path == "/api/v0/overlay/" and e.at > created.at
                 and (rented is None or e.at < rented.at)]
        return lists[-1].at + lists[-1].seconds - created.at if lists else None

    # --- the instance key ------------------------------------------------------------------------------------------

    def scope_checks(self) -> None:
        head = self.nodes[0]
        peer = self.nodes[1] if len(self.nodes) > 1 else None
        args = ["--scope"] + (["--peer-id", peer.node_id] if peer else [])
        seen = self.probe(head, *args)
        refused = {401, 403}
        account = seen.get("scope_account_call")
        checks = [f"account call (GET /users/current/) -> {account}"]
        ok = account in refused
        if peer is not None:
            other = seen.get("scope_destroy_peer")
            still = self.client.get_instance(peer.instance_id) is not None
            checks.append(f"destroy of the other instance -> {other}, which is {'still there' if still else 'GONE'}")
            ok = ok and other in refused | {404} and still
        if "error" in seen:
            checks = [str(seen["error"])]
            ok = False
        self.report.add("instance key: scope", "refused for the account and for other instances", "; ".join(checks),
                        Status.OK if ok else Status.FAIL)
        # Acting on its own instance: the instance key destroys its own instance, as the dead-man switch does.
        for node in self.nodes:
            sent = self.probe(node, "--destroy-self")
            started = time.monotonic()
            check = f"instance key: own ({node.kind})"
            expected = f"it destroys its own instance (within {SELF_DESTROY_TIMEOUT_S:g} s)"
            if not sent.get("destroy_self_sent"):
                self.report.add(check, expected, f"not sent: {sent.get('error') or 'no key or API URL on the node'}",
                                Status.FAIL)
                continue
            while time.monotonic() - started < SELF_DESTROY_TIMEOUT_S:
                instance = self.client.get_instance(node.instance_id)
                if instance is None:
                    node.gone_at = time.monotonic()
                    break
                time.sleep(POLL_S)
            if node.gone_at is not None:
                self.report.destroyed.append(node.instance_id)
                self.report.add(check, expected, f"instance {node.node_id} destroyed itself in "
                                f"{node.gone_at - started:.1f} s", Status.OK, seconds=node.gone_at - started)
            else:
                self.report.add(check, expected, f"instance {node.node_id} still there after "
                                f"{SELF_DESTROY_TIMEOUT_S:g} s", Status.FAIL)


def fields_holding(row: Any, address: str, path: str = "") -> list[str]:
    """Names of the fields of a raw instance row whose text holds ``address``."""
    found: list[str] = []
    if isinstance(row, dict):
        for key, value in row.items():
            found += fields_holding(value, address, f"{path}.{key}" if path else str(key))
    elif isinstance(row, list):
        for index, value in enumerate(row):
            found += fields_holding(value, address, f"{path}[{index}]")
    elif isinstance(row, str) and re.search(rf"(?<![\d.]){re.escape(address)}(?![\d.])", row):
        found.append(path)
    return found
