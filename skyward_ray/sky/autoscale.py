"""A pool attached to a cluster with fewer nodes than ``nodes=N`` asks the cluster's autoscaler for the rest.

Nothing in a driver that only waits creates resource demand, so without this a pool run with ``ray submit`` on a
one-node ``ray up`` cluster would wait silently. :class:`NodeRequest` asks, reports progress, fails fast on an
infeasible request and withdraws it when the pool ends.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from skyward_ray.sky.nodes import NodeInfo, NodesUnavailableError, rank_nodes

log = logging.getLogger(__name__)

LOOK_EVERY_S = 2.0  # how often the autoscaler's state is read (one GCS call)
REPORT_EVERY_S = 10.0  # a progress line at least this often, even when nothing changed
STATUS_TIMEOUT_S = 30.0
BOOTSTRAPPED_CONFIG = "ray_bootstrap_config.yaml"  # where `ray up` leaves the cluster config on the head (in ~)
_HEAD_RESOURCE = "node:__internal_head__"

Bundle = dict[str, float]


@dataclass(frozen=True)
class ConfigLimits:
    """What the cluster config says about growth: the cluster's max_workers and each node type's."""

    max_workers: int | None
    node_types: dict[str, tuple[int, dict[str, float]]]  # name -> (max_workers, resources)

    def workers_that_fit(self, shape: Bundle) -> tuple[int, list[str]]:
        """How many workers of ``shape`` the config allows at most, and the settings that say so."""
        fitting = {name: limit for name, (limit, resources) in self.node_types.items()
                   if limit > 0 and all(resources.get(k, 0.0) >= v for k, v in shape.items())}
        total = sum(fitting.values())
        settings = [f"available_node_types.{name}.max_workers: {limit}" for name, limit in fitting.items()]
        if self.max_workers is not None and self.max_workers < total:
            total = self.max_workers
        if self.max_workers is not None:
            settings.insert(0, f"max_workers: {self.max_workers}")
        return total, settings


@dataclass(frozen=True)
class AutoscalerState:
    """What the autoscaler last reported to the GCS, reduced to what a waiting user wants to know."""

    reporting: bool  # False: no autoscaler has reported (a cluster from `ray start`, or the legacy autoscaler)
    launching: tuple[str, ...] = ()  # "1 rtx4090"
    setting_up: tuple[str, ...] = ()  # "rtx4090 10.1.0.3 (ray-install)"
    failed: tuple[str, ...] = ()  # "rtx4090: <reason>"
    infeasible: tuple[tuple[Bundle, int], ...] = ()  # the cluster constraint it cannot meet: (bundle, count)...
    limits: ConfigLimits | None = None

    def describe(self) -> str:
        if not self.reporting:
            return "no autoscaler reports on this cluster (one started with `ray start` does not grow by itself)"
        parts = []
        if self.launching:
            parts.append("launching " + ", ".join(self.launching))
        if self.setting_up:
            parts.append("setting up " + ", ".join(self.setting_up))
        if self.failed:
            parts.append("failed: " + "; ".join(self.failed))
        return "; ".join(parts) or "no launch under way yet"


class Autoscaler(Protocol):
    def request(self, bundles: list[Bundle]) -> None: ...

    def state(self) -> AutoscalerState: ...


# --- on the cluster (in-process, or as a task on the head under Ray Client) ------------------------------------------


def _request_here(bundles: list[Bundle]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


def _read_limits(home: Path | None = None) -> ConfigLimits | None:
    path = (home or Path.home()) / BOOTSTRAPPED_CONFIG
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    types: dict[str, tuple[int, dict[str, float]]] = {}
    for name, settings in (config.get("available_node_types") or {}).items():
        if isinstance(settings, dict):
            resources = {str(k): float(v) for k, v in (settings.get("resources") or {}).items()
                         if isinstance(v, int | float)}
            types[str(name)] = (int(settings.get("max_workers", 0) or 0), resources)
    top = config.get("max_workers")
    return ConfigLimits(int(top) if isinstance(top, int) else None, types)


def _state_here() -> dict[str, Any]:
    """The autoscaler's last report, as plain data (so it crosses a Ray task boundary)."""
    import ray
    from ray._raylet import GcsClient
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    limits = _read_limits()
    if not is_autoscaler_v2(fetch_from_server=True):
        return {"reporting": False, "limits": limits}
    reply = GetClusterStatusReply()
    reply.ParseFromString(GcsClient(ray.get_runtime_context().gcs_address).get_cluster_status(timeout_s=10))
    state = reply.autoscaling_state
    return {
        "reporting": state.autoscaler_state_version > 0,
        "launching": [f"{r.count} {r.ray_node_type_name}" for r in state.pending_instance_requests],
        "setting_up": [f"{p.ray_node_type_name} {p.ip_address or p.instance_id}" + (f" ({p.details})" if p.details
                                                                                     else "")
                       for p in state.pending_instances],
        "failed": [f"{f.ray_node_type_name}: {f.reason}" for f in state.failed_instance_requests],
        "infeasible": [[(dict(r.request.resources_bundle), r.count) for r in c.resource_requests]
                       for c in state.infeasible_cluster_resource_constraints],
        "limits": limits,
    }


class RayAutoscaler:
    """The connected cluster's autoscaler, through Ray's SDK and the GCS.

    Under Ray Client the SDK calls must run on the cluster (they talk to the GCS directly), so they run as a zero-CPU
    task pinned to the head node; on a driver inside the cluster (``ray submit``) they run in-process.
    """

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        import ray

        if not ray.util.client.ray.is_connected():
            return fn(*args)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        head = next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and _HEAD_RESOURCE in (n.get("Resources")
                                                                                              or {})), None)
        options: dict[str, Any] = {"num_cpus": 0, "max_retries": 0}
        if head is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=True)
        return ray.get(ray.remote(**options)(fn).remote(*args), timeout=STATUS_TIMEOUT_S)

    def request(self, bundles: list[Bundle]) -> None:
        self._call(_request_here, bundles)

    def state(self) -> AutoscalerState:
        raw = self._call(_state_here)
        infeasible = raw.get("infeasible") or []
        return AutoscalerState(
            reporting=bool(raw.get("reporting")),
            launching=tuple(raw.get("launching") or ()),
            setting_up=tuple(raw.get("setting_up") or ()),
            failed=tuple(raw.get("failed") or ()),
            infeasible=tuple((dict(b), int(c)) for b, c in infeasible[0]) if infeasible else (),
            limits=raw.get("limits"),
        )


# --- the pool's side -------------------------------------------------------------------------------------------------


def _plain(bundle: Bundle) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(bundle.items())) + "}"


def node_shape(ranked: Sequence[NodeInfo], gpus_per_node: int) -> Bundle:
    """One missing node's bundle: its GPUs when the pool has an accelerator, else the smallest alive node's CPUs."""
    if gpus_per_node > 0:
        return {"GPU": float(gpus_per_node)}
    cpus = min((n.cpus for n in ranked if n.cpus > 0), default=1.0)
    return {"CPU": float(cpus)}


def node_bundles(ranked: Sequence[NodeInfo], count: int, shape: Bundle) -> list[Bundle]:
    """Every alive node at its full size (so none counts as room), plus ``shape`` once per missing node."""
    existing = [{k: v for k, v in (("CPU", float(n.cpus)), ("GPU", float(n.gpus))) if v > 0} for n in ranked]
    return [b for b in existing if b] + [dict(shape) for _ in range(max(0, count - len(ranked)))]


def _same_request(infeasible: tuple[tuple[Bundle, int], ...], bundles: list[Bundle]) -> bool:
    """Whether the infeasible constraint the autoscaler reports is ours (not an older one it has not replaced yet)."""
    theirs: dict[frozenset[tuple[str, float]], int] = {}
    for bundle, count in infeasible:
        key = frozenset((k, float(v)) for k, v in bundle.items())
        theirs[key] = theirs.get(key, 0) + count
    ours: dict[frozenset[tuple[str, float]], int] = {}
    for bundle in bundles:
        key = frozenset((k, float(v)) for k, v in bundle.items())
        ours[key] = ours.get(key, 0) + 1
    return theirs == ours


def cannot_grow_message(count: int, have: int, shape: Bundle, limits: ConfigLimits | None) -> str:
    """The one line for a request the autoscaler cannot meet, naming the setting to change."""
    missing = count - have
    head = (f"nodes={count}: the cluster has {have} node(s) and its autoscaler cannot add the {missing} more "
            f"of {_plain(shape)} this pool needs")
    if limits is not None:
        allowed, settings = limits.workers_that_fit(shape)
        said = f" ({'; '.join(settings)})" if settings else " (no node type with that shape)"
        return (f"{head}: the cluster config allows {allowed} worker(s) of that shape{said}. Raise max_workers "
                f"(the cluster's and the node type's) in the cluster YAML and run `ray up` again, or lower nodes= to "
                f"at most {1 + allowed}")
    return (f"{head}: no node type of the cluster config fits it within max_workers. Raise max_workers (the cluster's "
            "and the node type's) in the cluster YAML, or add a node type of that shape, and run `ray up` again; "
            "or lower nodes=")


@dataclass
class NodeRequest:
    """Waits for a pool's nodes on an attached cluster, asking its autoscaler for the missing ones.

    1. asks with Ray's own SDK (``ray.autoscaler.sdk.request_resources``) for :func:`node_bundles`: every alive node
       at its full size, plus :func:`node_shape` once per missing node;
    2. prints a progress line (stderr, ``sky: ...``) when what it sees changes, and at least every
       ``report_every_s``: nodes up, nodes asked for, and what the autoscaler says it is doing (launches pending,
       nodes setting up, launches that failed and why), read from the autoscaler's state in the GCS;
    3. fails at once, in one line, when the autoscaler reports the request infeasible (:func:`cannot_grow_message`
       names the setting to change and, when it can read ``~/ray_bootstrap_config.yaml``, the largest ``nodes=``);
    4. :meth:`withdraw` replaces the request with an empty one when the pool ends, so the autoscaler may scale the
       cluster back down as it would have without the pool (``requested`` says whether there is one).
    """

    count: int
    gpus_per_node: int
    autoscaler: Autoscaler = field(default_factory=RayAutoscaler)
    say: Callable[[str], None] | None = None
    poll_s: float = 0.5
    look_every_s: float = LOOK_EVERY_S
    report_every_s: float = REPORT_EVERY_S
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    requested: bool = False

    def _say(self, started: float, message: str) -> None:
        line = f"[{self.clock() - started:4.0f}s] {message}"
        log.info("%s", line)
        if self.say is not None:
            self.say(line)
        else:
            print(f"sky: {line}", file=sys.stderr, flush=True)

    def wait(self, list_nodes: Callable[[], Sequence[dict[str, Any]]], timeout_s: float) -> list[NodeInfo]:
        started = self.clock()
        deadline = started + timeout_s
        bundles: list[Bundle] = []
        shape: Bundle = {}
        last_line, last_said = "", started
        next_look = started
        state: AutoscalerState | None = None
        while True:
            ranked = rank_nodes(list_nodes())
            if len(ranked) >= self.count:
                if self.requested:
                    self._say(started, f"nodes: {self.count} of nodes={self.count} up")
                return ranked[: self.count]
            if not self.requested:
                shape = node_shape(ranked, self.gpus_per_node)
                bundles = node_bundles(ranked, self.count, shape)
                self.autoscaler.request(bundles)
                self.requested = True
                self._say(started, f"the cluster has {len(ranked)} of nodes={self.count}: asked its autoscaler for "
                                   f"{self.count - len(ranked)} more node(s) of {_plain(shape)}")
            now = self.clock()
            if now >= next_look:
                next_look = now + self.look_every_s
                try:
                    state = self.autoscaler.state()
                except Exception as exc:  # progress only: a failed look is reported, the wait goes on
                    log.debug("reading the autoscaler's state failed: %s", exc)
                    state = None
                if state is not None and state.infeasible and _same_request(state.infeasible, bundles):
                    message = cannot_grow_message(self.count, len(ranked), shape, state.limits)
                    self._say(started, f"cannot grow: {message}")
                    raise NodesUnavailableError(message)
                doing = state.describe() if state is not None else "status unavailable"
                line = f"nodes: {len(ranked)} of {self.count} up, asked for {self.count - len(ranked)} more; " \
                       f"autoscaler: {doing}"
                if line != last_line or now - last_said >= self.report_every_s:
                    self._say(started, line)
                    last_line, last_said = line, now
            if self.clock() >= deadline:
                seen = ", ".join(f"{n.ip} (rank {n.rank})" for n in ranked) or "none"
                doing = f"; the autoscaler: {state.describe()}" if state is not None else ""
                raise NodesUnavailableError(
                    f"the pool needs nodes={self.count} but the Ray cluster has {len(ranked)} alive node(s) after "
                    f"{timeout_s:g} s: {seen}{doing}. Start more nodes, or lower nodes= to at most {len(ranked)}."
                )
            self.sleep(self.poll_s)

    def withdraw(self) -> None:
        """Replace the pool's request with an empty one (the cluster may shrink again as it would have)."""
        if not self.requested:
            return
        self.requested = False
        try:
            self.autoscaler.request([])
        except Exception as exc:  # the pool is ending; the request only keeps nodes up until the next one
            log.warning("withdrawing the pool's autoscaler request failed: %s", exc)
