"""``skyward-ray status``'s grouping and costs from instance rows alone (no I/O): who belongs where, what is trouble,
what each node costs now and has cost, and what is not ours."""

from __future__ import annotations

from typing import Any

import pytest
from ray.autoscaler.tags import STATUS_UPDATE_FAILED, TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS

from skyward_ray.cli.status import build_report, render
from skyward_ray.provider.tags import encode_label
from skyward_ray.vast.models import Instance

NOW = 1_800_000_000.0


def row(instance_id: int, label: str | None, *, age_s: float = 7200.0, status: str = "running",
        **extra: Any) -> Instance:
    fields: dict[str, Any] = {"id": instance_id, "label": label, "actual_status": status, "intended_status": "running",
                              "cur_state": "running", "next_state": "running", "start_date": NOW - age_s,
                              "dph_total": 0.5, "storage_total_cost": 0.1, "uptime_mins": 60.0, "is_bid": False,
                              "gpu_name": "RTX 4090", "num_gpus": 1, **extra}
    return Instance.model_validate(fields)


def ours(cluster: str, kind: str, **tags: str) -> str:
    return encode_label(cluster, {TAG_RAY_NODE_KIND: kind, **tags})


def test_costs_use_uptime_for_the_gpu_and_age_for_storage() -> None:
    report = build_report([row(1, ours("a", "head"))], now=NOW)
    (node,) = report.clusters[0].nodes
    assert node.per_hour == 0.5 and not node.spent_is_floor
    assert node.spent == pytest.approx(0.1 * 2 + 0.4 * 1)  # storage for 2 h, GPU for the 1 h it has run


def test_a_stopped_node_costs_storage_now_and_its_spend_is_a_floor() -> None:
    stopped = row(2, ours("a", "worker"), status="stopped", intended_status="stopped", cur_state="stopped",
                  next_state="stopped", is_bid=True, uptime_mins=0.0)
    report = build_report([row(1, ours("a", "head")), stopped], now=NOW)
    node = next(n for n in report.clusters[0].nodes if n.id == 2)
    assert node.per_hour == pytest.approx(0.1) and node.spent_is_floor and node.spent == pytest.approx(0.2)
    assert node.trouble and node.trouble.startswith("outbid")
    assert render(report).count(">=$") == 2  # the cluster's spend and the total


def test_loading_too_long_and_update_failed_are_trouble_pending_is_not() -> None:
    rows = [row(1, ours("a", "head", **{TAG_RAY_NODE_STATUS: STATUS_UPDATE_FAILED})),
            row(2, ours("a", "worker"), status="loading", age_s=1000.0, uptime_mins=None),
            row(3, ours("a", "worker"), status="loading", age_s=100.0, uptime_mins=None)]
    trouble = {n.id: n.trouble for n in build_report(rows, now=NOW, loading_timeout_s=900).clusters[0].nodes}
    assert trouble[1] == "Ray's setup failed on it (update-failed)"
    assert trouble[2] == "loading for 16m (over 15m)" and trouble[3] is None


def test_orphans_and_instances_not_ours() -> None:
    rows = [row(1, ours("a", "head")), row(2, ours("gone", "worker")), row(3, "skyr1:broken"), row(4, "notebook"),
            row(5, None)]
    report = build_report(rows, now=NOW)
    assert [c.name for c in report.clusters] == ["a"]
    assert [(o.id, o.cluster) for o in report.orphans] == [(2, "gone"), (3, None)]
    assert "instance 3: unreadable label" in render(report)
    only = build_report(rows, now=NOW, cluster="gone")
    assert only.clusters == [] and [o.id for o in only.orphans] == [2]


def test_an_empty_account_says_so() -> None:
    assert render(build_report([row(4, "notebook")], now=NOW)) == "no clusters and no instances of ours in this account"
