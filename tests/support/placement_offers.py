"""Offers for the placement tests: one offer that passes every default filter, and all offers of one machine by
Vast's offer rule (a machine with F free GPUs offers 1, 2, 4, ... up to F, plus F itself)."""

from __future__ import annotations

from typing import Any

from skyward_ray.vast.models import Offer

GOOD: dict[str, Any] = {
    "reliability2": 0.99,
    "geolocation": "Texas, US",
    "verification": "verified",
    "hosting_type": 1,
    "cuda_max_good": 12.8,
    "disk_space": 500.0,
    "inet_down": 1000.0,
    "direct_port_count": 20,
    "rentable": True,
    "rented": False,
}


def offer(
    offer_id: int,
    machine_id: int,
    *,
    cluster_id: int | None = None,
    gpu_name: str = "RTX 4090",
    num_gpus: int = 1,
    dph_total: float = 0.40,
    min_bid: float | None = 0.20,
    **fields: Any,
) -> Offer:
    """One offer that passes every default filter unless ``fields`` say otherwise."""
    return Offer.model_validate({
        **GOOD,
        "id": offer_id,
        "machine_id": machine_id,
        "cluster_id": cluster_id,
        "gpu_name": gpu_name,
        "num_gpus": num_gpus,
        "dph_total": dph_total,
        "min_bid": min_bid,
        **fields,
    })


def offer_sizes(free_gpus: int) -> list[int]:
    """The offer rule: 1, 2, 4, ... up to F, plus F itself."""
    sizes = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= free_gpus]
    return sizes if free_gpus in sizes else [*sizes, free_gpus]


def machine(
    machine_id: int,
    free_gpus: int,
    *,
    cluster_id: int | None = None,
    per_gpu: float = 0.40,
    bid_per_gpu: float | None = 0.20,
    **fields: Any,
) -> list[Offer]:
    """Every offer of one machine with ``free_gpus`` free GPUs; ids are machine_id * 100 + size."""
    return [
        offer(
            machine_id * 100 + n,
            machine_id,
            cluster_id=cluster_id,
            num_gpus=n,
            dph_total=round(per_gpu * n, 6),
            min_bid=None if bid_per_gpu is None else round(bid_per_gpu * n, 6),
            **fields,
        )
        for n in offer_sizes(free_gpus)
    ]
