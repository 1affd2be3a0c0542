"""skyward-ray: Ray clusters on Vast.ai, and the ``sky`` API as thin shims over Ray.

``import skyward_ray as sky`` gives the public names, imported on first use so the CLI, the Vast client and the emulator
never load Ray; ``fn(x) >> sky`` runs on the innermost active pool. ``sky.compute`` is the decorator: the API's modules
live in the ``skyward_ray.sky`` subpackage, a name that is not public, so importing them never replaces a public name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from skyward_ray.sky import integrations
    from skyward_ray.sky.accelerator import Accelerator
    from skyward_ray.sky.image import Image
    from skyward_ray.sky.launcher import LocalLauncher
    from skyward_ray.sky.node_context import InstanceInfo, instance_info
    from skyward_ray.sky.pending import PendingCompute, PendingComputeGroup, compute, function, gather
    from skyward_ray.sky.pool import ComputePool, pool
    from skyward_ray.sky.providers import VastAI
    from skyward_ray.sky.vast_launcher import VastLauncher

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "Accelerator": "skyward_ray.sky.accelerator",
    "ComputePool": "skyward_ray.sky.pool",
    "Image": "skyward_ray.sky.image",
    "InstanceInfo": "skyward_ray.sky.node_context",
    "LocalLauncher": "skyward_ray.sky.launcher",
    "PendingCompute": "skyward_ray.sky.pending",
    "PendingComputeGroup": "skyward_ray.sky.pending",
    "VastAI": "skyward_ray.sky.providers",
    "VastLauncher": "skyward_ray.sky.vast_launcher",
    "compute": "skyward_ray.sky.pending",
    "function": "skyward_ray.sky.pending",
    "gather": "skyward_ray.sky.pending",
    "instance_info": "skyward_ray.sky.node_context",
    "pool": "skyward_ray.sky.pool",
}
_MODULES: dict[str, str] = {"integrations": "skyward_ray.sky.integrations"}

__all__ = [
    "Accelerator",
    "ComputePool",
    "Image",
    "InstanceInfo",
    "LocalLauncher",
    "PendingCompute",
    "PendingComputeGroup",
    "VastAI",
    "VastLauncher",
    "__version__",
    "compute",
    "function",
    "gather",
    "instance_info",
    "integrations",
    "pool",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

