"""Plain Ray on a cluster made by ``ray up``: no ``sky`` API, just ``ray.remote`` tasks spread over the nodes.

    ray up cluster_configs/vast.yaml
    ray submit cluster_configs/vast.yaml examples/ray_remote_on_ray_up.py
    ray down cluster_configs/vast.yaml

Each task reports the Ray node it ran on (on Vast, the node's overlay IP) and the interface NCCL would use.
"""

import collections
import os
import socket

import ray


@ray.remote
def square(x: int) -> tuple[int, str, str, str | None]:
    return x * x, ray.util.get_node_ip_address(), socket.gethostname(), os.environ.get("NCCL_SOCKET_IFNAME")


def main() -> None:
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), include_dashboard=False)
    try:
        nodes = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        print(f"cluster nodes: {sorted(nodes)}")
        # SPREAD places tasks on as many nodes as possible instead of packing the first one.
        results = ray.get([square.options(scheduling_strategy="SPREAD").remote(i) for i in range(16)])
        print(f"sum of squares: {sum(r[0] for r in results)} (expected {sum(i * i for i in range(16))})")
        print(f"tasks per node: {dict(collections.Counter(r[1] for r in results))}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
