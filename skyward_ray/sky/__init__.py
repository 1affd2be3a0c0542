"""The ``sky`` API as thin shims over Ray: pools, pending calls and their operators, images, accelerators.

Imports Ray. The Vast launch path (:mod:`~skyward_ray.sky.vast_launcher`: the Vast client, the provider's config
rendering and SSH check) loads only when a pool launches; the provider's ``NodeProvider`` is Ray's to load.
"""

from skyward_ray.sky import integrations
from skyward_ray.sky.accelerator import Accelerator
from skyward_ray.sky.active_pool import NO_ACTIVE_POOL
from skyward_ray.sky.dispatch import RemoteTraceback
from skyward_ray.sky.image import Image
from skyward_ray.sky.launcher import AttachLauncher, ClusterHandle, Launcher, LaunchError, LocalLauncher
from skyward_ray.sky.node_context import InstanceInfo, instance_info
from skyward_ray.sky.nodes import NodeInfo, NodesUnavailableError
from skyward_ray.sky.pending import (
    ComputeFunction,
    PendingCompute,
    PendingComputeGroup,
    compute,
    function,
    gather,
)

# The `pool` decorator is exported by the top-level package only, so `skyward_ray.sky.pool` stays the module.
from skyward_ray.sky.pool import ComputePool
from skyward_ray.sky.providers import VastAI
from skyward_ray.sky.spec import PoolSpec

__all__ = [
    "NO_ACTIVE_POOL",
    "Accelerator",
    "AttachLauncher",
    "ClusterHandle",
    "ComputeFunction",
    "ComputePool",
    "Image",
    "InstanceInfo",
    "LaunchError",
    "Launcher",
    "LocalLauncher",
    "NodeInfo",
    "NodesUnavailableError",
    "PendingCompute",
    "PendingComputeGroup",
    "PoolSpec",
    "RemoteTraceback",
    "VastAI",
    "compute",
    "function",
    "gather",
    "instance_info",
    "integrations",
]
