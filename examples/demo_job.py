"""The demo's workload: more GPU tasks than the head has GPUs, so Ray's autoscaler rents workers on Vast.

Submitted with ``ray submit cluster_configs/emulator.yaml examples/demo_job.py``. Each task reports where it ran
(the Vast instance, its Ray node IP, which is the overlay address) and does a little real work: it sums a slice of a
large range, so the total can be checked. The last line is one JSON object that the demo reads.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import ray

TASKS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
SLICE = 2_000_000


@ray.remote(num_gpus=1)
def gpu_task(index: int) -> dict[str, object]:
    start = index * SLICE
    total = sum(range(start, start + SLICE))
    time.sleep(2)  # hold the GPU long enough that the tasks cannot all share one node
    return {
        "task": index,
        "instance": os.environ.get("CONTAINER_ID"),
        "hostname": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(),
        "nccl_ifname": os.environ.get("NCCL_SOCKET_IFNAME"),
        "sum": total,
    }


def main() -> None:
    ray.init(address="auto")
    started = time.monotonic()
    results = ray.get([gpu_task.remote(i) for i in range(TASKS)], timeout=600)
    expected = sum(range(TASKS * SLICE))
    report = {
        "tasks": results,
        "sum_ok": sum(int(r["sum"]) for r in results) == expected,
        "seconds": round(time.monotonic() - started, 1),
        "nodes": sorted({str(r["node_ip"]) for r in results}),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
