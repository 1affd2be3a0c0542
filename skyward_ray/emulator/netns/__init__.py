"""The ``netns`` host runtime: each emulated instance is Linux namespaces with its own sshd, each overlay a bridge.

Needs Linux and root. :func:`clean_leftovers` removes what a crashed run left, by the runtime's name prefix.
"""

from skyward_ray.emulator.netns.commands import DEFAULT_PREFIX, DEFAULT_STATE_ROOT, clean_leftovers
from skyward_ray.emulator.netns.runtime import DEFAULT_PUBLIC_SUBNET, NetnsRuntime

__all__ = ["DEFAULT_PREFIX", "DEFAULT_PUBLIC_SUBNET", "DEFAULT_STATE_ROOT", "NetnsRuntime", "clean_leftovers"]
