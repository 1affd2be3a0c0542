"""The default Ray start commands: the ONE place that says how Ray starts on a Vast node.

``bootstrap_config`` fills ``head_start_ray_commands`` / ``worker_start_ray_commands`` from here when a cluster YAML
leaves them out, so every cluster config gets the same overlay-aware commands without copying them.

What they do, on every node, in one shell line each (Ray runs every list entry in its own SSH session):

1. ``ray stop`` first, so that re-running ``ray up`` restarts Ray (this runs inside the instance, never locally);
2. ``python -m skyward_ray.provider.overlay_ip --export`` finds the node's overlay address and interface and exports
   ``SKYWARD_NODE_IP`` plus ``NCCL_SOCKET_IFNAME``/``GLOO_SOCKET_IFNAME`` (it fails the command when the node should
   be on an overlay but is not, rather than start Ray on the wrong address);
3. ``ray start --node-ip-address=$SKYWARD_NODE_IP``: Ray listens and advertises on the overlay, and the raylet's
   environment (so every worker process's) carries the interface names for NCCL and Gloo. Without an overlay the
   flag is left out and Ray picks the address itself.

Workers also start the dead-man switch (:mod:`skyward_ray.provider.deadman`): a worker that cannot reach its head
for ``instance_timeout`` seconds destroys its own instance with its instance-scoped key.

The head's Ray starts with gRPC's fork support off (``GRPC_ENABLE_FORK_SUPPORT=0``). Its Ray Client server forks a
server process per client (``subprocess`` with a ``preexec_fn``, so a real ``fork``); with fork support on, gRPC's
fork handlers run in that child, which then sometimes dies before it can exec ("epoll_wait error: Bad file
descriptor"), and the client sees "Starting Ray client server failed" after about 40 s of the proxy's waiting. The
child only execs a new Python, so it needs none of gRPC's fork handling.

Resources are not repeated here: Ray's updater passes them in ``RAY_OVERRIDE_RESOURCES``.
"""

from __future__ import annotations

from typing import Any

GCS_PORT = 6379

# Exports the overlay address and interfaces, or ends the command when the overlay was expected but is missing.
_OVERLAY_ENV = (
    'SKYWARD_OVERLAY_ENV="$(python -m skyward_ray.provider.overlay_ip --export)" || exit 1; '
    'eval "$SKYWARD_OVERLAY_ENV"'
)
_NODE_IP_FLAG = "${SKYWARD_NODE_IP:+--node-ip-address=$SKYWARD_NODE_IP}"
_STOP_RAY = "ray stop >/dev/null 2>&1"
_FILE_LIMIT = "ulimit -n 65536 2>/dev/null"
_NO_GRPC_FORK_HANDLERS = "GRPC_ENABLE_FORK_SUPPORT=0"  # see the module docstring (the Ray Client server's fork)

HEAD_START_RAY_COMMANDS: tuple[str, ...] = (
    f"{_STOP_RAY}; {_OVERLAY_ENV}; {_FILE_LIMIT}; "
    f"{_NO_GRPC_FORK_HANDLERS} ray start --head --port={GCS_PORT} --autoscaling-config=~/ray_bootstrap_config.yaml "
    f"--disable-usage-stats {_NODE_IP_FLAG}",
)

WORKER_START_RAY_COMMANDS: tuple[str, ...] = (
    f"{_STOP_RAY}; {_OVERLAY_ENV}; {_FILE_LIMIT}; "
    f"ray start --address=$RAY_HEAD_IP:{GCS_PORT} --disable-usage-stats {_NODE_IP_FLAG}",
    # Detached from the SSH session so it outlives it; it replaces an older copy of itself (see deadman.py).
    f"setsid nohup python -m skyward_ray.provider.deadman --head $RAY_HEAD_IP:{GCS_PORT} "
    "> /tmp/skyward-deadman.log 2>&1 < /dev/null &",
)

START_COMMAND_KEYS = {
    "head_start_ray_commands": HEAD_START_RAY_COMMANDS,
    "worker_start_ray_commands": WORKER_START_RAY_COMMANDS,
}


def fill_default_start_commands(cluster_config: dict[str, Any]) -> list[str]:
    """Put the defaults into every start-command key the config leaves out; return the keys filled."""
    filled: list[str] = []
    for key, commands in START_COMMAND_KEYS.items():
        if cluster_config.get(key) is None:
            cluster_config[key] = list(commands)
            filled.append(key)
    return filled
