"""``sky.integrations``: decorators that prepare a framework on each node of a pool call.

Stack them under ``@sky.compute``::

    @sky.compute
    @sky.integrations.torch()
    def train(): ...
"""

from skyward_ray.sky.integrations.pytorch import torch

__all__ = ["torch"]
