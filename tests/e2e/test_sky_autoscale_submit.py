"""A ``sky`` pool under ``ray submit`` on a ``ray up`` cluster with fewer nodes than it needs: it asks the autoscaler
for them, prints progress while it waits, and fails in one line when ``max_workers`` forbids the size.

One cluster for the module: a copy of ``skyward_ray/demo/emulator.yaml`` on its own netns emulator (child process, own
prefix and subnet), with ``max_workers: 2``, so 1 head + 2 workers is the most it can be. The head has one GPU, the
pools ask for ``RTX 4090`` (one GPU per node).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support.emulated_ray_cluster import EmulatorProcess, RayCluster, json_lines

if TYPE_CHECKING:
    from support.netns_host import NetnsKit

pytestmark = pytest.mark.timeout(900)

JOB = Path(__file__).resolve().parent / "sky_pool_job.py"
MAX_WORKERS = 2
POOL_TIMEOUT_S = 400


def _two_workers_at_most(config: dict[str, Any]) -> None:
    config["max_workers"] = MAX_WORKERS
    config["available_node_types"]["rtx4090"]["max_workers"] = MAX_WORKERS


@pytest.fixture(scope="module")
def cluster(netns_host: None, netns_kit: NetnsKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    prefix = netns_kit.unique_prefix()
    workdir = tmp_path_factory.mktemp("autoscale")
    emulator = EmulatorProcess(prefix=prefix, public_subnet=netns_kit.free_public_subnet(),
                               log_path=workdir / "logs" / "emulator.log").start()
    ray_cluster: RayCluster | None = None
    try:
        ray_cluster = RayCluster(emulator, workdir, name=f"e2e-{prefix}", overrides=_two_workers_at_most)
        ray_cluster.up(timeout_s=420).check()
        yield ray_cluster
        ray_cluster.down(timeout_s=240).check()
    finally:
        try:
            if ray_cluster is not None and emulator.live_instances():
                ray_cluster.down(timeout_s=120)
        finally:
            emulator.stop()
            if ray_cluster is not None:
                ray_cluster.close()
    assert not emulator.swept, f"the emulator left {emulator.swept} after it stopped (swept now)"
    assert not netns_kit.leftovers(prefix)


def _sky_lines(output: str) -> list[str]:
    return [line.strip() for line in output.replace("\r", "\n").splitlines() if line.strip().startswith("sky: ")]


def test_a_pool_bigger_than_max_workers_allows_fails_in_one_line(cluster: RayCluster) -> None:
    nodes = MAX_WORKERS + 2  # one more than the head plus every allowed worker
    run = cluster.submit(str(nodes), str(POOL_TIMEOUT_S), script=JOB, timeout_s=300)
    assert run.returncode != 0, run.tail()
    lines = _sky_lines(run.output)
    assert any(f"asked its autoscaler for {nodes - 1} more node(s) of {{GPU: 1}}" in line for line in lines), lines
    failure = [line for line in lines if "cannot grow:" in line]
    assert len(failure) == 1, lines
    assert f"nodes={nodes}: the cluster has 1 node(s) and its autoscaler cannot add the {nodes - 1} more" in failure[0]
    assert f"max_workers: {MAX_WORKERS}" in failure[0] and f"lower nodes= to at most {MAX_WORKERS + 1}" in failure[0]
    seconds = float(re.search(r"\[\s*(\d+)s\] cannot grow", failure[0]).group(1))  # type: ignore[union-attr]
    assert seconds < 60, "failed at once, not at the pool's timeout"
    assert f"NodesUnavailableError: nodes={nodes}:" in run.output  # the exception carries the same one line


def test_a_pool_on_a_one_node_cluster_gets_its_nodes_from_the_autoscaler(cluster: RayCluster) -> None:
    run = cluster.submit("2", str(POOL_TIMEOUT_S), script=JOB, timeout_s=POOL_TIMEOUT_S + 120)
    assert run.returncode == 0, run.tail()
    lines = _sky_lines(run.output)
    assert any("the cluster has 1 of nodes=2: asked its autoscaler for 1 more node(s) of {GPU: 1}" in line
               for line in lines), lines
    progress = [line for line in lines if "nodes: 1 of 2 up, asked for 1 more; autoscaler:" in line]
    assert progress, lines
    assert any("launching" in line or "setting up" in line for line in progress), progress
    assert any(line.endswith("nodes: 2 of nodes=2 up") for line in lines), lines
    result = json_lines(run.output)[-1]
    assert len(set(result["ips"])) == 2 and sorted(result["ips"]) == sorted(result["ranks"])
