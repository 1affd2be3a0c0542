"""``skyward-ray status``: every cluster of this account, what it runs, what it costs now and has cost so far.

Everything comes from one paged instance list and the labels our provider writes, so it works from any machine with
the account key, no local state, and the same few calls however many nodes there are.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UPDATE_FAILED,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray.provider.config import VastProviderConfig
from skyward_ray.provider.tags import LABEL_VERSION, TAG_OVERLAY_SUBNET, TAG_PHYSICAL_CLUSTER, decode_label
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.models import Instance, NodeState

DEFAULT_LOADING_TIMEOUT_S = float(VastProviderConfig.model_fields["loading_timeout_s"].default)


def _now() -> float:
    """Wall-clock seconds, the scale of Vast's ``start_date`` (a seam for tests on an emulated clock)."""
    return time.time()


@dataclass(frozen=True)
class NodeStatus:
    """One instance of ours, as status shows it."""

    id: int
    cluster: str | None
    kind: str  # head, worker or unknown
    node_type: str | None
    allocation: str  # bid or on-demand
    gpu_name: str
    gpus: int
    status: str  # Vast's actual_status (or "-")
    state: str  # the provider's reading of it: pending, running, interrupted, failed
    physical_cluster: int | None
    overlay: str | None
    per_hour: float
    spent: float
    spent_is_floor: bool
    age_s: float
    trouble: str | None


@dataclass
class ClusterStatus:
    """One cluster: every instance whose label names it, with a head among them."""

    name: str
    nodes: list[NodeStatus] = field(default_factory=list)

    @property
    def head(self) -> NodeStatus | None:
        return next((node for node in self.nodes if node.kind == NODE_KIND_HEAD), None)

    def summary(self) -> dict[str, Any]:
        kinds = Counter(node.kind for node in self.nodes)
        allocations = Counter(node.allocation for node in self.nodes)
        gpus: Counter[str] = Counter()
        for node in self.nodes:
            gpus[node.gpu_name] += node.gpus
        return {
            "name": self.name,
            "nodes": {"head": kinds[NODE_KIND_HEAD], "workers": kinds[NODE_KIND_WORKER],
                      "on_demand": allocations["on-demand"], "bid": allocations["bid"]},
            "gpus": dict(sorted(gpus.items())),
            "physical_clusters": sorted({n.physical_cluster for n in self.nodes if n.physical_cluster is not None}),
            "overlays": sorted({n.overlay for n in self.nodes if n.overlay}),
            "per_hour": round(sum(node.per_hour for node in self.nodes), 6),
            "spent": round(sum(node.spent for node in self.nodes), 6),
            "spent_is_floor": any(node.spent_is_floor for node in self.nodes),
            "age_s": round(max((node.age_s for node in self.nodes), default=0.0), 1),
            "trouble": [{"id": node.id, "kind": node.kind, "reason": node.trouble}
                        for node in self.nodes if node.trouble],
            "instances": [asdict(node) for node in self.nodes],
        }


@dataclass
class Report:
    clusters: list[ClusterStatus]
    orphans: list[NodeStatus]

    def to_json(self) -> dict[str, Any]:
        everything = [node for cluster in self.clusters for node in cluster.nodes] + self.orphans
        return {
            "clusters": [cluster.summary() for cluster in self.clusters],
            "orphans": [asdict(node) for node in self.orphans],
            "total": {
                "clusters": len(self.clusters),
                "instances": len(everything),
                "per_hour": round(sum(node.per_hour for node in everything), 6),
                "spent": round(sum(node.spent for node in everything), 6),
                "spent_is_floor": any(node.spent_is_floor for node in everything),
            },
        }


def _extra_float(instance: Instance, name: str) -> float | None:
    value = (instance.model_extra or {}).get(name)
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _costs(instance: Instance, state: NodeState, age_s: float) -> tuple[float, float, bool]:
    """($/h now, spent so far, whether the spend is only a floor) from the row's own fields.

    $/h now: a running or loading instance at its ``dph_total`` (GPU and storage), a stopped or failed one at its
    ``storage_total_cost`` (Vast charges storage until it is destroyed). Spent: storage since ``start_date`` plus the
    GPU part of ``dph_total`` over ``uptime_mins`` (run time since the last start). A stopped instance reports no run
    time, and a restarted one (a rebid) only the time since its restart, so a stopped one's spend is a floor.
    """
    total = instance.dph_total or 0.0
    storage = min(_extra_float(instance, "storage_total_cost") or 0.0, total)
    gpu = total - storage
    running = state is NodeState.RUNNING
    live = state in (NodeState.RUNNING, NodeState.PENDING)
    per_hour = total if live else storage
    uptime_mins = _extra_float(instance, "uptime_mins")
    run_s = (uptime_mins * 60 if uptime_mins is not None else age_s) if running else 0.0
    spent = storage * age_s / 3600 + gpu * min(run_s, age_s) / 3600
    return per_hour, spent, not live


def _trouble(instance: Instance, state: NodeState, tags: dict[str, str], age_s: float,
             loading_timeout_s: float) -> str | None:
    """Outbid, failed (exited, offline, an OCI error, a stopped on-demand instance), loading too long, or Ray's own
    setup failed on it; None when the node is fine."""
    status = instance.actual_status or "no status"
    if state is NodeState.INTERRUPTED:
        return "outbid (Vast stopped the interruptible instance)"
    if state is NodeState.FAILED:
        detail = f": {instance.status_msg.strip()}" if instance.status_msg and instance.status_msg.strip() else ""
        return f"failed ({status}{detail})"
    if state is NodeState.PENDING and age_s > loading_timeout_s:
        return f"loading for {_age(age_s)} (over {_age(loading_timeout_s)})"
    if tags.get(TAG_RAY_NODE_STATUS) == STATUS_UPDATE_FAILED:
        return "Ray's setup failed on it (update-failed)"
    return None


def _node(instance: Instance, cluster: str | None, tags: dict[str, str], now: float,
          loading_timeout_s: float) -> NodeStatus:
    state = instance.state
    age_s = max(0.0, now - instance.start_date) if instance.start_date is not None else 0.0
    per_hour, spent, floor = _costs(instance, state, age_s)
    physical = tags.get(TAG_PHYSICAL_CLUSTER)
    overlay_parts = [part for part in (instance.overlay_name, tags.get(TAG_OVERLAY_SUBNET)) if part]
    return NodeStatus(
        id=instance.id,
        cluster=cluster,
        kind=tags.get(TAG_RAY_NODE_KIND, "unknown"),
        node_type=tags.get(TAG_RAY_USER_NODE_TYPE),
        allocation="bid" if instance.is_bid else "on-demand",
        gpu_name=instance.gpu_name or "?",
        gpus=instance.num_gpus or 0,
        status=instance.actual_status or "-",
        state=state.value,
        physical_cluster=int(physical) if physical and physical.isdigit() else instance.cluster_id,
        overlay=" ".join(overlay_parts) or None,
        per_hour=round(per_hour, 6),
        spent=round(spent, 6),
        spent_is_floor=floor,
        age_s=round(age_s, 1),
        trouble=_trouble(instance, state, tags, age_s, loading_timeout_s),
    )


def build_report(instances: Iterable[Instance], *, now: float, cluster: str | None = None,
                 loading_timeout_s: float = DEFAULT_LOADING_TIMEOUT_S) -> Report:
    """Group the account's instances by the cluster their label names; no I/O. A cluster needs a head among its
    instances; the rest of ours are orphans (workers whose head is gone, or a label this version cannot read: nothing
    claims them and they cost money until destroyed). Instances without a label of ours are not shown."""
    by_name: dict[str, ClusterStatus] = {}
    orphans: list[NodeStatus] = []
    for instance in instances:
        label = instance.label or ""
        decoded = decode_label(label)
        if decoded is None:
            if label.startswith(LABEL_VERSION + ":") and cluster is None:
                orphans.append(_node(instance, None, {}, now, loading_timeout_s))
            continue
        name, tags = decoded
        if cluster is not None and name != cluster:
            continue
        by_name.setdefault(name, ClusterStatus(name)).nodes.append(_node(instance, name, tags, now, loading_timeout_s))
    clusters = []
    for name in sorted(by_name):
        group = by_name[name]
        if group.head is None:
            orphans.extend(group.nodes)
        else:
            group.nodes.sort(key=lambda node: (node.kind != NODE_KIND_HEAD, node.id))
            clusters.append(group)
    return Report(clusters, sorted(orphans, key=lambda node: node.id))


# -- text --------------------------------------------------------------------------------------------------------


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _dollars(value: float, floor: bool = False) -> str:
    return (">=" if floor else "") + f"${value:.4f}"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def _nodes_text(summary: dict[str, Any]) -> str:
    nodes = summary["nodes"]
    kinds = f"{nodes['head']} head, {nodes['workers']} worker{'s' if nodes['workers'] != 1 else ''}"
    return f"{kinds} ({nodes['on_demand']} on-demand, {nodes['bid']} bid)"


def _node_rows(report: Report) -> list[str]:
    """Each node of each cluster shown (for ``--cluster NAME``: one cluster, node by node)."""
    rows = [["  INSTANCE", "KIND", "TYPE", "PAID", "GPUS", "STATUS", "$/H NOW", "SPENT", "AGE"]]
    for cluster in report.clusters:
        for node in cluster.nodes:
            rows.append([f"  {node.id}", node.kind, node.node_type or "-", node.allocation,
                         f"{node.gpus} x {node.gpu_name}", node.status, _dollars(node.per_hour),
                         _dollars(node.spent, node.spent_is_floor), _age(node.age_s)])
    return _table(rows)


def render(report: Report, *, nodes: bool = False) -> str:
    data = report.to_json()
    if not report.clusters and not report.orphans:
        return "no clusters and no instances of ours in this account"
    lines: list[str] = []
    if report.clusters:
        rows = [["CLUSTER", "NODES", "GPUS", "PHYSICAL", "OVERLAY", "$/H NOW", "SPENT", "AGE"]]
        for summary in data["clusters"]:
            rows.append([
                summary["name"], _nodes_text(summary),
                ", ".join(f"{count} x {gpu}" for gpu, count in summary["gpus"].items()),
                ",".join(map(str, summary["physical_clusters"])) or "-", ", ".join(summary["overlays"]) or "-",
                _dollars(summary["per_hour"]), _dollars(summary["spent"], summary["spent_is_floor"]),
                _age(summary["age_s"]),
            ])
        lines += _table(rows)
        if nodes:
            lines += _node_rows(report)
    troubled = [(summary["name"], item) for summary in data["clusters"] for item in summary["trouble"]]
    if troubled:
        lines.append("nodes in trouble:")
        lines += [f"  {name}: instance {item['id']} ({item['kind']}): {item['reason']}" for name, item in troubled]
    if report.orphans:
        lines.append("orphans (a label of ours, no cluster head left; they cost money until destroyed):")
        for node in report.orphans:
            owner = f"cluster {node.cluster!r}" if node.cluster is not None else "unreadable label"
            trouble = f", {node.trouble}" if node.trouble else ""
            lines.append(f"  instance {node.id}: {owner}, {node.kind}, {node.gpus} x {node.gpu_name}, {node.status}, "
                         f"{_dollars(node.per_hour)}/h, spent {_dollars(node.spent, node.spent_is_floor)}, "
                         f"age {_age(node.age_s)}{trouble}")
    total = data["total"]
    lines.append(f"total: {total['clusters']} cluster{'s' if total['clusters'] != 1 else ''}, "
                 f"{total['instances']} instance{'s' if total['instances'] != 1 else ''}, "
                 f"{_dollars(total['per_hour'])}/h now, {_dollars(total['spent'], total['spent_is_floor'])} spent "
                 "(estimated from start times and prices)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with VastClient() as client:
        instances = client.list_instances()
    report = build_report(instances, now=_now(), cluster=args.cluster, loading_timeout_s=args.loading_timeout)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render(report, nodes=args.cluster is not None))
    return 0


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: seconds > 0")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status", help="every cluster of this account: nodes, GPUs, $/h now, spend so far, trouble, orphans",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--cluster", metavar="NAME", help="only this cluster (and its orphans)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--loading-timeout", type=_positive_seconds, default=DEFAULT_LOADING_TIMEOUT_S,
                        metavar="S", help="a node loading longer than this is in trouble "
                        f"(default {DEFAULT_LOADING_TIMEOUT_S:g}, the provider's loading_timeout_s)")
    parser.set_defaults(func=run)
