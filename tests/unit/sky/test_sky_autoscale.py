"""A pool attached to a cluster with too few nodes asks the autoscaler, reports progress, and fails in one line when
the cluster cannot grow (a fake autoscaler and clock: no Ray, no waiting)."""

from __future__ import annotations

from typing import Any

import pytest

from skyward_ray.emulator.testing import ManualClock
from skyward_ray.sky.autoscale import AutoscalerState, ConfigLimits, NodeRequest, _read_limits
from skyward_ray.sky.nodes import NodesUnavailableError

HEAD = {"node:__internal_head__": 1.0, "CPU": 1.0, "GPU": 1.0}
WORKER = {"CPU": 1.0, "GPU": 1.0}


def node(node_id: str, ip: str, resources: dict[str, float]) -> dict[str, Any]:
    return {"NodeID": node_id, "NodeManagerAddress": ip, "Alive": True, "Resources": resources}


class FakeAutoscaler:
    def __init__(self, states: list[AutoscalerState]) -> None:
        self.requests: list[list[dict[str, float]]] = []
        self.states = states

    def request(self, bundles: list[dict[str, float]]) -> None:
        self.requests.append(bundles)

    def state(self) -> AutoscalerState:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


def make(count: int, autoscaler: FakeAutoscaler, clock: ManualClock, lines: list[str]) -> NodeRequest:
    return NodeRequest(count, 1, autoscaler=autoscaler, say=lines.append, clock=clock, sleep=clock.sleep)


def test_missing_nodes_are_requested_with_progress_until_they_join() -> None:
    clock, lines = ManualClock(start=0.0), []
    launching = AutoscalerState(reporting=True, launching=("1 rtx4090",))
    setting_up = AutoscalerState(reporting=True, setting_up=("rtx4090 10.1.0.3 (ray-install)",))
    autoscaler = FakeAutoscaler([launching, launching, setting_up])
    views = [[node("h", "10.1.0.2", HEAD)]]

    def list_nodes() -> list[dict[str, Any]]:
        if clock.now >= 30:
            return [node("h", "10.1.0.2", HEAD), node("w", "10.1.0.3", WORKER)]
        return views[0]

    ranked = make(2, autoscaler, clock, lines).wait(list_nodes, timeout_s=600)
    assert [n.ip for n in ranked] == ["10.1.0.2", "10.1.0.3"]
    # The head counts as full, the missing node is one GPU bundle: the autoscaler must add a node.
    assert autoscaler.requests == [[{"CPU": 1.0, "GPU": 1.0}, {"GPU": 1.0}]]
    text = "\n".join(lines)
    assert "the cluster has 1 of nodes=2: asked its autoscaler for 1 more node(s) of {GPU: 1}" in text
    assert "nodes: 1 of 2 up, asked for 1 more; autoscaler: launching 1 rtx4090" in text
    assert "autoscaler: setting up rtx4090 10.1.0.3 (ray-install)" in text
    assert lines[-1].endswith("nodes: 2 of nodes=2 up")
    # Unchanged state is not repeated at every look (every 2 s), only every REPORT_EVERY_S.
    assert len(lines) <= 2 + 30 / 10 + 2


def test_enough_nodes_asks_for_nothing() -> None:
    clock, lines = ManualClock(start=0.0), []
    autoscaler = FakeAutoscaler([AutoscalerState(reporting=True)])
    request = make(1, autoscaler, clock, lines)
    request.wait(lambda: [node("h", "10.1.0.2", HEAD)], timeout_s=5)
    assert autoscaler.requests == [] and lines == []
    request.withdraw()
    assert autoscaler.requests == []


def test_infeasible_request_fails_at_once_in_one_line_naming_max_workers() -> None:
    clock, lines = ManualClock(start=0.0), []
    limits = ConfigLimits(max_workers=1, node_types={"head": (0, HEAD), "rtx4090": (3, WORKER)})
    ours = ((({"CPU": 1.0, "GPU": 1.0}), 1), ({"GPU": 1.0}, 2))
    autoscaler = FakeAutoscaler([AutoscalerState(reporting=True), AutoscalerState(reporting=True, infeasible=ours,
                                                                                   limits=limits)])
    request = make(3, autoscaler, clock, lines)
    with pytest.raises(NodesUnavailableError) as raised:
        request.wait(lambda: [node("h", "10.1.0.2", HEAD)], timeout_s=600)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("nodes=3: the cluster has 1 node(s) and its autoscaler cannot add the 2 more")
    assert "max_workers: 1; available_node_types.rtx4090.max_workers: 3" in message
    assert "lower nodes= to at most 2" in message
    assert clock.now < 10, "no waiting for the timeout"
    request.withdraw()
    assert autoscaler.requests[-1] == [], "the pool withdraws its request"


def test_an_older_infeasible_request_is_not_mistaken_for_ours() -> None:
    clock, lines = ManualClock(start=0.0), []
    stale = AutoscalerState(reporting=True, infeasible=(({"GPU": 8.0}, 4),))
    request = make(2, FakeAutoscaler([stale]), clock, lines)
    with pytest.raises(NodesUnavailableError, match="nodes=2 but the Ray cluster has 1 alive node"):
        request.wait(lambda: [node("h", "10.1.0.2", HEAD)], timeout_s=20)


def test_a_cluster_without_an_autoscaler_says_so() -> None:
    clock, lines = ManualClock(start=0.0), []
    request = make(2, FakeAutoscaler([AutoscalerState(reporting=False)]), clock, lines)
    with pytest.raises(NodesUnavailableError, match="no autoscaler reports on this cluster"):
        request.wait(lambda: [node("h", "10.1.0.2", HEAD)], timeout_s=20)
    assert any("`ray start` does not grow by itself" in line for line in lines)


def test_limits_are_read_from_the_bootstrapped_config(tmp_path: Any) -> None:
    (tmp_path / "ray_bootstrap_config.yaml").write_text(
        "max_workers: 2\navailable_node_types:\n  head: {resources: {CPU: 1, GPU: 1}, max_workers: 0}\n"
        "  rtx4090: {resources: {CPU: 1, GPU: 1}, max_workers: 3}\n  cpu: {resources: {CPU: 4}, max_workers: 9}\n")
    limits = _read_limits(tmp_path)
    assert limits is not None
    assert limits.workers_that_fit({"GPU": 1.0}) == (
        2, ["max_workers: 2", "available_node_types.rtx4090.max_workers: 3"])
    assert _read_limits(tmp_path / "missing") is None
