"""The checks that cost cents: rent through the provider itself (so the create body, the label and the SSH runner are
``ray up``'s), time each step to running, run :mod:`.node_checks`, then let :mod:`.cleanup` destroy everything carrying
the run's ``doctor-<hex>`` label, whatever happened before (an error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UNINITIALIZED,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray.doctor.cleanup import Cleanup, shielded
from skyward_ray.doctor.free import ClusterShape, FreeResult, rate_limit_row
from skyward_ray.doctor.node_checks import POLL_S, Node, NodeChecks
from skyward_ray.doctor.report import Report, Status
from skyward_ray.doctor.wire import WireLog
from skyward_ray.errors import SkywardError
from skyward_ray.placement import NodeGroup, NoPlacementError, PlacementRequest, build_queries, plan
from skyward_ray.provider.bootstrap import ensure_key_pair, key_body, register_ssh_key
from skyward_ray.provider.config import PROVIDER_MODULE, overlay_name_for
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import VastError
from skyward_ray.vast.models import NodeState

DOCTOR_DISK_GB = 10  # small and cheap; Vast's documented minimum is 8
MIN_DISK_GB = 8
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
                cleanup = Cleanup(self.report, self.client, self.cluster_name, self.overlay_name, self.nodes,
                                  overlay=self.settings.overlay, prefix=self.prefix, credit_before=self.credit_before)
                cleanup.sweep()
                cleanup.spend()
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
        assert self.provider is not None and self.key_path is not None
        checks = NodeChecks(self.report, self.client, self.wire, self.provider, self.key_path, self.cluster_name,
                            self.overlay_name, self.nodes, prefix=self.prefix,
                            ssh_timeout_s=self.settings.ssh_timeout_s)
        checks.api_view()
        if not checks.wait_ssh():
            return
        for node in self.nodes:
            checks.probe(node)
        checks.node_view()
        if self.settings.overlay:
            checks.overlay_checks()
        checks.scope_checks()

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
