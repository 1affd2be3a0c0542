"""Every configuration snippet of the seed, built and validated; nothing is rented, so this runs anywhere.

Pricing (interruptible and on-demand), reliability levels, geolocation, the accelerator catalogue, the overlay
switch, custom images and the troubleshooting variants. Each is a real object: a typo in a value raises a clear
``ConfigError`` here, before anything would be rented.
"""

import skyward_ray as sky


def show(label, value):
    print(f"{label:<38} {value!r}")


def main():
    # Configure API key, option 3: direct parameter (never shown in reprs or errors).
    show("api key, direct parameter", sky.VastAI(api_key="your_api_key"))

    # Pricing.
    spot = sky.ComputePool(
        provider=sky.VastAI(bid_multiplier=1.3), accelerator="RTX 4090", allocation="spot-if-available").spec
    show("interruptible, bid 30% above minimum", (spot.allocation.value, spot.provider.bid_multiplier))
    on_demand = sky.ComputePool(provider=sky.VastAI(), accelerator="RTX 4090", allocation="on-demand").spec
    show("on-demand", on_demand.allocation.value)

    # Reliability filtering.
    for level in (0.98, 0.95, 0.90, 0.80):
        show(f"min_reliability={level}", sky.VastAI(min_reliability=level).min_reliability)

    # Geolocation filtering.
    for where in ("US", "EU", "DE", "CA", None):
        provider = sky.VastAI(geolocation=where)
        show(f"geolocation={where}", sorted(provider.countries) if provider.countries else "anywhere")

    # Supported accelerators.
    for name in ("RTX 4090", "RTX 4080", "RTX 3090", "RTX 3080", "RTX 3080 Ti", "A100", "A6000", "A40", "H100",
                 "L40S", "L4"):
        accelerator = sky.Accelerator(name)
        show(f"Accelerator({name!r})", accelerator.vast_names)
    show("Accelerator('A100', count=8)", str(sky.Accelerator("A100", count=8)))
    show("Accelerator('H100', count=8)", str(sky.Accelerator("H100", count=8)))

    # Overlay networks: multi-node creates one automatically; it can be disabled (not recommended for NCCL).
    show("4 nodes with an overlay", sky.ComputePool(
        provider=sky.VastAI(geolocation="US", min_reliability=0.95), accelerator="RTX 4090", nodes=4).spec.nodes)
    show("use_overlay=False", sky.VastAI(use_overlay=False).use_overlay)

    # Docker images: automatic (from the accelerator's CUDA range) or custom.
    show("custom docker image", sky.VastAI(docker_image="nvcr.io/nvidia/pytorch:24.01-py3").docker_image)

    # Troubleshooting variants.
    show("lower reliability", sky.VastAI(min_reliability=0.85).min_reliability)
    show("fewer nodes", sky.ComputePool(provider=sky.VastAI(), nodes=2).spec.nodes)
    show("longer overlay timeout", sky.VastAI(overlay_timeout=180).overlay_timeout)
    show("higher bid", sky.VastAI(bid_multiplier=1.5).bid_multiplier)
    print("all seed configurations are valid")


if __name__ == "__main__":
    main()
