"""A pool's Ray cluster config for the Vast provider: what ``ray up`` would read from a YAML, built from a PoolSpec.

``nodes=N`` becomes one head (node 0) plus ``min_workers = max_workers = N-1`` workers, so the head's autoscaler rents
every worker at once and never more. The provider's schema validates the result; its ``bootstrap_config`` later adds
the SSH key, the package shipping and the start commands. The API key only ever travels as a 0600 file.
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
SECRET_PROVIDER_KEYS = ("api_key", "api_key_file")


def head_allocation(allocation: Allocation) -> Allocation:
    """The head's allocation for a pool-wide ``allocation``: on-demand unless the pool asks for ``spot``.

    ==================== ============ ===================
    ``allocation``       head (rank 0) workers
    ==================== ============ ===================
    ``on-demand``        on-demand    on-demand
    ``spot-if-available`` on-demand   spot-if-available
    ``spot``             spot         spot
    ==================== ============ ===================

    ``spot`` is an explicit request for interruptible pricing on *every* node, so the head bids too. The trade is the
    user's: the driver talks to the cluster through the head, so an outbid head ends the pool (its calls fail and the
    ``with`` block raises), where an outbid worker is replaced by the autoscaler.
    """
    return Allocation.SPOT if allocation is Allocation.SPOT else Allocation.ON_DEMAND


def check_vast_pool(spec: PoolSpec, provider_overrides: Mapping[str, Any]) -> None:
    """Refuse what a Vast pool cannot be: no provider or GPU, CPU/memory sizing, several nodes without an overlay,
    or the API key among the overrides."""
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
    for secret in SECRET_PROVIDER_KEYS:
        if secret in provider_overrides:
            raise ConfigError(
                f"provider_overrides.{secret}: is not allowed; allowed: the key in sky.VastAI(api_key=...), "
                "VAST_API_KEY or the vastai CLI's key file"
            )


def _node_types(spec: PoolSpec, cpus_per_node: int | None) -> dict[str, Any]:
    """The head type (rank 0) and, for ``nodes > 1``, one worker type with exactly ``nodes - 1`` workers."""
    assert spec.accelerator is not None
    accelerator = spec.accelerator
    resources: dict[str, Any] = {} if cpus_per_node is None else {"CPU": cpus_per_node}

    def node_type(allocation: Allocation, count: int) -> dict[str, Any]:
        return {
            "node_config": {"accelerator": accelerator.name, "gpus": accelerator.count, "allocation": allocation.value},
            "resources": dict(resources),
            "min_workers": count,
            "max_workers": count,
        }

    node_types = {HEAD_TYPE: node_type(head_allocation(spec.allocation), 0)}
    if spec.nodes > 1:
        node_types[WORKER_TYPE] = node_type(spec.allocation, spec.nodes - 1)
    return node_types


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
    overrides = dict(provider_overrides or {})
    check_vast_pool(spec, overrides)
    assert spec.provider is not None
    provider: dict[str, Any] = {
        "type": "external",
        "module": PROVIDER_MODULE,
        "api_url": api_url,
        **spec.provider.model_dump(mode="json", exclude={"api_key"}),
        **overrides,
    }
    if api_key_file is not None:
        provider["api_key_file"] = api_key_file
    config: dict[str, Any] = {
        "cluster_name": cluster_name,
        "max_workers": spec.nodes - 1,
        "upscaling_speed": 1.0,
        # The workers are min_workers, which idleness never removes; the pool's exit tears everything down.
        "idle_timeout_minutes": 5,
        "provider": provider,
        "auth": {"ssh_user": DEFAULT_SSH_USER, "ssh_private_key": ssh_private_key},
        "available_node_types": _node_types(spec, cpus_per_node),
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
