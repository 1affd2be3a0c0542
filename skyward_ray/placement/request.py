"""What to place: node groups (a head and its workers, or a pool's nodes), optionally pinned to a physical cluster.
A Ray cluster is one request, so the head's cluster has room for its workers; the autoscaler's later workers are a
request pinned to the head's ``cluster_id``.
"""

from __future__ import annotations

import enum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from skyward_ray.placement.gpus import GpuSelection, resolve_gpu
from skyward_ray.placement.options import Allocation, PlacementOptions, config_error_from

MAX_NODES = 1000  # per request; keeps the exact search small and the tie-break keys exact (see solver.REL_SCALE)
MAX_GROUPS = 8


class NodeGroup(BaseModel):
    """``count`` nodes, each renting one offer of exactly ``gpus_per_node`` GPUs of ``accelerator``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field("node", min_length=1, max_length=64)
    accelerator: str
    gpus_per_node: int = Field(1, ge=1, le=64)
    count: int = Field(1, ge=1, le=MAX_NODES)
    allocation: Allocation = Allocation.SPOT_IF_AVAILABLE
    include_variants: bool = False  # "RTX 4090" also accepts "RTX 4090D"; family names ("H100") always do

    @field_validator("allocation", mode="before")
    @classmethod
    def _allocation(cls, value: Any) -> Allocation:
        return Allocation.validate_field(value)

    @field_validator("accelerator")
    @classmethod
    def _accelerator(cls, value: str) -> str:
        resolve_gpu(value)  # raises on an empty name
        return " ".join(value.split())

    @property
    def gpu(self) -> GpuSelection:
        return resolve_gpu(self.accelerator, include_variants=self.include_variants)

    def describe(self) -> str:
        """e.g. ``4 x RTX 4090 (1 GPU each, spot)``."""
        plural = "GPU" if self.gpus_per_node == 1 else "GPUs"
        return f"{self.count} x {self.gpu.label} ({self.gpus_per_node} {plural} each, {self.allocation.value})"


class Scope(enum.StrEnum):
    """Where the nodes may go: anywhere, all on one physical cluster, or on one given cluster."""

    FREE = "free"
    ONE_CLUSTER = "one-cluster"
    PINNED = "pinned"


class PlacementRequest(BaseModel):
    """Everything to place at once, plus machines to avoid (the provider's blocklist of failed hosts)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    groups: tuple[NodeGroup, ...] = Field(min_length=1, max_length=MAX_GROUPS)
    cluster_id: int | None = Field(None, ge=0)  # workers after the head: stay on the head's physical cluster
    excluded_machines: frozenset[int] = frozenset()
    # None: one physical cluster when use_overlay and more than one node. True forces it (a head whose workers come
    # later must sit on a cluster); False lets nodes go anywhere.
    physical_cluster: bool | None = None

    @field_validator("groups", mode="before")
    @classmethod
    def _groups(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("excluded_machines", mode="before")
    @classmethod
    def _machines(cls, value: Any) -> Any:
        return frozenset(value) if isinstance(value, list | tuple | set) else value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [group.name for group in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        if self.total_nodes > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes per request, got {self.total_nodes}")
        if self.physical_cluster is False and self.cluster_id is not None:
            raise ValueError("cluster_id pins nodes to a physical cluster; it contradicts physical_cluster=False")
        return self

    @classmethod
    def single(
        cls,
        accelerator: str,
        *,
        nodes: int = 1,
        gpus_per_node: int = 1,
        allocation: Allocation | str = Allocation.SPOT_IF_AVAILABLE,
        include_variants: bool = False,
        cluster_id: int | None = None,
        excluded_machines: frozenset[int] = frozenset(),
    ) -> PlacementRequest:
        """The common case: ``nodes`` identical nodes (a ``sky`` pool, ``skyward-ray offers``)."""
        try:
            group = NodeGroup(
                accelerator=accelerator,
                gpus_per_node=gpus_per_node,
                count=nodes,
                allocation=allocation,
                include_variants=include_variants,
            )
            return cls(groups=(group,), cluster_id=cluster_id, excluded_machines=frozenset(excluded_machines))
        except ValidationError as exc:
            raise config_error_from(exc) from None

    @property
    def total_nodes(self) -> int:
        return sum(group.count for group in self.groups)

    def scope(self, options: PlacementOptions) -> Scope:
        """A pin wins; else one physical cluster for an overlay of several nodes; else anywhere."""
        if self.cluster_id is not None:
            return Scope.PINNED
        if self.physical_cluster is not None:
            return Scope.ONE_CLUSTER if self.physical_cluster else Scope.FREE
        if options.use_overlay and self.total_nodes > 1:
            return Scope.ONE_CLUSTER
        return Scope.FREE

    def describe(self) -> str:
        return " + ".join(
            f"{group.name}: {group.describe()}" if len(self.groups) > 1 else group.describe() for group in self.groups
        )
