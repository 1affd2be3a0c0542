"""Ray Train on interruptible (bid) nodes: refuse a multi-node run whose checkpoints could not survive an outbid.

On Vast an outbid instance is destroyed with its disk and no two instances share a filesystem, so Ray Train's default
storage (``~/ray_results`` on one node) loses the checkpoints exactly when a restore needs them. Ray Train's configs
are read by attribute only, so importing this needs neither ``ray.train`` nor pyarrow.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from skyward_ray.errors import ConfigError
from skyward_ray.placement.options import Allocation
from skyward_ray.provider.config import HEAD_KIND, WORKER_KIND, VastNodeConfig

# Where ``ray up`` leaves the cluster config on the head (its autoscaler reads the same file).
HEAD_CLUSTER_CONFIG = Path("~/ray_bootstrap_config.yaml")
# URI schemes that name one machine's own disk.
_LOCAL_SCHEMES = frozenset({"", "file", "local"})

STORAGE_HINT = ('set RunConfig(storage_path="s3://<bucket>/<prefix>") (an S3-compatible store: '
                'add "?endpoint_override=https://<host>:<port>"; gs://, abfss:// and hdfs:// work too) '
                "or RunConfig(storage_filesystem=pyarrow.fs.S3FileSystem(...))")


def allocations(cluster_config: dict[str, Any]) -> dict[str, Allocation]:
    """Each node type's allocation in a cluster config, the defaults filled (on-demand head, bidding workers)."""
    head_type = cluster_config.get("head_node_type")
    found: dict[str, Allocation] = {}
    for name, node_type in (cluster_config.get("available_node_types") or {}).items():
        if not isinstance(node_type, dict):
            continue
        kind = HEAD_KIND if name == head_type else WORKER_KIND
        if kind == WORKER_KIND and node_type.get("max_workers", 1) == 0:
            continue  # a worker type that never rents cannot be outbid
        raw = (node_type.get("node_config") or {}).get("allocation")
        explicit = None if raw is None else Allocation.parse(
            raw, field=f"available_node_types.{name}.node_config.allocation")
        # The provider's own rule for a missing allocation; only that field is read, so nothing else is validated.
        found[name] = VastNodeConfig.model_construct(allocation=explicit).allocation_for(kind)
    return found


def cluster_on_bids(path: str | os.PathLike[str] = HEAD_CLUSTER_CONFIG) -> bool | None:
    """Whether the cluster described by ``path`` rents any node on a bid; None when there is no such file."""
    file = Path(path).expanduser()
    try:
        config = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(config, dict):
        return None
    return any(allocation.bids for allocation in allocations(config).values())


def _ray_default_storage() -> str:
    """What Ray Train puts in ``RunConfig.storage_path`` when the user leaves it out (it fills it in itself)."""
    return Path("~/ray_results").expanduser().as_posix()


def _num_workers(scaling_config: Any) -> int:
    value = getattr(scaling_config, "num_workers", 1)
    if isinstance(value, tuple | list):  # an elastic (min, max) range: its upper end
        value = max(value)
    return int(value or 1)


def storage_problem(storage_path: str | os.PathLike[str] | None, storage_filesystem: Any, *, num_workers: int,
                    on_bids: bool) -> str | None:
    """Why this storage cannot hold the checkpoints of a ``num_workers`` run, as one line; None when it can."""
    if num_workers <= 1 or not on_bids:
        return None
    where = f"a {num_workers}-worker Ray Train run on interruptible (bid) nodes"
    if storage_filesystem is not None:
        type_name = getattr(storage_filesystem, "type_name", "")
        if type_name != "local" and type(storage_filesystem).__name__ != "LocalFileSystem":
            return None
        return (f"RunConfig.storage_filesystem: a local filesystem is not allowed for {where}: each Vast instance "
                f"has its own disk, lost with the instance when it is outbid; {STORAGE_HINT}")
    if storage_path is None or os.fspath(storage_path) == _ray_default_storage():
        return (f"RunConfig.storage_path: not set (Ray's default, ~/ray_results, is each node's own disk) is not "
                f"allowed for {where}: an outbid node's disk is destroyed with it and no other node can read it, so "
                f"Train could not restore; {STORAGE_HINT}")
    text = os.fspath(storage_path)
    if urlsplit(text).scheme.lower() in _LOCAL_SCHEMES:
        return (f"RunConfig.storage_path: {text!r} (a local path) is not allowed for {where}: Vast instances share "
                f"no filesystem and an outbid node's disk is destroyed with it; {STORAGE_HINT}")
    return None


def require_shared_storage(run_config: Any, scaling_config: Any, *, on_bids: bool | None = None,
                           cluster_config: str | os.PathLike[str] = HEAD_CLUSTER_CONFIG) -> None:
    """Raise :class:`ConfigError` (one line: the field, its value, what to set) when a multi-node Train run on bids
    has no storage every node reaches; call it before ``fit()``::

        require_shared_storage(run_config, scaling_config)   # raises ConfigError, or returns
        trainer = TorchTrainer(..., scaling_config=scaling_config, run_config=run_config)

    ``on_bids`` None: read it from ``cluster_config`` (the head's copy, written by ``ray up``): any node type whose
    ``allocation`` bids (workers default to ``spot-if-available``). Without that file (a local Ray), pass ``on_bids=``;
    unknown counts as no bids, so the check never refuses a run it cannot judge.
    """
    if on_bids is None:
        on_bids = bool(cluster_on_bids(cluster_config))
    problem = storage_problem(getattr(run_config, "storage_path", None),
                              getattr(run_config, "storage_filesystem", None),
                              num_workers=_num_workers(scaling_config), on_bids=on_bids)
    if problem is not None:
        raise ConfigError(problem)


def wait_for_checkpoint_taken(timeout_s: float = 60.0, poll_s: float = 0.05) -> bool:
    """In a Ray Train worker, after ``ray.train.report``: wait until the controller has taken this worker's report.

    A checkpoint counts only once the controller has taken the report that carries it; it polls its workers every
    ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s by default), and a worker outbid between its report and that poll takes
    the checkpoint's registration with it (the restart resumes from the one before). Waiting here closes that window
    at the price of at most one poll interval per checkpoint.

    True once taken; False after ``timeout_s``, or when this Ray has no such queue to watch (then it returns at once:
    the run goes on as without the wait). Reads Ray Train's per-worker result queue (a ``queue.Queue`` that the
    controller's poll drains and marks done; Ray 2.60's Train v2), so it never changes what Ray does.
    """
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        results = get_train_context().get_result_queue()
        int(results.unfinished_tasks)
    except (ImportError, AttributeError, RuntimeError):
        return False
    deadline = time.monotonic() + timeout_s
    while results.unfinished_tasks:
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True
