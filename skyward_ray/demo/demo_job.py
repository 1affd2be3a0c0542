"""The demo's workload: a step that needs N GPUs at once, one per node, like multi-node training.

``skyward-ray demo`` submits it with ``ray submit emulator.yaml demo_job.py N``: N one-GPU bundles in a STRICT_SPREAD
placement group make the autoscaler rent N - 1 workers beside the one-GPU head; each task reports where it ran
(instance, Ray node IP = overlay address) and sums a slice of a range. Its last line: ONE JSON object.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

DEFAULT_TASKS = 4
SLICE = 2_000_000
WAIT_S = 600


@ray.remote(num_gpus=1, num_cpus=1)
def gpu_task(index: int) -> dict[str, object]:
    start = index * SLICE
    return {
        "task": index,
        "instance": os.environ.get("CONTAINER_ID"),
        "hostname": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(),
        "nccl_ifname": os.environ.get("NCCL_SOCKET_IFNAME"),
        "sum": sum(range(start, start + SLICE)),
    }


def alive_nodes() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def main(tasks: int) -> None:
    ray.init(address="auto")
    started = time.monotonic()
    print(f"job: asking for {tasks} GPUs at once, one per node; the cluster has {alive_nodes()} node(s)", flush=True)
    group = placement_group([{"GPU": 1, "CPU": 1}] * tasks, strategy="STRICT_SPREAD")
    ready = group.ready()
    seen = -1
    while not ray.wait([ready], timeout=2.0)[0]:
        nodes = alive_nodes()
        if nodes != seen:
            print(f"job: waiting for GPUs: {nodes} of {tasks} nodes up (the autoscaler is renting workers)",
                  flush=True)
            seen = nodes
        if time.monotonic() - started > WAIT_S:
            raise SystemExit(f"job: the cluster did not reach {tasks} GPU nodes within {WAIT_S} s")
    print(f"job: {tasks} GPUs reserved on {tasks} nodes after {time.monotonic() - started:.1f} s", flush=True)
    strategy = [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i) for i in range(tasks)]
    results = ray.get([gpu_task.options(scheduling_strategy=strategy[i]).remote(i) for i in range(tasks)],
                      timeout=WAIT_S)
    remove_placement_group(group)
    for result in results:
        print(f"job: task {result['task']} ran on instance {result['instance']} at {result['node_ip']} "
              f"(NCCL/Gloo interface {result['nccl_ifname']})", flush=True)
    report = {
        "tasks": results,
        "sum_ok": sum(int(r["sum"]) for r in results) == sum(range(tasks * SLICE)),
        "seconds": round(time.monotonic() - started, 1),
        "nodes": sorted({str(r["node_ip"]) for r in results}),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TASKS)
