"""The image rule: docker_image (its CUDA a floor), else derived from the GPU and the chosen hosts, else fallback."""

from __future__ import annotations

import pytest
from support.placement_offers import machine, offer

from skyward_ray.placement import (
    FALLBACK_IMAGE,
    ImageSource,
    NoPlacementError,
    PlacementOptions,
    PlacementRequest,
    choose_image,
    image_cuda_version,
    plan,
    resolve_gpu,
)


@pytest.mark.parametrize(
    ("image", "cuda"),
    [
        ("nvcr.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04", 12.4),
        ("nvcr.io/nvidia/cuda:11.8.0-devel-ubuntu22.04", 11.8),
        ("pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime", 12.1),
        ("vastai/base-image:cuda-12.8.1-auto", 12.8),
        ("nvcr.io/nvidia/pytorch:24.01-py3", None),
        ("python:3.11", None),
        (None, None),
    ],
)
def test_cuda_version_is_read_from_the_image_reference(image: str | None, cuda: float | None) -> None:
    assert image_cuda_version(image) == cuda


def test_docker_image_is_used_as_given_and_its_cuda_becomes_a_host_floor() -> None:
    image = "nvcr.io/nvidia/cuda:12.6.3-runtime-ubuntu22.04"
    options = PlacementOptions(docker_image=image)
    offers = [offer(1, 1, dph_total=0.1, cuda_max_good=12.4), offer(2, 2, dph_total=0.3, cuda_max_good=12.6)]
    result = plan(PlacementRequest.single("RTX 4090", allocation="on-demand"), options, offers)
    assert [node.offer_id for node in result.nodes] == [2]  # the cheaper host's driver is too old for the image
    assert (result.image, result.image_source, result.image_cuda) == (image, ImageSource.DOCKER_IMAGE, 12.6)


def test_docker_image_without_a_cuda_version_adds_no_floor_of_its_own() -> None:
    options = PlacementOptions(docker_image="nvcr.io/nvidia/pytorch:24.01-py3", min_cuda=None)
    result = plan(PlacementRequest.single("RTX 4090", allocation="on-demand"), options,
                  [offer(1, 1, cuda_max_good=11.2)])
    assert result.image == "nvcr.io/nvidia/pytorch:24.01-py3" and result.image_cuda is None


def test_derived_image_is_the_newest_cuda_every_chosen_host_supports() -> None:
    offers = machine(1, 1, cluster_id=3, cuda_max_good=12.8) + machine(2, 1, cluster_id=3, cuda_max_good=12.5)
    result = plan(PlacementRequest.single("RTX 4090", nodes=2), PlacementOptions(), offers)
    assert result.image == "nvcr.io/nvidia/cuda:12.5.1-runtime-ubuntu22.04"
    assert (result.image_source, result.image_cuda) == (ImageSource.DERIVED, 12.5)


def test_derived_image_respects_the_gpu_range() -> None:
    blackwell = resolve_gpu("RTX 5090").model
    choice = choose_image(None, [blackwell], [13.0], floor=12.8)
    assert choice.image == "nvcr.io/nvidia/cuda:12.9.1-runtime-ubuntu22.04"  # the newest listed tag
    pascal = resolve_gpu("GTX 1080 Ti").model
    assert choose_image(None, [pascal], [13.0]).cuda == 12.9  # CUDA 13 dropped Pascal
    ada = resolve_gpu("RTX 4090").model
    assert choose_image(None, [ada], [12.7]).cuda == 12.6  # no 12.7 tag: the next lower one
    assert choose_image(None, [ada], [11.9], floor=None).image == "nvcr.io/nvidia/cuda:11.8.0-runtime-ubuntu22.04"


def test_fallback_when_no_gpu_metadata_or_no_version_fits() -> None:
    unknown = plan(PlacementRequest.single("Mystery GPU", allocation="on-demand"), PlacementOptions(),
                   [offer(1, 1, gpu_name="Mystery GPU")])
    assert (unknown.image, unknown.image_source) == (FALLBACK_IMAGE, ImageSource.FALLBACK)
    assert FALLBACK_IMAGE == "nvcr.io/nvidia/cuda:12.4.1-runtime-ubuntu22.04"
    ada = resolve_gpu("RTX 4090").model
    assert choose_image(None, [ada], [11.5]).source is ImageSource.FALLBACK  # below the GPU's oldest CUDA
    assert choose_image(None, [ada], [None]).source is ImageSource.FALLBACK
    assert choose_image(None, [None], [12.8]).source is ImageSource.FALLBACK


def test_the_gpu_floor_keeps_hosts_that_cannot_run_any_image_for_it_out() -> None:
    options = PlacementOptions(min_cuda=None)
    with pytest.raises(NoPlacementError, match=r"cuda_max_good >= 12\.8"):
        plan(PlacementRequest.single("RTX 5090", allocation="on-demand"), options,
             [offer(1, 1, gpu_name="RTX 5090", cuda_max_good=12.4)])
