"""A pool's Ray cluster config for the Vast provider: what ``ray up`` would read from a YAML, built from a PoolSpec.

``nodes=N`` becomes one head of the pool's accelerator (node 0) plus a worker type with ``min_workers = max_workers
= N-1``, so the head's autoscaler rents every worker as soon as it starts and never rents more. Everything the
provider owns stays the provider's: its schema validates the result (:func:`skyward_ray.provider.bootstrap.validate`),
its ``bootstrap_config`` adds the SSH key registration, the package shipping and the default start commands
(:mod:`skyward_ray.provider.start_commands`, left out here on purpose), and fills each node type's ``GPU`` resource.

Allocation (the seed's ``allocation=`` is pool-wide; DESIGN decision 7 keeps the head on-demand unless asked):

==================== ============ ===================
``allocation``       head (rank 0) workers
==================== ============ ===================
``on-demand``        on-demand    on-demand
``spot-if-available`` on-demand   spot-if-available
``spot``             spot         spot
==================== ============ ===================

``spot`` is an explicit request for interruptible pricing on *every* node, so the head bids too. The trade is the
user's: the driver talks to the cluster through the head, so an outbid head ends the pool (its calls fail and the
``with`` block raises), where an outbid worker is replaced by the autoscaler. ``spot-if-available``, the default,
keeps the head on-demand.

The API key is never in the config: ``provider.api_key_file`` names a 0600 file (the provider's own mechanism; the
head gets its own copy as a file mount from ``bootstrap_config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from skyward_ray.errors import ConfigError
from skyward_ray.placement.options import Allocation
from skyward_ray.provider.bootstrap import DEFAULT_SSH_USER, validate
from skyward_ray.provider.config import NO_OVERLAY_REASON, PROVIDER_MODULE
from skyward_ray.sky.spec import PoolSpec

HEAD_TYPE = "head"
WORKER_TYPE = "worker"


def head_allocation(allocation: Allocation) -> Allocation:
    """The head's allocation for a pool-wide ``allocation`` (see the module docstring's table)."""
    return Allocation.SPOT if allocation is Allocation.SPOT else Allocation.ON_DEMAND


def render_cluster_config(
    spec: PoolSpec,
    *,
    cluster_name: str,
    api_url: str,
    ssh_private_key: str,
    api_key_file: str | None = None,
    cpus_per_node: int | None = None,
    provider_overrides: Mapping[str, Any] | None = None,
    setup_python: str = "python",
) -> dict[str, Any]:
    """The complete cluster config of ``spec`` (a ``sky.VastAI`` pool), validated by the provider's schema.

    ``setup_python`` is the node's Python that the image's pip packages go into: ``python`` of the login shell, the
    interpreter the provider installs skyward-ray and Ray into. ``cpus_per_node`` overrides Ray's CPU count per node
    (None: Ray counts the instance's CPUs). ``provider_overrides`` sets other ``provider:`` keys (e.g.
    ``cache_ttl_s``); it cannot set the API key, which only ever travels as a file.
    """
    if spec.provider is None:
        raise ConfigError("provider: None is not allowed for launching on Vast; allowed: sky.VastAI(...)")
    if spec.accelerator is None:
        raise ConfigError(
            "accelerator: None is not allowed with sky.VastAI(...) (Vast rents GPU machines); allowed: a GPU name "
            "such as 'RTX 4090' or sky.Accelerator('A100', count=8)"
        )
    for field in ("vcpus", "memory_gb"):
        if getattr(spec, field) is not None:
            raise ConfigError(
                f"{field}: {getattr(spec, field)!r} is not allowed with sky.VastAI(...) (Vast offers are chosen by "
                f"GPU, reliability, location and price here); allowed: None"
            )
    if spec.nodes > 1 and not spec.provider.use_overlay:
        raise ConfigError(
            f"use_overlay: False is not allowed with nodes={spec.nodes}: {NO_OVERLAY_REASON}; allowed: "
            "sky.VastAI(use_overlay=True) (the default), or nodes=1"
        )
    overrides = dict(provider_overrides or {})
    for secret in ("api_key", "api_key_file"):
        if secret in overrides:
            raise ConfigError(
                f"provider_overrides.{secret}: is not allowed; allowed: the key in sky.VastAI(api_key=...), "
                "VAST_API_KEY or the vastai CLI's key file"
            )

    provider: dict[str, Any] = {
        "type": "external",
        "module": PROVIDER_MODULE,
        "api_url": api_url,
        **spec.provider.model_dump(mode="json", exclude={"api_key"}),
        **overrides,
    }
    if api_key_file is not None:
        provider["api_key_file"] = api_key_file

    accelerator = spec.accelerator
    resources: dict[str, Any] = {} if cpus_per_node is None else {"CPU": cpus_per_node}
    workers = spec.nodes - 1

    def node_type(allocation: Allocation, count: int) -> dict[str, Any]:
        return {
            "node_config": {"accelerator": accelerator.name, "gpus": accelerator.count, "allocation": allocation.value},
            "resources": dict(resources),
            "min_workers": count,
            "max_workers": count,
        }

    node_types = {HEAD_TYPE: node_type(head_allocation(spec.allocation), 0)}
    if workers:
        node_types[WORKER_TYPE] = node_type(spec.allocation, workers)

    config: dict[str, Any] = {
        "cluster_name": cluster_name,
        "max_workers": workers,
        "upscaling_speed": 1.0,
        # The workers are min_workers, which idleness never removes; the pool's exit tears everything down.
        "idle_timeout_minutes": 5,
        "provider": provider,
        "auth": {"ssh_user": DEFAULT_SSH_USER, "ssh_private_key": ssh_private_key},
        "available_node_types": node_types,
        "head_node_type": HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": spec.image.setup_commands(python=setup_python),
        "head_setup_commands": [],
        "worker_setup_commands": [],
    }
    validate(config)
    return config
