"""The sky API's configuration objects: defaults, coercions and clear errors for bad values; the key stays secret."""

from __future__ import annotations

from typing import Any

import pytest

import skyward_ray as sky
from skyward_ray.errors import ConfigError
from skyward_ray.placement.gpus import resolve_gpu
from skyward_ray.placement.options import Allocation, PlacementOptions
from skyward_ray.sky.spec import PoolSpec

SEED_DEFAULTS = {
    "api_key": None,
    "min_reliability": 0.95,
    "geolocation": None,
    "bid_multiplier": 1.2,
    "instance_timeout": 300,
    "docker_image": None,
    "disk_gb": 100,
    "use_overlay": True,
    "overlay_timeout": 120,
}


def test_vastai_has_every_parameter_of_the_seeds_table_with_its_default() -> None:
    provider = sky.VastAI()
    for name, default in SEED_DEFAULTS.items():
        assert getattr(provider, name) == default, name


def test_vastai_reuses_the_placement_options() -> None:
    assert issubclass(sky.VastAI, PlacementOptions)
    provider = sky.VastAI(geolocation="EU", verified_only=False, max_bid=0.5, max_hourly_cost=4.0)
    assert provider.geolocation == "EU" and "DE" in (provider.countries or ())
    assert provider.max_bid == 0.5 and provider.verified_only is False


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_reliability", 1.5),
        ("min_reliability", -0.1),
        ("bid_multiplier", 0.9),
        ("geolocation", "Atlantis"),
        ("disk_gb", 0),
        ("instance_timeout", -5),
        ("overlay_timeout", 0),
        ("use_overlay", "yes"),
        ("docker_image", "has space:1"),
        ("api_key", "   "),
        ("no_such_option", 1),
    ],
)
def test_vastai_rejects_bad_values_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"VastAI.{field}"):
        sky.VastAI(**{field: value})


def test_the_api_key_never_shows() -> None:
    secret = "vast-key-0123456789abcdef"
    provider = sky.VastAI(api_key=secret)
    assert provider.api_key is not None and provider.api_key.get_secret_value() == secret
    for text in (repr(provider), str(provider), provider.model_dump_json(), repr(provider.model_dump())):
        assert secret not in text
    pool = sky.ComputePool(provider=provider, accelerator="RTX 4090")
    assert secret not in repr(pool) and secret not in repr(pool.spec)
    with pytest.raises(ConfigError) as caught:
        sky.VastAI(api_key=secret, min_reliability=7)
    assert secret not in str(caught.value)


def test_accelerator_names_come_from_the_one_gpu_table() -> None:
    assert sky.Accelerator("rtx_4090").name == "RTX 4090"
    assert sky.Accelerator("a6000").name == "RTX A6000"
    h100 = sky.Accelerator("H100", count=8)
    assert h100.count == 8 and h100.vast_names == resolve_gpu("H100").vast_names
    assert h100.metadata["cuda"]["min"] == resolve_gpu("H100").model.cuda_min  # type: ignore[union-attr]
    assert sky.Accelerator("H100") == sky.Accelerator("h100")
    assert sky.Accelerator.from_name("A100", count=2).with_count(4) == sky.Accelerator("A100", count=4)
    unknown = sky.Accelerator("Quantum 9000")
    assert unknown.name == "Quantum 9000" and unknown.model is None and unknown.metadata == {}
    assert str(sky.Accelerator("A100", 8)) == "8x A100"


@pytest.mark.parametrize(("args", "field"), [(("",), "accelerator"), (("A100", 0), "count"), (("A100", 1.5), "count"),
                                             (("A100", True), "count"), ((["A100"],), "accelerator")])
def test_accelerator_rejects_bad_input(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        sky.Accelerator(*args)


def test_image_turns_into_setup_commands_and_a_runtime_env() -> None:
    image = sky.Image(pip=["torch", "transformers>=4.40"], apt=["ffmpeg"], env={"HF_HOME": "/data/hf"})
    assert image.pip == ("torch", "transformers>=4.40")
    commands = image.setup_commands(python="/opt/venv/bin/python")
    assert commands[0].startswith("apt-get update") and commands[0].endswith("ffmpeg")
    assert commands[1] == "/opt/venv/bin/python -m pip install -q torch 'transformers>=4.40'"
    assert image.runtime_env() == {"env_vars": {"HF_HOME": "/data/hf"}}
    assert sky.Image().setup_commands() == [] and sky.Image().runtime_env() is None
    indexed = sky.Image(pip=["torch"], pip_extra_index_url="https://download.pytorch.org/whl/cpu")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in indexed.setup_commands()[0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pip": "torch"}, "image.pip"),
        ({"pip": ["not a requirement!"]}, "image.pip"),
        ({"apt": ["Bad Name"]}, "image.apt"),
        ({"env": {"1BAD": "x"}}, "image.env"),
        ({"env": {"OK": 1}}, "image.env.OK"),
        ({"python": "3.11"}, "image.python"),
    ],
)
def test_image_rejects_bad_input(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        sky.Image(**kwargs)


def test_missing_requirements_checks_names_and_versions() -> None:
    from skyward_ray.sky.image import missing_requirements

    assert missing_requirements(["pytest", "ray>=2"]) == []
    assert missing_requirements(["surely-not-installed-pkg"]) == ["surely-not-installed-pkg"]
    [too_new] = missing_requirements(["pytest>=999"])
    assert too_new.startswith("pytest>=999 (found ")


@pytest.mark.parametrize("spelling", ["spot-if-available", "spot_if_available", "SPOT-IF-AVAILABLE"])
def test_allocation_accepts_hyphens_and_underscores(spelling: str) -> None:
    assert PoolSpec.build(allocation=spelling).allocation is Allocation.SPOT_IF_AVAILABLE
    assert PoolSpec.build(allocation="on_demand").allocation is Allocation.ON_DEMAND


def test_pool_spec_defaults_and_coercions() -> None:
    spec = sky.ComputePool(provider=sky.VastAI(), accelerator="RTX 4090").spec
    assert spec.nodes == 1 and spec.allocation is Allocation.SPOT_IF_AVAILABLE
    assert spec.accelerator == sky.Accelerator("RTX 4090") and spec.image == sky.Image()
    with_image = PoolSpec.build(image={"pip": ["torch"]}, accelerator=sky.Accelerator("A100", 8), nodes=4)
    assert with_image.image.pip == ("torch",) and with_image.accelerator.count == 8  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nodes": 0}, "pool.nodes"),
        ({"nodes": 2.5}, "pool.nodes"),
        ({"nodes": True}, "pool.nodes"),
        ({"allocation": "cheap"}, "pool.allocation"),
        ({"provider": "vast"}, "pool.provider"),
        ({"accelerator": 4090}, "pool.accelerator"),
        ({"image": "pytorch"}, "pool.image"),
        ({"address": "has space"}, "pool.address"),
        ({"ready_timeout": 0}, "pool.ready_timeout"),
    ],
)
def test_pool_rejects_bad_input_before_doing_anything(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        sky.ComputePool(**kwargs)


def test_pool_decorator_forms() -> None:
    def main() -> int:
        return 1

    assert sky.pool(provider=sky.VastAI(), nodes=2).spec.nodes == 2  # `with sky.pool(...)` form
    decorated = sky.pool(nodes=2)(main)  # `@sky.pool(...)` form
    assert decorated.__name__ == "main" and callable(decorated)
    assert sky.pool(main).__name__ == "main"  # bare `@sky.pool`
    with pytest.raises(TypeError, match="keyword arguments only"):
        sky.pool(main, nodes=2)
