"""The workloads the ``ray up`` e2e tests submit with ``ray submit`` (one file: Ray uploads only the script).

    probe                  where the driver runs and what the cluster offers
    hold N                 N detached one-GPU actors ``holder-<i>``: one per node (every node has one GPU), so the
                           autoscaler must rent N - 1 workers; prints where each runs and exits, the actors stay
    spread N SECONDS       kill the holders, then N one-GPU tasks of SECONDS each in a STRICT_SPREAD placement group
                           (one per node, like a multi-node training step): a node lost mid-task must be replaced by
                           a new one, and the task is retried there. Prints when all started, then the results

Each result is one ``E2E-JSON {...}`` line on stdout.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

NAMESPACE = "e2e"
HOLDER = "holder-"


def emit(payload: dict[str, Any]) -> None:
    print("E2E-JSON " + json.dumps(payload), flush=True)


def where() -> dict[str, Any]:
    """The Vast instance (its CONTAINER_ID), the Ray node and its IP, the interface NCCL would use."""
    return {
        "instance": os.environ.get("CONTAINER_ID"),
        "hostname": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "nccl_ifname": os.environ.get("NCCL_SOCKET_IFNAME"),
        "pid": os.getpid(),
    }


@ray.remote(num_gpus=1, num_cpus=0)
class Holder:
    def where(self) -> dict[str, Any]:
        return where()


@ray.remote(num_cpus=0)
class Tracker:
    """Records every task start (retries included), on the head: it must outlive any worker."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []

    def started(self, info: dict[str, Any]) -> None:
        self.starts.append(info)

    def get(self) -> list[dict[str, Any]]:
        return list(self.starts)


@ray.remote(num_gpus=1, num_cpus=0, max_retries=5)
def work(index: int, tracker: Any, seconds: float) -> dict[str, Any]:
    info = {**where(), "task": index, "started": time.time()}
    ray.get(tracker.started.remote(info))
    time.sleep(seconds)
    return {**info, "ended": time.time(), "value": index * index}


def probe() -> None:
    emit({"instance": os.environ.get("CONTAINER_ID"), "node_ip": ray.util.get_node_ip_address(),
          "resources": ray.cluster_resources(), "argv": sys.argv[2:]})


def hold(count: int) -> None:
    holders = [Holder.options(name=f"{HOLDER}{i}", lifetime="detached").remote() for i in range(count)]
    emit({"holders": ray.get([h.where.remote() for h in holders], timeout=600)})


def spread(count: int, seconds: float) -> None:
    for name in ray.util.list_named_actors():
        if name.startswith(HOLDER):
            ray.kill(ray.get_actor(name))
    head = ray.get_runtime_context().get_node_id()
    tracker = Tracker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
    group = placement_group([{"GPU": 1}] * count, strategy="STRICT_SPREAD")
    ray.get(group.ready(), timeout=600)
    futures = [work.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)).remote(i, tracker, seconds)
               for i in range(count)]
    deadline = time.monotonic() + 300
    while len({s["task"] for s in ray.get(tracker.get.remote())}) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    emit({"phase": "started", "starts": ray.get(tracker.get.remote())})
    results = ray.get(futures, timeout=900)
    emit({"phase": "done", "results": results, "starts": ray.get(tracker.get.remote()),
          "sum_ok": sum(r["value"] for r in results) == sum(i * i for i in range(count))})
    remove_placement_group(group)


def main() -> None:
    ray.init(address="auto", namespace=NAMESPACE, log_to_driver=False)
    try:
        command, args = sys.argv[1], sys.argv[2:]
        if command == "probe":
            probe()
        elif command == "hold":
            hold(int(args[0]))
        elif command == "spread":
            spread(int(args[0]), float(args[1]))
        else:
            raise SystemExit(f"unknown command {command!r}: use probe, hold N or spread N SECONDS")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
