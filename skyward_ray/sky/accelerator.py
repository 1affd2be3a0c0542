"""``sky.Accelerator(name, count=1)``: a GPU model and how many of it each node gets.

Names and CUDA metadata come from the placement's one GPU table (:mod:`skyward_ray.placement.gpus`). A name the table
does not know is kept as typed (Vast may list GPUs newer than the table), with no CUDA metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from skyward_ray.errors import ConfigError
from skyward_ray.placement.gpus import GpuModel, GpuSelection, gpu_key, resolve_gpu


@dataclass(frozen=True)
class Accelerator:
    """``Accelerator("RTX 4090")``, ``Accelerator("A100", count=8)``. Strings work wherever an Accelerator does."""

    name: str
    count: int = 1
    _selection: GpuSelection = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ConfigError(f"accelerator.count: {self.count!r} is not allowed; allowed: an integer >= 1")
        if not isinstance(self.name, str):
            raise ConfigError(f"accelerator.name: {self.name!r} is not allowed; allowed: a GPU name such as 'RTX 4090'")
        selection = resolve_gpu(self.name)  # raises ConfigError for a blank name
        object.__setattr__(self, "_selection", selection)
        object.__setattr__(self, "name", _canonical_name(selection))

    @classmethod
    def from_name(cls, name: str, count: int = 1) -> Accelerator:
        return cls(name, count)

    def with_count(self, count: int) -> Accelerator:
        return replace(self, count=count)

    @property
    def model(self) -> GpuModel | None:
        """The table's entry for this GPU, or None for a name the table does not know."""
        return self._selection.model

    @property
    def vast_names(self) -> tuple[str, ...]:
        """The exact Vast ``gpu_name`` values this accelerator searches for."""
        return self._selection.vast_names

    @property
    def metadata(self) -> dict[str, Any]:
        """Legacy shape: ``{"cuda": {"min": 11.8, "max": None}}`` (empty for GPUs the table does not know)."""
        model = self.model
        if model is None:
            return {}
        return {"cuda": {"min": model.cuda_min, "max": model.cuda_max}, "compute_capability": model.compute_capability}

    def __str__(self) -> str:
        return self.name if self.count == 1 else f"{self.count}x {self.name}"


def _canonical_name(selection: GpuSelection) -> str:
    """The table's spelling: the model's name for a family/alias ("a6000" -> "RTX A6000"), else the Vast name."""
    model = selection.model
    if model is None:
        return selection.requested
    if gpu_key(selection.requested) in {gpu_key(name) for name in (model.name, *model.aliases)}:
        return model.name
    return selection.vast_names[0]


def as_accelerator(value: str | Accelerator | None) -> Accelerator | None:
    """Coerce what a user passes as ``accelerator=`` (a name, an Accelerator, or None for CPU-only)."""
    if value is None or isinstance(value, Accelerator):
        return value
    if isinstance(value, str):
        return Accelerator(value)
    raise ConfigError(
        f"accelerator: {value!r} is not allowed; allowed: a GPU name such as 'RTX 4090', sky.Accelerator(...), or None"
    )
