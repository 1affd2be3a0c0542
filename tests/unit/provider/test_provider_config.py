"""The provider/node_config schema, `skyward-ray validate`, the shipped cluster configs and the generated reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from skyward_ray.cli import main as cli_main
from skyward_ray.cli.validate import validate_cluster_file
from skyward_ray.demo import CLUSTER_CONFIG
from skyward_ray.errors import ConfigError
from skyward_ray.placement import Allocation
from skyward_ray.provider.config import (
    InterruptedPolicy,
    VastNodeConfig,
    VastProviderConfig,
    overlay_name_for,
    validate_cluster_config,
)
from skyward_ray.provider.reference import render

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted([*(REPO / "cluster_configs").glob("*.yaml"), CLUSTER_CONFIG])
BASE = {"type": "external", "module": "skyward_ray.provider.VastNodeProvider"}


def test_the_four_cluster_configs_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"vast.yaml", "vast-spot.yaml", "vast-multinode.yaml", "emulator.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_cluster_config_validates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {path}")


def test_multinode_config_is_four_rtx_4090_on_one_cluster() -> None:
    config = validate_cluster_file(REPO / "cluster_configs" / "vast-multinode.yaml")
    provider, shapes = validate_cluster_config(config)
    assert provider.use_overlay
    nodes = 1 + sum(shape.max_workers for shape in shapes.values())
    assert nodes == 4 and {s.node_config.accelerator for s in shapes.values()} == {"RTX 4090"}
    assert sum(shape.min_workers for shape in shapes.values()) == 3


def test_spot_config_bids_for_workers_only() -> None:
    config = validate_cluster_file(REPO / "cluster_configs" / "vast-spot.yaml")
    _, shapes = validate_cluster_config(config)
    head = next(s for s in shapes.values() if s.kind == "head")
    workers = [s for s in shapes.values() if s.kind == "worker"]
    assert head.node_config.allocation_for("head") is Allocation.ON_DEMAND
    assert workers and all(s.node_config.allocation_for("worker") is Allocation.SPOT for s in workers)


def test_resources_are_filled_from_node_config() -> None:
    config = validate_cluster_file(REPO / "cluster_configs" / "vast-multinode.yaml")
    for settings in config["available_node_types"].values():
        assert settings["resources"]["GPU"] == 1
        assert settings["resources"]["accelerator_type:RTX-4090"] == 1
        assert settings["resources"]["CPU"] == 8  # declared in the YAML, kept


def test_reference_is_generated_from_the_schema_and_current() -> None:
    committed = (REPO / "cluster_configs" / "REFERENCE.md").read_text()
    assert committed == render(), "run: python -m skyward_ray.provider.reference > cluster_configs/REFERENCE.md"
    for name in (*VastProviderConfig.model_fields, *VastNodeConfig.model_fields):
        field = VastProviderConfig.model_fields.get(name) or VastNodeConfig.model_fields[name]
        assert f"`{field.alias or name}`" in committed


# --- bad input: one clear line, exit code 2 -------------------------------------------------------------------------


def _write(tmp_path: Path, mutate: Any) -> Path:
    config = yaml.safe_load((REPO / "cluster_configs" / "vast-spot.yaml").read_text())
    mutate(config)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["provider"].update(min_reliability=1.5), "provider.min_reliability: 1.5 is not allowed"),
        (lambda c: c["provider"].update(api_key="secret-key-123"), "provider.api_key: unknown field"),
        (lambda c: c["provider"].update(geolocation="Atlantis"), "provider.geolocation: 'Atlantis' is not allowed"),
        (lambda c: c["provider"].update(interrupted_policy="pray"), "allowed: replace, rebid"),
        (lambda c: c["provider"].update(max_bid=None, interrupted_policy="rebid"), "rebid needs max_bid"),
        (lambda c: c["available_node_types"]["spot_worker"]["node_config"].update(allocation="cheap"),
         "available_node_types.spot_worker.node_config.allocation: 'cheap' is not allowed"),
        (lambda c: c["available_node_types"]["head"]["node_config"].pop("accelerator"),
         "available_node_types.head.node_config.accelerator: missing"),
        (lambda c: c["available_node_types"]["head"]["node_config"].update(gpus=0),
         "available_node_types.head.node_config.gpus: 0 is not allowed"),
        (lambda c: c.pop("setup_commands"), "setup_commands: missing"),
        (lambda c: c.pop("cluster_synced_files"), "cluster_synced_files: missing"),
        (lambda c: c.update(head_node_type="nope"), "head_node_type"),
        (lambda c: c["available_node_types"]["head"].update(resources={"CPU": 1.5}), "1.5 is not of type 'integer'"),
        (lambda c: c.update(docker={"image": "x", "container_name": "c"}), "docker: is not allowed"),
        (lambda c: c["provider"].update(module="other.Provider"), "provider.module: 'other.Provider'"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     mutate: Any, expected: str) -> None:
    path = _write(tmp_path, mutate)
    assert cli_main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert expected in captured.err
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "secret-key-123" not in captured.err  # an unknown key is named, its value is not echoed


@pytest.mark.parametrize(("text", "expected"), [("a: [1, 2", "not valid YAML at line"),
                                                ("- 1\n- 2\n", "allowed: a mapping")])
def test_broken_yaml_is_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        validate_cluster_file(path)


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["validate", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot be read" in capsys.readouterr().err


# --- the models -----------------------------------------------------------------------------------------------------


def test_provider_config_inherits_placement_fields_rather_than_copying_them() -> None:
    from skyward_ray.placement import PlacementOptions

    assert issubclass(VastProviderConfig, PlacementOptions)
    config = VastProviderConfig.from_config({**BASE, "min_reliability": 0.9, "geolocation": "eu"})
    assert config.placement.min_reliability == 0.9 and config.placement.countries is not None
    assert config.interrupted_policy is InterruptedPolicy.REPLACE


def test_ray_adds_its_cache_path_and_it_is_accepted() -> None:
    config = VastProviderConfig.from_config({**BASE, "_config_cache_path": "/tmp/ray-config-abc"})
    assert config.config_cache_path == "/tmp/ray-config-abc"


@pytest.mark.parametrize(("kind", "allocation"), [("head", Allocation.ON_DEMAND),
                                                  ("worker", Allocation.SPOT_IF_AVAILABLE)])
def test_default_allocation_is_on_demand_for_the_head_only(kind: str, allocation: Allocation) -> None:
    assert VastNodeConfig(accelerator="RTX 4090").allocation_for(kind) is allocation


@pytest.mark.parametrize(("accelerator", "resource"), [("RTX 4090", "accelerator_type:RTX-4090"),
                                                       ("h100", "accelerator_type:H100"),
                                                       ("a100", "accelerator_type:A100"),
                                                       ("RTX_3090", "accelerator_type:RTX-3090")])
def test_accelerator_resource_follows_rays_naming(accelerator: str, resource: str) -> None:
    assert VastNodeConfig(accelerator=accelerator).accelerator_resource == resource


def test_node_config_refuses_docker_flags_in_env_and_port_22() -> None:
    with pytest.raises(ConfigError, match="env key '-p 1:1'"):
        VastNodeConfig.from_config({"accelerator": "RTX 4090", "env": {"-p 1:1": "1"}}, section="n")
    with pytest.raises(ConfigError, match="port 22"):
        VastNodeConfig.from_config({"accelerator": "RTX 4090", "ports": [22]}, section="n")


@pytest.mark.parametrize("name", ["My_Cluster", "my-cluster", "UPPER case!", "___", "a" * 200])
def test_overlay_names_are_vast_safe_and_distinct_per_cluster(name: str) -> None:
    overlay = overlay_name_for(name)
    assert overlay == overlay.lower() and set(overlay) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert len(overlay) <= 64
    assert overlay_name_for(name + "x") != overlay


def test_head_type_may_also_be_a_worker_type() -> None:
    config = validate_cluster_file(REPO / "cluster_configs" / "vast.yaml")
    _, shapes = validate_cluster_config(config)
    (shape,) = shapes.values()
    assert shape.kind == "head" and shape.max_workers == 2


def test_a_cluster_name_too_long_for_a_rental_label_is_refused_naming_the_field() -> None:
    config = validate_cluster_file(REPO / "cluster_configs" / "vast-multinode.yaml")
    validate_cluster_config({**config, "cluster_name": "c" * 100})
    with pytest.raises(ConfigError, match=r"^cluster_name: 'c{200}' with node type .* too long .*\(256 characters"):
        validate_cluster_config({**config, "cluster_name": "c" * 200})
