"""``sky.integrations``: decorators that prepare a framework on each node of a pool call.

Stack them under ``@sky.compute`` (``@sky.compute`` first, then ``@sky.integrations.torch()``, then the function).
"""

from skyward_ray.sky.integrations.pytorch import torch

__all__ = ["torch"]
