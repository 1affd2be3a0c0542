"""The Ray ``NodeProvider`` for Vast.ai: ``provider: {type: external, module: skyward_ray.provider.VastNodeProvider}``.

The class is imported lazily, so the small node-side helpers of this package (``overlay_ip``, ``deadman``,
``remote_install``) start without importing Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skyward_ray.provider.node_provider import VastNodeProvider

__all__ = ["VastNodeProvider"]


def __getattr__(name: str) -> Any:
    if name == "VastNodeProvider":
        from skyward_ray.provider.node_provider import VastNodeProvider

        return VastNodeProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
