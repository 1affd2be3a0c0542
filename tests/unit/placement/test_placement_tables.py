"""The GPU-name table and the region table: one place each, tolerant input, exact output, clear errors."""

from __future__ import annotations

import pytest

from skyward_ray.errors import ConfigError
from skyward_ray.placement import COUNTRY_CODES, GPU_MODELS, REGIONS, known_gpu_names, resolve_gpu, resolve_region
from skyward_ray.placement.gpus import gpu_key, model_of


@pytest.mark.parametrize(
    ("typed", "names"),
    [
        ("H100", ("H100 SXM", "H100 PCIE", "H100 NVL")),
        ("h100", ("H100 SXM", "H100 PCIE", "H100 NVL")),
        ("A100", ("A100 PCIE", "A100 SXM4", "A100X")),
        ("H100 SXM", ("H100 SXM",)),
        ("h100_pcie", ("H100 PCIE",)),
        ("RTX 4090", ("RTX 4090",)),
        ("rtx_4090", ("RTX 4090",)),
        ("RTX4090", ("RTX 4090",)),
        ("rtx-4090", ("RTX 4090",)),
        ("RTX 4090D", ("RTX 4090D",)),
        ("RTX 3090 Ti", ("RTX 3090 Ti",)),
        ("A6000", ("RTX A6000",)),
        ("RTX 6000 Ada", ("RTX 6000Ada",)),
        ("L4", ("L4",)),
        ("L40", ("L40",)),
        ("V100", ("Tesla V100",)),
    ],
)
def test_names_resolve_to_exact_vast_names(typed: str, names: tuple[str, ...]) -> None:
    assert resolve_gpu(typed).vast_names == names


def test_consumer_names_stay_exact_unless_variants_are_asked_for() -> None:
    assert resolve_gpu("RTX 4090").vast_names == ("RTX 4090",)
    assert resolve_gpu("RTX 4090", include_variants=True).vast_names == ("RTX 4090", "RTX 4090D")
    assert resolve_gpu("RTX 5090", include_variants=True).vast_names == ("RTX 5090", "RTX 5090D")
    # the peers' bug: an RTX 5090 request must never match a workstation part
    assert "RTX PRO 6000 WS" not in resolve_gpu("RTX 5090", include_variants=True).vast_names


def test_unknown_names_are_searched_as_typed_without_cuda_metadata() -> None:
    selection = resolve_gpu("RTX_2070_Super")
    assert selection.vast_names == ("RTX 2070 Super",)
    assert selection.model is None and selection.label == "RTX 2070 Super"


def test_empty_name_is_an_error_with_examples() -> None:
    with pytest.raises(ConfigError, match=r"accelerator: '' is not a GPU name; allowed: a name such as H100"):
        resolve_gpu("")


def test_table_is_consistent() -> None:
    keys = [gpu_key(model.name) for model in GPU_MODELS]
    assert len(keys) == len(set(keys)), "two models share a canonical name"
    for model in GPU_MODELS:
        assert model.vast_names, model.name
        assert resolve_gpu(model.name).model is model
        for name in model.vast_names:
            assert model_of(name) is model
    assert known_gpu_names()[0] == "H100"


@pytest.mark.parametrize(
    ("name", "cuda_min", "cuda_max"),
    [("RTX 4090", 11.8, None), ("H100", 11.8, None), ("A100", 11.0, None), ("RTX 5090", 12.8, None),
     ("B200", 12.8, None), ("Tesla V100", 9.0, 12.9), ("GTX 1080 Ti", 8.0, 12.9), ("Tesla T4", 10.0, None)],
)
def test_cuda_range_follows_compute_capability(name: str, cuda_min: float, cuda_max: float | None) -> None:
    model = resolve_gpu(name).model
    assert model is not None
    assert (model.cuda_min, model.cuda_max) == (cuda_min, cuda_max)


@pytest.mark.parametrize(
    ("value", "contains", "excludes"),
    [
        ("US", {"US"}, {"CA"}),
        ("us", {"US"}, set()),
        ("NA", {"US", "CA", "MX"}, {"BR"}),
        ("North America", {"US", "CA"}, set()),
        ("EU", {"DE", "FR", "NL", "GB", "NO", "CH", "IE"}, {"US", "TR"}),
        ("EUROPE", {"DE", "GB"}, {"US"}),
        ("EU27", {"DE", "FR", "IE"}, {"GB", "NO", "CH"}),
        ("ASIA", {"JP", "CN", "IN", "SG", "HK", "KR"}, {"AU", "DE"}),
        ("APAC", {"JP", "AU", "NZ", "SG", "IN"}, {"DE"}),
        ("asia_pacific", {"JP", "AU"}, set()),
        ("OCEANIA", {"AU", "NZ"}, {"JP"}),
        ("LATAM", {"BR", "MX", "AR"}, {"US"}),
        ("SOUTH AMERICA", {"BR", "AR"}, {"MX"}),
        ("AMERICAS", {"US", "BR"}, {"DE"}),
        ("MIDDLE EAST", {"AE", "IL"}, {"DE"}),
        ("AFRICA", {"ZA", "NG"}, {"DE"}),
        ("EMEA", {"DE", "AE", "ZA"}, {"US"}),
        ("DE", {"DE"}, {"FR"}),
        ("de, fr", {"DE", "FR"}, {"NL"}),
        ("EU,US", {"DE", "US"}, {"JP"}),
    ],
)
def test_regions_expand_to_country_codes(value: str, contains: set[str], excludes: set[str]) -> None:
    codes = resolve_region(value)
    assert contains <= codes
    assert not codes & excludes


def test_every_region_is_valid_codes_and_has_a_test_above() -> None:
    for name, codes in REGIONS.items():
        assert codes and codes <= COUNTRY_CODES, name
    assert len(COUNTRY_CODES) == 249


@pytest.mark.parametrize("bad", ["XX", "UK", "Europa", "US,XX", "", " , "])
def test_unknown_region_lists_the_allowed_values(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_region(bad)
    message = str(caught.value)
    assert message.startswith("geolocation: ")
    assert "two-letter country code" in message and "EU" in message and "APAC" in message
