"""The one table of GPU names: what a user types -> the exact Vast ``gpu_name`` values to search for, and each
model's compute capability, from which the image rule's CUDA range comes. A table, not substring matching, so an
"RTX 5090" request never rents an "RTX PRO 6000"; a family name ("H100") covers its variants.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

from skyward_ray.errors import ConfigError

# Compute capability -> first CUDA release that supports it. Hopper and Ada shipped together in CUDA 11.8.
_CUDA_MIN_BY_CAPABILITY: dict[float, float] = {
    6.0: 8.0,
    6.1: 8.0,
    7.0: 9.0,
    7.5: 10.0,
    8.0: 11.0,
    8.6: 11.1,
    8.9: 11.8,
    9.0: 11.8,
    10.0: 12.8,
    12.0: 12.8,
}
# CUDA 13 removed Maxwell, Pascal and Volta: the last toolkit for them is 12.9.
_LAST_CUDA_BEFORE_TURING_DROP = 12.9
_TURING = 7.5


@dataclass(frozen=True)
class GpuModel:
    """One accelerator model: its canonical name, the Vast names it covers, and its compute capability."""

    name: str
    vast_names: tuple[str, ...]
    compute_capability: float
    variants: tuple[str, ...] = ()  # matched only when the caller asks for variants (e.g. "RTX 4090D")
    aliases: tuple[str, ...] = ()

    @property
    def cuda_min(self) -> float:
        """Oldest CUDA version that runs on this architecture."""
        return _CUDA_MIN_BY_CAPABILITY[self.compute_capability]

    @property
    def cuda_max(self) -> float | None:
        """Newest CUDA version that still runs on it, or None while current toolkits support it."""
        return _LAST_CUDA_BEFORE_TURING_DROP if self.compute_capability < _TURING else None


GPU_MODELS: tuple[GpuModel, ...] = (
    # Datacenter: family names that are not Vast names expand to every variant.
    GpuModel("H100", ("H100 SXM", "H100 PCIE", "H100 NVL"), 9.0),
    GpuModel("H200", ("H200", "H200 NVL"), 9.0),
    GpuModel("GH200", ("GH200 SXM",), 9.0),
    GpuModel("B200", ("B200",), 10.0),
    GpuModel("A100", ("A100 PCIE", "A100 SXM4", "A100X"), 8.0),
    GpuModel("A800", ("A800 PCIE",), 8.0),
    GpuModel("A40", ("A40",), 8.6),
    GpuModel("A10", ("A10",), 8.6),
    GpuModel("L40S", ("L40S",), 8.9),
    GpuModel("L40", ("L40",), 8.9),
    GpuModel("L4", ("L4",), 8.9),
    GpuModel("Tesla V100", ("Tesla V100",), 7.0, aliases=("V100",)),
    GpuModel("Tesla T4", ("Tesla T4",), 7.5, aliases=("T4",)),
    # Workstation.
    GpuModel("RTX PRO 6000 WS", ("RTX PRO 6000 WS",), 12.0),
    GpuModel("RTX 6000Ada", ("RTX 6000Ada",), 8.9, aliases=("RTX 6000 Ada", "6000 Ada")),
    GpuModel("RTX A6000", ("RTX A6000",), 8.6, aliases=("A6000",)),
    GpuModel("RTX A5000", ("RTX A5000",), 8.6, aliases=("A5000",)),
    GpuModel("RTX A4000", ("RTX A4000",), 8.6, aliases=("A4000",)),
    GpuModel("Q RTX 8000", ("Q RTX 8000",), 7.5, aliases=("Quadro RTX 8000", "RTX 8000")),
    # Consumer: exact by default; the D/Ti/Super parts only when variants are asked for.
    GpuModel("RTX 5090", ("RTX 5090",), 12.0, variants=("RTX 5090D",)),
    GpuModel("RTX 5080", ("RTX 5080",), 12.0),
    GpuModel("RTX 4090", ("RTX 4090",), 8.9, variants=("RTX 4090D",)),
    GpuModel("RTX 4080", ("RTX 4080",), 8.9, variants=("RTX 4080S",)),
    GpuModel("RTX 4070 Ti", ("RTX 4070 Ti",), 8.9),
    GpuModel("RTX 3090", ("RTX 3090",), 8.6, variants=("RTX 3090 Ti",)),
    GpuModel("RTX 3090 Ti", ("RTX 3090 Ti",), 8.6),
    GpuModel("RTX 3080", ("RTX 3080",), 8.6, variants=("RTX 3080 Ti",)),
    GpuModel("RTX 3080 Ti", ("RTX 3080 Ti",), 8.6),
    GpuModel("RTX 3070", ("RTX 3070",), 8.6),
    GpuModel("RTX 3060", ("RTX 3060",), 8.6),
    GpuModel("RTX 2080 Ti", ("RTX 2080 Ti",), 7.5),
    GpuModel("GTX 1080 Ti", ("GTX 1080 Ti",), 6.1),
)


def gpu_key(name: str) -> str:
    """The comparison key of a GPU name: upper case without separators ("rtx_4090" -> "RTX4090").

    Vast's server maps ``_`` to a space; users also type "RTX4090" or "H100-SXM".
    """
    return "".join(ch for ch in name.upper() if ch not in " _-\t")


@dataclass(frozen=True)
class GpuSelection:
    """What one accelerator request searches for: exact Vast names, and the model when the table knows it."""

    requested: str
    vast_names: tuple[str, ...]
    model: GpuModel | None  # None: a name not in the table, searched for exactly as typed

    @property
    def label(self) -> str:
        """How messages name it: the canonical name when known."""
        return self.model.name if self.model else self.requested

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(gpu_key(name) for name in self.vast_names)


def _build_index() -> dict[str, tuple[GpuModel, tuple[str, ...] | None]]:
    """key -> (model, exact names or None for "the model's default names").

    Variants are indexed first, then Vast names, then canonical names and aliases, so the more specific meaning wins:
    "RTX 3090 Ti" is its own model, not only a variant of "RTX 3090".
    """
    index: dict[str, tuple[GpuModel, tuple[str, ...] | None]] = {}
    for model in GPU_MODELS:
        for name in model.variants:
            index.setdefault(gpu_key(name), (model, (name,)))
    for model in GPU_MODELS:
        for name in model.vast_names:
            index[gpu_key(name)] = (model, (name,))
    for model in GPU_MODELS:
        for name in (model.name, *model.aliases):
            index[gpu_key(name)] = (model, None)
    return index


_INDEX = _build_index()
MODELS_BY_VAST_KEY: dict[str, GpuModel] = {
    gpu_key(name): model for model in GPU_MODELS for name in (*model.vast_names, *model.variants)
}


@lru_cache(maxsize=512)
def resolve_gpu(name: str, *, include_variants: bool = False) -> GpuSelection:
    """Turn an accelerator name into the exact Vast names to search for.

    A name missing from the table is searched for as typed (underscores read as spaces, as Vast's CLI does), so new
    GPUs work before the table knows them; only the image rule then falls back to the default image.
    """
    if not isinstance(name, str) or not name.strip():
        examples = ", ".join(known_gpu_names()[:6])
        raise ConfigError(f"accelerator: {name!r} is not a GPU name; allowed: a name such as {examples}")
    requested = " ".join(name.replace("_", " ").split())
    entry = _INDEX.get(gpu_key(requested))
    if entry is None:
        return GpuSelection(requested=requested, vast_names=(requested,), model=None)
    model, exact = entry
    if include_variants:
        names = (*model.vast_names, *model.variants)
    else:
        names = exact if exact is not None else model.vast_names
    return GpuSelection(requested=requested, vast_names=names, model=model)


def model_of(vast_name: str | None) -> GpuModel | None:
    """The table's model for a Vast ``gpu_name`` of an offer, if known."""
    return MODELS_BY_VAST_KEY.get(gpu_key(vast_name)) if vast_name else None


def closest_gpu_names(name: str, limit: int = 3) -> list[str]:
    """Canonical names of the table that ``name`` most likely meant: those whose names contain it as a whole part
    ("4090" -> "RTX 4090", not "RTX 4090D"), else the closest spellings ("RTX 4900" -> "RTX 4090")."""
    key = gpu_key(name)
    if not key:
        return []
    spellings = {gpu_key(spelling): model.name for model in GPU_MODELS
                 for spelling in (model.name, *model.aliases, *model.vast_names)}
    words = name.upper().replace("_", " ").replace("-", " ").split()
    contained = [model.name for model in GPU_MODELS
                 if all(word in model.name.upper().split() for word in words)
                 or any(key == gpu_key(part) for part in model.name.split())]
    if contained:
        return list(dict.fromkeys(contained))[:limit]
    close = difflib.get_close_matches(key, list(spellings), n=limit, cutoff=0.6)
    return list(dict.fromkeys(spellings[match] for match in close))[:limit]


def known_gpu_names() -> list[str]:
    """Canonical names, in table order, for error messages and ``--help``."""
    return [model.name for model in GPU_MODELS]
