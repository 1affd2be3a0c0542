"""What a pool asks for, validated once: the input of every launcher.

Bad input raises :class:`~skyward_ray.errors.ConfigError` naming the field, the value and what is allowed, before
anything is rented or connected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from skyward_ray.errors import ConfigError
from skyward_ray.placement.options import Allocation, config_error_from
from skyward_ray.sky.accelerator import Accelerator, as_accelerator
from skyward_ray.sky.image import Image, as_image
from skyward_ray.sky.providers import VastAI

MAX_NODES = 256


class PoolSpec(BaseModel):
    """A pool's request. ``nodes=N`` means N nodes of ``accelerator`` each; node 0 (rank 0) is the Ray head."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    provider: VastAI | None = None
    accelerator: Accelerator | None = None
    nodes: int = Field(1, ge=1, le=MAX_NODES)
    allocation: Allocation = Allocation.SPOT_IF_AVAILABLE
    image: Image = Field(default_factory=Image)
    vcpus: float | None = Field(None, gt=0)
    memory_gb: float | None = Field(None, gt=0)
    address: str | None = Field(None, description="attach to this Ray cluster: 'ray://host:port', 'host:port', 'auto'")
    name: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]{0,39}$", description="cluster name (launch mode)")
    ready_timeout: float = Field(600.0, gt=0, description="seconds to wait for the pool's nodes")

    @classmethod
    def build(cls, **values: Any) -> PoolSpec:
        """Validate keyword arguments as a user passes them to ``ComputePool``/``sky.pool``."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise config_error_from(exc, section="pool", model=cls) from None

    @field_validator("provider", mode="before")
    @classmethod
    def _provider(cls, value: Any) -> Any:
        if value is None or isinstance(value, VastAI):
            return value
        raise ValueError("allowed: sky.VastAI(...), or None to attach to a running Ray cluster")

    @field_validator("accelerator", mode="before")
    @classmethod
    def _accelerator(cls, value: Any) -> Any:
        try:
            return as_accelerator(value)
        except ConfigError as exc:
            raise ValueError(str(exc).split("; ", 1)[-1]) from None

    @field_validator("allocation", mode="before")
    @classmethod
    def _allocation(cls, value: Any) -> Any:
        try:
            return Allocation.parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc).split("; ", 1)[-1]) from None

    @field_validator("image", mode="before")
    @classmethod
    def _image(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, Image | Mapping):
            raise ValueError("allowed: sky.Image(pip=[...], apt=[...], env={...}), a mapping of its fields, or None")
        return as_image(value)

    @field_validator("nodes", mode="before")
    @classmethod
    def _nodes(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"allowed: an integer from 1 to {MAX_NODES}")
        return value

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip() or any(ch.isspace() for ch in value.strip()):
            raise ValueError("allowed: 'auto', 'host:port' (a GCS address) or 'ray://host:port' (Ray Client)")
        return value.strip()
