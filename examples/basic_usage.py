"""The seed's "Basic Usage": a VastAI pool of one RTX 4090, spot if available, and one call on it.

``python examples/basic_usage.py`` launches the pool's own cluster on Vast (``VAST_API_KEY``), or on the local
emulator with ``VAST_URL`` set too (see examples/README.md), and removes it at the end of the ``with`` block. With
``RAY_ADDRESS`` set, or under ``ray submit``, it attaches to that cluster instead.
"""

import platform

import skyward_ray as sky


@sky.compute
def hello() -> str:
    return f"hello from {platform.node()}"


pool = sky.ComputePool(
    provider=sky.VastAI(
        geolocation="US",
        min_reliability=0.95,
    ),
    accelerator="RTX 4090",
    allocation="spot-if-available",
)

if __name__ == "__main__":
    with pool:
        print(hello() >> sky)
