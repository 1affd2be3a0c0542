"""A ``sky`` pool run with ``ray submit`` (it attaches to the cluster it runs on): ``sky_pool_job.py NODES TIMEOUT``.

Prints one ``E2E-JSON {...}`` line with the Ray node IP of every rank (a broadcast call), then exits 0.
"""

from __future__ import annotations

import json
import sys

import ray

import skyward_ray as sky


@sky.compute
def node_ip() -> str:
    return str(ray.util.get_node_ip_address())


if __name__ == "__main__":
    nodes, timeout = int(sys.argv[1]), float(sys.argv[2])
    with sky.ComputePool(nodes=nodes, accelerator="RTX 4090", ready_timeout=timeout) as pool:
        ips = node_ip() @ sky
        print("E2E-JSON " + json.dumps({"ips": ips, "ranks": [n.ip for n in pool.nodes]}), flush=True)
