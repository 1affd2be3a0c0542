"""The default Ray start commands, the one place that says how Ray starts on a Vast node: ``ray stop``, then find the
overlay address and interfaces (:mod:`skyward_ray.provider.overlay_ip`), then ``ray start`` on that address; workers
also start the dead-man switch (:mod:`skyward_ray.provider.deadman`). ``bootstrap_config`` fills them in where a
cluster YAML leaves them out."""

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
# The head's Ray Client server forks a server process per client (``subprocess`` with a ``preexec_fn``); with gRPC's
# fork support on, its fork handlers run in that child, which then sometimes dies before it can exec ("epoll_wait
# error: Bad file descriptor") and the client sees "Starting Ray client server failed" after about 40 s. The child
# only execs a new Python, so it needs none of gRPC's fork handling.
_NO_GRPC_FORK_HANDLERS = "GRPC_ENABLE_FORK_SUPPORT=0"

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
