"""skyward-ray: Ray clusters on Vast.ai, and the ``sky`` API as thin shims over Ray.

``import skyward_ray as sky`` gives the public names; everything else lives in the layered subpackages. The module
itself is the operators' target: ``fn(x) >> sky`` runs on the innermost active pool.
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
    pool,
)

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
