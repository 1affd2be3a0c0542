"""Which Docker image the nodes run: the user's ``docker_image``, else a CUDA runtime image every chosen host can
run, else :data:`FALLBACK_IMAGE` (see :func:`choose_image`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from skyward_ray.placement.gpus import GpuModel

FALLBACK_IMAGE = "nvcr.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04"
# (major, minor) -> the patch release published as nvcr.io/nvidia/cuda:<tag>-runtime-ubuntu22.04.
CUDA_IMAGE_TAGS: dict[tuple[int, int], str] = {
    (11, 7): "11.7.1",
    (11, 8): "11.8.0",
    (12, 0): "12.0.1",
    (12, 1): "12.1.1",
    (12, 2): "12.2.2",
    (12, 3): "12.3.2",
    (12, 4): "12.4.1",
    (12, 5): "12.5.1",
    (12, 6): "12.6.3",
    (12, 8): "12.8.1",
    (12, 9): "12.9.1",
}

_CUDA_IN_REFERENCE = re.compile(r"cuda[-_:.]?v?(\d{1,2})\.(\d{1,2})", re.IGNORECASE)
_EPSILON = 1e-9  # Vast's cuda_max_good is a float such as 12.4; compare with a little slack


class ImageSource(enum.StrEnum):
    DOCKER_IMAGE = "docker_image"
    DERIVED = "derived"
    FALLBACK = "fallback"


@dataclass(frozen=True)
class ImageChoice:
    image: str
    source: ImageSource
    cuda: float | None  # the CUDA version the image needs, when known


def cuda_image(version: tuple[int, int]) -> str:
    return f"nvcr.io/nvidia/cuda:{CUDA_IMAGE_TAGS[version]}-runtime-ubuntu22.04"


def image_cuda_version(image: str | None) -> float | None:
    """The CUDA version named in an image reference, e.g. 12.4 for ``nvcr.io/nvidia/cuda:12.4.1-runtime-...``."""
    if not image:
        return None
    match = _CUDA_IN_REFERENCE.search(image)
    return float(f"{int(match.group(1))}.{int(match.group(2))}") if match else None


def _as_float(version: tuple[int, int]) -> float:
    return float(f"{version[0]}.{version[1]}")


def choose_image(
    docker_image: str | None,
    models: Iterable[GpuModel | None],
    host_cuda: Sequence[float | None],
    *,
    floor: float | None = None,
) -> ImageChoice:
    """The image for the chosen offers, by three rules:

    1. ``docker_image`` if given (a CUDA version in its reference is a floor on the hosts' ``cuda_max_good``, which
       the search applies: a host with an older driver cannot run that image);
    2. else the newest :data:`CUDA_IMAGE_TAGS` version that is at least ``floor`` and each GPU's oldest CUDA, and at
       most every chosen host's ``cuda_max_good`` and each GPU's last supported CUDA;
    3. else :data:`FALLBACK_IMAGE` (no GPU metadata, or no listed version fits).

    ``host_cuda`` is each chosen offer's ``cuda_max_good``; ``floor`` the search's floor.
    """
    if docker_image:
        return ImageChoice(docker_image, ImageSource.DOCKER_IMAGE, image_cuda_version(docker_image))
    known = [model for model in models if model is not None]
    if not known or not host_cuda or any(value is None for value in host_cuda):
        return ImageChoice(FALLBACK_IMAGE, ImageSource.FALLBACK, image_cuda_version(FALLBACK_IMAGE))
    low = max([model.cuda_min for model in known] + ([floor] if floor is not None else []))
    ceilings = [value for value in host_cuda if value is not None]
    ceilings += [model.cuda_max for model in known if model.cuda_max is not None]
    high = min(ceilings)
    for version in sorted(CUDA_IMAGE_TAGS, reverse=True):
        if low - _EPSILON <= _as_float(version) <= high + _EPSILON:
            return ImageChoice(cuda_image(version), ImageSource.DERIVED, _as_float(version))
    return ImageChoice(FALLBACK_IMAGE, ImageSource.FALLBACK, image_cuda_version(FALLBACK_IMAGE))
