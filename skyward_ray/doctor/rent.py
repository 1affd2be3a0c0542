"""The checks that cost cents: rent through the provider itself (so the create body, the label, the overlay steps and
the SSH runner are exactly ``ray up``'s), time each phase, look at the node from the API and from inside, prove the
instance key is scoped to its instance, then destroy everything and confirm it is gone.

Every rental belongs to a cluster named ``doctor-<hex>``: its label starts with ``skyr1:doctor-<hex>;``, and the
final sweep destroys whatever carries that label, whatever happened before (an error, Ctrl-C, SIGTERM). The sweep
reads the raw list pages, so a row our models do not fit is still found and destroyed.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UNINITIALIZED,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray.doctor import node_probe
from skyward_ray.doctor.free import ClusterShape, FreeResult, rate_limit_row
from skyward_ray.doctor.report import Report, Status
from skyward_ray.doctor.wire import WireLog, raw_instance_pages
from skyward_ray.errors import SkywardError
from skyward_ray.placement import NodeGroup, NoPlacementError, PlacementRequest, build_queries, plan
from skyward_ray.provider.bootstrap import ensure_key_pair, key_body, register_ssh_key
from skyward_ray.provider.command_runner import tcp_accepts
from skyward_ray.provider.config import PROVIDER_MODULE, overlay_name_for
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.provider.tags import is_cluster_label
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.endpoints import GET_INSTANCE
from skyward_ray.vast.errors import VastError
from skyward_ray.vast.models import Instance, NodeState

DOCTOR_DISK_GB = 10  # small and cheap; Vast's documented minimum is 8
MIN_DISK_GB = 8
POLL_S = 1.0  # the pacer spaces GET /instances/{id}/ to Vast's 2 s anyway
SELF_DESTROY_TIMEOUT_S = 60.0
SWEEP_TIMEOUT_S = 180.0
NO_PYTHON = "DOCTOR-NO-PYTHON"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Keys of the provider section the doctor sets itself (the rest of the user's section is kept as ray up would use it).
_OWN_KEYS = ("node_types", "ssh_public_key", "api_key_file", "_config_cache_path", "type", "module", "api_url",
             "disk_gb", "verified_only", "use_overlay", "max_hourly_cost", "loading_timeout_s", "ssh_timeout_s",
             "overlay_timeout", "overlay_name")


class RentInputError(SkywardError):
    """The rental cannot be asked for as given (a cap below every offer): nothing was rented."""


@dataclass
class RentSettings:
    max_dph: float
    overlay: bool
    yes: bool
    loading_timeout_s: float
    ssh_timeout_s: float
    overlay_timeout_s: float
    ssh_private_key: str | None
    search_limit: int
    ask: Callable[[str], bool]
    disk_gb: int = DOCTOR_DISK_GB


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


@contextlib.contextmanager
def shielded(report: Report) -> Iterator[None]:
    """Ctrl-C and SIGTERM only say "cleaning up" while the block runs, so the sweep is never cut short."""
    def note(signum: int, _frame: FrameType | None) -> None:
        report.note(f"signal {signal.Signals(signum).name} received: still destroying what was rented, please wait")

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, note)
    except ValueError:  # not the main thread: nothing to shield
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Rental:
    """``--rent`` (one node) or ``--overlay`` (two nodes on one physical cluster and an overlay)."""

    def __init__(self, report: Report, client: VastClient, wire: WireLog, shape: ClusterShape, free: FreeResult,
                 settings: RentSettings) -> None:
        self.report = report
        self.client = client
        self.wire = wire
        self.shape = shape
        self.free = free
        self.settings = settings
        self.cluster_name = f"doctor-{secrets.token_hex(4)}"
        self.overlay_name = overlay_name_for(self.cluster_name)
        self.count = 2 if settings.overlay else 1
        self.nodes: list[Node] = []
        self.provider: VastNodeProvider | None = None
        self.key_path: str | None = None
        self.public_key: str | None = None
        self.credit_before = free.credit
        self.prefix = "overlay: " if settings.overlay else "rent: "

    # --- the whole run ---------------------------------------------------------------------------------------------

    def run(self) -> None:
        price = self.check_price()  # raises RentInputError before anything is rented
        if price is None:
            return
        question = (f"Rent {self.count} x {self.shape.head.accelerator} ({self.shape.head.gpus} GPU, on-demand, "
                    f"verified, {self.settings.disk_gb} GB disk) at most ${self.settings.max_dph:.2f}/h each "
                    f"(cheapest now ${price:.4f}/h), destroyed when the checks end?")
        if not self.settings.yes and not self.settings.ask(question):
            self.report.add(self.prefix + "asked", "a yes", "not confirmed: nothing rented", Status.SKIP)
            return
        self.report.meta["doctor_cluster"] = self.cluster_name
        try:
            self.prepare_key()
            self.provider = VastNodeProvider(self.provider_config(), self.cluster_name, client=self.client,
                                             start_threads=False)
            self.rent_all()
            if self.nodes and len(self.nodes) == self.count:
                self.follow()
        except KeyboardInterrupt:
            self.report.interrupted = True
            self.report.note("interrupted: destroying everything rented by this run")
        except (VastError, SkywardError) as exc:
            self.report.add(self.prefix + "run", "every step answers", str(exc), Status.FAIL)
        except Exception as exc:  # whatever broke is reported; the sweep below still runs
            self.report.add(self.prefix + "run", "every step completes", f"{type(exc).__name__}: {exc}", Status.FAIL)
        finally:
            with shielded(self.report):
                self.sweep()
                self.spend()
                rate_limit_row(self.report, self.wire, "rate limits (whole run)")

    # --- before renting --------------------------------------------------------------------------------------------

    def group(self) -> NodeGroup:
        head = self.shape.head
        return NodeGroup(name="doctor", accelerator=head.accelerator, gpus_per_node=head.gpus, count=self.count,
                         allocation="on-demand", include_variants=head.include_variants)

    def options(self, capped: bool) -> Any:
        cap = self.settings.max_dph * self.count if capped else None
        updates: dict[str, Any] = {"disk_gb": self.settings.disk_gb, "verified_only": True,
                                   "use_overlay": self.settings.overlay, "max_hourly_cost": cap}
        return self.shape.options.model_copy(update=updates)

    def check_price(self) -> float | None:
        """The cheapest verified on-demand placement now (None: there is none, a FAIL row says so); a cap below it
        is bad input (one line, nothing rented)."""
        request = PlacementRequest(groups=(self.group(),), physical_cluster=True if self.settings.overlay else None)
        options = self.options(capped=False)
        offers = []
        for query in build_queries(request, options, limit=self.settings.search_limit):
            offers += self.client.search_offers(query)
        try:
            chosen = plan(request, options, offers)
        except NoPlacementError as exc:
            self.report.add(self.prefix + "offer", f"a verified on-demand {self.group().describe()}",
                            f"none now, nothing rented: {exc}", Status.FAIL)
            return None
        highest = max(node.price_per_hour for node in chosen.nodes)
        if highest > self.settings.max_dph:
            raise RentInputError(
                f"--max-dph {self.settings.max_dph:g} is below every verified on-demand {self.shape.head.accelerator} "
                f"offer (cheapest placement: ${highest:.4f}/h per instance); raise --max-dph to at least "
                f"{highest:.2f}; nothing rented")
        self.report.add(self.prefix + "price", f"<= ${self.settings.max_dph:.2f}/h per instance (--max-dph)",
                        f"cheapest verified on-demand: ${highest:.4f}/h per instance", Status.OK,
                        per_instance=highest)
        return highest

    def prepare_key(self) -> None:
        """ray up's SSH key: the configured one (or ``--ssh-key``), else the default one; registered with the account
        when it is not yet (as ray up does)."""
        auth = dict(self.shape.auth)
        if self.settings.ssh_private_key:
            auth = {"ssh_private_key": self.settings.ssh_private_key}
        public = ensure_key_pair(auth)
        self.key_path = str(Path(auth["ssh_private_key"]).expanduser())
        registered = key_body(public) in self.free.ssh_key_bodies
        if not registered:
            register_ssh_key(self.client, public)
        self.public_key = public
        self.report.add(self.prefix + "ssh key", "ray up's key registered with the account",
                        f"{self.key_path}: {'already registered' if registered else 'registered now'}", Status.OK)

    def provider_config(self) -> dict[str, Any]:
        section = {k: v for k, v in self.shape.provider_section.items() if k not in _OWN_KEYS}
        head = self.shape.head.model_dump(mode="json")
        head["allocation"] = "on-demand"
        section.update(
            type="external", module=PROVIDER_MODULE, api_url=self.client.base_url, disk_gb=self.settings.disk_gb,
            verified_only=True, use_overlay=self.settings.overlay,
            max_hourly_cost=float(self.settings.max_dph * self.count),
            # The doctor judges the phases itself; the provider must not end a slow node first.
            loading_timeout_s=float(self.settings.loading_timeout_s + 3600),
            ssh_timeout_s=float(self.settings.ssh_timeout_s + 3600),
            overlay_timeout=max(1, round(self.settings.overlay_timeout_s)),
            ssh_public_key=self.public_key,
            node_types={"doctor": {"kind": "head", "min_workers": 0, "max_workers": self.count - 1,
                                   "node_config": head}},
        )
        return section

    # --- renting ---------------------------------------------------------------------------------------------------

    def rent_all(self) -> None:
        assert self.provider is not None
        node_config = self.provider_config()["node_types"]["doctor"]["node_config"]
        kinds = [NODE_KIND_HEAD] + [NODE_KIND_WORKER] * (self.count - 1)
        for kind in kinds:
            tags = {TAG_RAY_NODE_KIND: kind, TAG_RAY_USER_NODE_TYPE: "doctor",
                    TAG_RAY_NODE_STATUS: STATUS_UNINITIALIZED}
            requested = time.monotonic()
            check = f"{self.prefix}create {kind}"
            try:
                created = self.provider.create_node(node_config, tags, 1) or {}
            except Exception as exc:  # Ray's NodeLaunchError and ours: the step's answer is the observation
                self.report.add(check, "the provider rents one instance (PUT /api/v0/asks/{id}/)",
                                self._launch_failure(kind, exc), Status.FAIL)
                return
            accepted = time.monotonic()
            for node_id in created:
                node = Node(node_id, kind, requested, accepted)
                self.nodes.append(node)
                self.report.rented.append(node.instance_id)
                create = next((e for e in reversed(self.wire.creates()) if e.status == 200), None)
                node.create_seconds = create.seconds if create else None
                body = create.sent if create else {}
                shown = {k: body.get(k) for k in ("image", "disk", "runtype", "price", "label")} if body else {}
                env_keys = sorted((body or {}).get("env", {}))
                self.report.add(check, f"instance rented with ray up's create body, {self.settings.disk_gb} GB disk, a "
                                "doctor label", f"instance {node_id} accepted (create answered in "
                                f"{node.create_seconds or 0:.3f} s; launch took {accepted - requested:.1f} s); "
                                f"body {shown}, env keys {env_keys}", Status.OK, seconds=accepted - requested,
                                create_body=body)

    def _launch_failure(self, kind: str, exc: BaseException) -> str:
        text = str(exc)
        if kind == NODE_KIND_HEAD and self.settings.overlay and "overlay" in text:
            return f"the overlay step failed: {text}"
        return text

    # --- following the nodes ---------------------------------------------------------------------------------------

    def follow(self) -> None:
        if not self.wait_running():
            return
        self.api_view()
        if not self.wait_ssh():
            return
        for node in self.nodes:
            self.probe(node)
        self.node_view()
        if self.settings.overlay:
            self.overlay_checks()
        self.scope_checks()

    def wait_running(self) -> bool:
        deadline = time.monotonic() + self.settings.loading_timeout_s
        pending = list(self.nodes)
        while pending:
            for node in list(pending):
                instance = self.client.get_instance(node.instance_id)
                now = time.monotonic()
                node.instance = instance
                status = instance.actual_status if instance is not None else "gone"
                if status == "loading" and node.loading_at is None:
                    node.loading_at = now
                if instance is not None and instance.state is NodeState.RUNNING and instance.ssh_endpoint:
                    node.running_at = now
                    node.loading_at = node.loading_at or now
                    pending.remove(node)
                    continue
                if instance is None or instance.state in (NodeState.FAILED, NodeState.INTERRUPTED):
                    self.report.add(f"{self.prefix}running ({node.kind})", "loading, then running",
                                    f"instance {node.node_id} is {status}: {instance.status_msg if instance else ''}",
                                    Status.FAIL)
                    return False
            if pending and time.monotonic() >= deadline:
                for node in pending:
                    status = node.instance.actual_status if node.instance else None
                    self.report.add(f"{self.prefix}running ({node.kind})",
                                    f"running within {self.settings.loading_timeout_s:g} s (--loading-timeout)",
                                    f"instance {node.node_id} still {status or 'not started (null)'}", Status.FAIL,
                                    last_status=status)
                return False
            if pending:
                time.sleep(POLL_S)
        for node in self.nodes:
            loading = (node.loading_at or node.running_at or node.accepted_at) - node.accepted_at
            running = (node.running_at or node.accepted_at) - node.accepted_at
            self.report.add(f"{self.prefix}phases ({node.kind})", "accepted -> loading -> running",
                            f"loading seen after {loading:.1f} s, running after {running:.1f} s (polled every 2 s)",
                            Status.OK, seconds=running, loading_s=round(loading, 2), running_s=round(running, 2))
        return True

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
        deadline = time.monotonic() + self.settings.ssh_timeout_s
        for node in self.nodes:
            while node.ssh_open_at is None:
                endpoints = self.provider.ssh_endpoints(node.node_id, False)
                if any(tcp_accepts(endpoint) for endpoint in endpoints):
                    node.ssh_open_at = time.monotonic()
                    break
                if time.monotonic() >= deadline:
                    self.report.add(f"{self.prefix}ssh open ({node.kind})", "the mapped SSH port accepts TCP",
                                    f"nothing answered at {endpoints} within {self.settings.ssh_timeout_s:g} s",
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
                                    f"no login within {self.settings.ssh_timeout_s:g} s: {last_error}", Status.FAIL)
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
        appeared = self._overlay_appeared_s()
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
            where = _fields_holding(row.get("instances") if isinstance(row, dict) else None, addresses[node.node_id])
            shown += [f"{node.kind}: {', '.join(where)}"] if where else []
        self.report.add("overlay: address in the API", "not documented (read on the node, on eth0)",
                        "; ".join(shown) if shown else "no field shows it (as documented; ray up reads it on the node)",
                        Status.INFO, fields=shown)

    def _overlay_appeared_s(self) -> float | None:
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

    # --- the end ---------------------------------------------------------------------------------------------------

    def labelled(self) -> list[int]:
        """Ids of every instance carrying this run's label, from the raw pages (a misfit row is still found)."""
        ids: list[int] = []
        for body in raw_instance_pages(self.client, 400):
            rows = body.get("instances") if isinstance(body, dict) else None
            for row in rows if isinstance(rows, list) else []:
                if isinstance(row, dict) and is_cluster_label(row.get("label"), self.cluster_name):
                    with contextlib.suppress(TypeError, ValueError):
                        ids.append(int(row["id"]))
        return ids

    def sweep(self) -> None:
        """Destroy everything carrying this run's label, delete its overlay, and confirm with a list."""
        if self.report.meta.get("doctor_cluster") != self.cluster_name:
            return  # nothing was attempted
        started = time.monotonic()
        deadline = started + SWEEP_TIMEOUT_S
        destroyed: list[int] = []
        left: list[int] = []
        errors: list[str] = []
        quiet_lists = 0
        while time.monotonic() < deadline:
            try:
                left = self.labelled()
            except VastError as exc:
                errors.append(str(exc))
                time.sleep(POLL_S)
                continue
            if not left:
                quiet_lists += 1
                if quiet_lists >= 2:  # a second empty list: a rental answered late would show by now
                    break
                time.sleep(POLL_S)
                continue
            quiet_lists = 0
            for instance_id in left:
                try:
                    if self.client.destroy_instance(instance_id):
                        destroyed.append(instance_id)
                        self.report.note(f"destroyed instance {instance_id}")
                except VastError as exc:
                    errors.append(str(exc))
            time.sleep(POLL_S)
        for instance_id in destroyed:
            if instance_id not in self.report.destroyed:
                self.report.destroyed.append(instance_id)
            if instance_id not in self.report.rented:
                self.report.rented.append(instance_id)
        for node in self.nodes:
            if node.gone_at is None and node.instance_id in destroyed:
                node.gone_at = time.monotonic()
        overlay_note = self.delete_overlay(errors)
        self.report.meta["left_rented"] = left
        all_ours = sorted(set(self.report.rented))
        observed = (f"destroyed {sorted(set(self.report.destroyed)) or 'nothing'} of rented {all_ours or 'nothing'}; "
                    f"the list shows {left or 'nothing'} with label {self.cluster_name} after "
                    f"{time.monotonic() - started:.1f} s{overlay_note}")
        if errors:
            observed += f"; errors: {errors[:2]}"
        expected = "nothing left rented (found by label)" + (", overlay deleted" if self.settings.overlay else "")
        self.report.add(self.prefix + "destroyed", expected, observed,
                        Status.FAIL if left else Status.OK, destroyed=sorted(set(self.report.destroyed)), left=left)

    def delete_overlay(self, errors: list[str]) -> str:
        if not self.settings.overlay:
            return ""
        try:
            present = [o for o in self.client.list_overlays() if o.name == self.overlay_name]
            if present:
                self.client.delete_overlay(name=self.overlay_name)
                return f"; overlay {self.overlay_name} deleted"
            return "; no overlay left"
        except VastError as exc:
            errors.append(str(exc))
            return f"; overlay {self.overlay_name} may remain"

    def spend(self) -> None:
        if not self.nodes:
            return
        total = 0.0
        for node in self.nodes:
            price = (node.instance.dph_total if node.instance and node.instance.dph_total else 0.0) or 0.0
            end = node.gone_at or time.monotonic()
            total += price * (end - node.accepted_at) / 3600
        after: float | None = None
        with contextlib.suppress(VastError):
            user = self.client.current_user()
            after = user.credit if user.credit is not None else user.balance
        credit = ""
        if self.credit_before is not None and after is not None:
            credit = f"; credit ${self.credit_before:.4f} -> ${after:.4f} (Vast may bill later)"
        self.report.add(self.prefix + "spend", "cents", f"about ${total:.4f} (price x time rented){credit}", Status.OK,
                        estimate=round(total, 6), credit_before=self.credit_before, credit_after=after)


def _fields_holding(row: Any, address: str, path: str = "") -> list[str]:
    """Names of the fields of a raw instance row whose text holds ``address``."""
    found: list[str] = []
    if isinstance(row, dict):
        for key, value in row.items():
            found += _fields_holding(value, address, f"{path}.{key}" if path else str(key))
    elif isinstance(row, list):
        for index, value in enumerate(row):
            found += _fields_holding(value, address, f"{path}[{index}]")
    elif isinstance(row, str) and re.search(rf"(?<![\d.]){re.escape(address)}(?![\d.])", row):
        found.append(path)
    return found
