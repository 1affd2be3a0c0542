"""The seed's "Basic Usage": a VastAI pool of one RTX 4090, spot if available, and one call on it.

Run it where the pool can get a Ray cluster: on a cluster made with ``ray up`` (``ray submit <config> examples/
basic_usage.py``), or with ``RAY_ADDRESS`` pointing at one.
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
