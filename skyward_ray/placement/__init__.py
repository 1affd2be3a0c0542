"""Placement: pure decisions from a request to Vast offers (filters and queries, GPU-name and region tables, one
physical cluster, bid prices, image choice, and why nothing fits). Imports only the Vast wire models; no I/O, no clock.
"""

from skyward_ray.placement.explain import explain
from skyward_ray.placement.explanation import Explanation, NoPlacementError
from skyward_ray.placement.filters import DEFAULT_SEARCH_LIMIT, Check, CudaFloor, OfferFilter, build_queries, recheck
from skyward_ray.placement.gpus import GPU_MODELS, GpuModel, GpuSelection, known_gpu_names, resolve_gpu
from skyward_ray.placement.image import (
    CUDA_IMAGE_TAGS,
    FALLBACK_IMAGE,
    ImageChoice,
    ImageSource,
    choose_image,
    image_cuda_version,
)
from skyward_ray.placement.options import Allocation, PlacementOptions, config_error_from
from skyward_ray.placement.planner import ClusterOption, NodeAssignment, Plan, plan
from skyward_ray.placement.pricing import NodePrice, bid_price, node_price
from skyward_ray.placement.regions import COUNTRY_CODES, REGIONS, allowed_geolocations, resolve_region
from skyward_ray.placement.request import NodeGroup, PlacementRequest, Scope
from skyward_ray.placement.solver import machine_slots

__all__ = [
    "COUNTRY_CODES",
    "CUDA_IMAGE_TAGS",
    "DEFAULT_SEARCH_LIMIT",
    "FALLBACK_IMAGE",
    "GPU_MODELS",
    "REGIONS",
    "Allocation",
    "Check",
    "ClusterOption",
    "CudaFloor",
    "Explanation",
    "GpuModel",
    "GpuSelection",
    "ImageChoice",
    "ImageSource",
    "NoPlacementError",
    "NodeAssignment",
    "NodeGroup",
    "NodePrice",
    "OfferFilter",
    "PlacementOptions",
    "PlacementRequest",
    "Plan",
    "Scope",
    "allowed_geolocations",
    "bid_price",
    "build_queries",
    "choose_image",
    "config_error_from",
    "explain",
    "image_cuda_version",
    "known_gpu_names",
    "machine_slots",
    "node_price",
    "plan",
    "recheck",
    "resolve_gpu",
    "resolve_region",
]
