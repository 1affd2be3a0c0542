"""skyward-ray: Ray clusters on Vast.ai, and the ``sky`` API as thin shims over Ray.

``import skyward_ray as sky`` gives the public names; everything else lives in the layered subpackages. The module
itself is the operators' target: ``fn(x) >> sky`` runs on the innermost active pool. (``sky.compute`` is the seed's
decorator, so the ``skyward_ray.compute`` subpackage is reached by import, not by attribute.)
"""

from skyward_ray.compute import (
    Accelerator,
    ComputePool,
    Image,
    InstanceInfo,
    LocalLauncher,
    PendingCompute,
    PendingComputeGroup,
    VastAI,
    compute,
    function,
    gather,
    instance_info,
    integrations,
)
from skyward_ray.compute.pool import pool

__version__ = "0.1.0"

__all__ = [
    "Accelerator",
    "ComputePool",
    "Image",
    "InstanceInfo",
    "LocalLauncher",
    "PendingCompute",
    "PendingComputeGroup",
    "VastAI",
    "__version__",
    "compute",
    "function",
    "gather",
    "instance_info",
    "integrations",
    "pool",
]
