"""PlacementOptions, Allocation and the request model: defaults from the seed, and every bad value named clearly."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import Field, SecretStr

from skyward_ray.errors import ConfigError, SkywardError
from skyward_ray.placement import Allocation, NodeGroup, PlacementOptions, PlacementRequest, Scope


def test_defaults_follow_the_seed_table() -> None:
    options = PlacementOptions()
    assert options.min_reliability == 0.95
    assert options.geolocation is None
    assert options.bid_multiplier == 1.2
    assert options.docker_image is None
    assert options.disk_gb == 100
    assert options.use_overlay is True
    # the added ones
    assert options.verified_only is True
    assert options.datacenter_only is False
    assert options.min_cuda == 12.0
    assert options.min_inet_down is None
    assert options.max_bid is None
    assert options.max_hourly_cost is None
    assert options.excluded_machines == frozenset()


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("min_reliability", 0.0, 0.0),
        ("min_reliability", 1, 1.0),
        ("geolocation", "us", "US"),
        ("geolocation", ["de", "fr"], "DE,FR"),
        ("bid_multiplier", 1.0, 1.0),
        ("docker_image", " nvcr.io/nvidia/pytorch:24.01-py3 ", "nvcr.io/nvidia/pytorch:24.01-py3"),
        ("disk_gb", 250, 250),
        ("use_overlay", False, False),
        ("verified_only", False, False),
        ("datacenter_only", True, True),
        ("min_cuda", None, None),
        ("min_cuda", 12.4, 12.4),
        ("min_inet_down", 500, 500.0),
        ("max_bid", 0.5, 0.5),
        ("max_hourly_cost", 10, 10.0),
        ("excluded_machines", [3, 1, 3], frozenset({1, 3})),
    ],
)
def test_each_parameter_accepts_good_values(field: str, value: Any, expected: Any) -> None:
    assert getattr(PlacementOptions.from_config({field: value}), field) == expected


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("min_reliability", 1.5, "less than or equal to 1"),
        ("min_reliability", -0.1, "greater than or equal to 0"),
        ("min_reliability", "0.9", "valid number"),
        ("min_reliability", float("nan"), "NaN"),
        ("geolocation", "XX", "two-letter country code"),
        ("geolocation", "", "empty"),
        ("geolocation", 5, "two-letter country code"),
        ("bid_multiplier", 0.9, "greater than or equal to 1"),
        ("docker_image", "my image", "without spaces"),
        ("docker_image", "", "without spaces"),
        ("disk_gb", 0, "greater than or equal to 1"),
        ("disk_gb", 10.5, "valid integer"),
        ("use_overlay", "yes", "valid boolean"),
        ("verified_only", 1, "valid boolean"),
        ("datacenter_only", None, "valid boolean"),
        ("min_cuda", 3.0, "greater than or equal to 7"),
        ("min_inet_down", -1, "greater than or equal to 0"),
        ("max_bid", 0, "greater than 0"),
        ("max_hourly_cost", -5, "greater than 0"),
        ("excluded_machines", [1, "two"], "machine ids"),
        ("excluded_machines", [True], "machine ids"),
    ],
)
def test_each_bad_value_names_field_value_and_what_is_allowed(field: str, value: Any, allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PlacementOptions.from_config({field: value}, section="provider")
    message = str(caught.value)
    assert message.startswith(f"provider.{field}: ")
    assert repr(value) in message
    assert allowed in message


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        PlacementOptions.from_config({"min_reliabilty": 0.9})
    message = str(caught.value)
    assert message.startswith("min_reliabilty: unknown field (did you mean 'min_reliability'?); allowed: ")
    assert set(message.split("; allowed: ")[1].split(", ")) == set(PlacementOptions.model_fields)
    with pytest.raises(ConfigError, match=r"^zzz: unknown field; allowed: bid_multiplier, "):  # nothing close
        PlacementOptions.from_config({"zzz": 1})


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        PlacementOptions.from_config({"min_reliability": 2.0, "disk_gb": -1})
    assert "min_reliability" in str(caught.value) and "disk_gb" in str(caught.value)


def test_options_are_immutable_and_hashable_for_caching() -> None:
    options = PlacementOptions(geolocation="EU")
    with pytest.raises(ValueError, match="frozen"):
        options.min_reliability = 0.5  # type: ignore[misc]
    assert hash(options) == hash(PlacementOptions(geolocation="eu"))


def test_countries_expand_the_geolocation() -> None:
    assert PlacementOptions().countries is None
    assert PlacementOptions(geolocation="US").countries == frozenset({"US"})
    assert {"DE", "FR", "GB"} <= (PlacementOptions(geolocation="EU").countries or set())


class _ProviderLike(PlacementOptions):
    """What the provider config and sky.VastAI do: subclass, add non-placement fields, keep the placement ones."""

    api_key: SecretStr | None = Field(None, repr=False)
    instance_timeout: int = Field(300, ge=0)


def test_subclasses_reuse_the_fields_and_mask_secrets_in_errors() -> None:
    config = _ProviderLike.from_config({"min_reliability": 0.9, "instance_timeout": 60})
    assert config.min_reliability == 0.9 and config.bid_multiplier == 1.2
    with pytest.raises(ConfigError) as caught:
        _ProviderLike.from_config({"api_key": 12345678, "min_reliability": 3})
    message = str(caught.value)
    assert "12345678" not in message and "api_key: ***" in message
    assert "min_reliability: 3" in message


@pytest.mark.parametrize(
    ("text", "allocation"),
    [
        ("on-demand", Allocation.ON_DEMAND),
        ("on_demand", Allocation.ON_DEMAND),
        ("ON-DEMAND", Allocation.ON_DEMAND),
        ("spot", Allocation.SPOT),
        ("spot-if-available", Allocation.SPOT_IF_AVAILABLE),
        ("spot_if_available", Allocation.SPOT_IF_AVAILABLE),
        (Allocation.SPOT, Allocation.SPOT),
    ],
)
def test_allocation_spellings(text: Any, allocation: Allocation) -> None:
    assert Allocation.parse(text) is allocation
    assert NodeGroup(accelerator="RTX 4090", allocation=text).allocation is allocation


@pytest.mark.parametrize("bad", ["spots", "interruptible", "", 1, None])
def test_unknown_allocation_lists_the_allowed_ones(bad: Any) -> None:
    with pytest.raises(ConfigError, match="allowed: on-demand, spot, spot-if-available"):
        Allocation.parse(bad)
    with pytest.raises(ConfigError, match=r"allocation: .*allowed: on-demand, spot, spot-if-available"):
        PlacementRequest.single("RTX 4090", allocation=bad)


def test_allocation_says_which_search_it_needs() -> None:
    assert not Allocation.ON_DEMAND.bids
    assert Allocation.SPOT.bids and Allocation.SPOT_IF_AVAILABLE.bids


def test_request_validation() -> None:
    with pytest.raises(ConfigError, match="count"):
        PlacementRequest.single("RTX 4090", nodes=0)
    with pytest.raises(ConfigError, match="gpus_per_node"):
        PlacementRequest.single("RTX 4090", gpus_per_node=0)
    with pytest.raises(ConfigError, match="accelerator"):
        PlacementRequest.single("  ")
    with pytest.raises(ValueError, match="unique"):
        PlacementRequest(groups=(NodeGroup(accelerator="L4"), NodeGroup(accelerator="L4")))
    with pytest.raises(ValueError, match="contradicts"):
        PlacementRequest(groups=(NodeGroup(accelerator="L4"),), cluster_id=3, physical_cluster=False)
    assert issubclass(ConfigError, SkywardError)


def test_scope_follows_overlay_node_count_and_pin() -> None:
    overlay, no_overlay = PlacementOptions(), PlacementOptions(use_overlay=False)
    four = PlacementRequest.single("RTX 4090", nodes=4)
    one = PlacementRequest.single("RTX 4090", nodes=1)
    assert four.scope(overlay) is Scope.ONE_CLUSTER
    assert four.scope(no_overlay) is Scope.FREE
    assert one.scope(overlay) is Scope.FREE
    assert one.model_copy(update={"physical_cluster": True}).scope(overlay) is Scope.ONE_CLUSTER
    assert PlacementRequest.single("RTX 4090", cluster_id=17).scope(no_overlay) is Scope.PINNED
    head_and_workers = PlacementRequest(groups=(
        NodeGroup(name="head", accelerator="RTX 4090", allocation="on-demand"),
        NodeGroup(name="worker", accelerator="RTX 4090", count=3, allocation="spot"),
    ))
    assert head_and_workers.total_nodes == 4 and head_and_workers.scope(overlay) is Scope.ONE_CLUSTER
    assert "head: 1 x RTX 4090" in head_and_workers.describe()
