"""skyward-ray: Ray clusters on Vast.ai, and the ``sky`` API as thin shims over Ray.

``import skyward_ray as sky`` gives the public names; everything else lives in the layered subpackages. The module
itself is the operators' target: ``fn(x) >> sky`` runs on the innermost active pool.

The ``sky`` names are re-exported lazily (on first attribute access): importing ``skyward_ray.vast``, the emulator or
the CLI must not import Ray or the ``sky`` layer (DESIGN.md's layering). ``sky.compute`` is the seed's decorator, which
shares its name with the ``skyward_ray.sky`` subpackage; a property on this module's class keeps the attribute
the decorator even after the import system records the subpackage under that name. Reach the subpackage's modules
with ``from skyward_ray.sky.<module> import ...``.
"""

from __future__ import annotations

import copyreg
import importlib
import sys
import types
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


class _SkyModule(types.ModuleType):
    """This package's module type: only to keep ``sky.compute`` the decorator (see the module docstring)."""

    @property
    def compute(self) -> Any:
        return importlib.import_module("skyward_ray.sky.pending").compute

    @compute.setter
    def compute(self, subpackage: types.ModuleType) -> None:
        # The import system records the subpackage here; it stays in sys.modules, which is what imports use.
        return None


def _reduce_module(module: types.ModuleType) -> tuple[Any, tuple[str]]:
    # Pickle (and Ray's cloudpickle, for functions that use `sky`) dispatch on the exact type, so a module subclass
    # needs its reducer: by reference, as for any module.
    return importlib.import_module, (module.__name__,)


copyreg.pickle(_SkyModule, _reduce_module)
sys.modules[__name__].__class__ = _SkyModule
