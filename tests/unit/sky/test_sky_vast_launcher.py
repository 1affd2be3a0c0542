"""A Vast pool's cluster config, its secrets, and the launcher's local bookkeeping: no network, no processes."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

import skyward_ray as sky
from skyward_ray.errors import ConfigError
from skyward_ray.placement.options import Allocation
from skyward_ray.provider.bootstrap import fill_node_resources
from skyward_ray.provider.config import validate_cluster_config
from skyward_ray.sky.cluster_sdk import EventReader
from skyward_ray.sky.launcher import LaunchError
from skyward_ray.sky.spec import PoolSpec
from skyward_ray.sky.vast_config import head_allocation, render_cluster_config
from skyward_ray.sky.vast_launcher import VastLauncher
from skyward_ray.vast.errors import CredentialsError

SECRET = "sk-unit-test-0123456789"


def spec(**overrides: Any) -> PoolSpec:
    values: dict[str, Any] = {"provider": sky.VastAI(geolocation="US", min_reliability=0.97, bid_multiplier=1.3),
                              "accelerator": sky.Accelerator("RTX 4090", count=2), "nodes": 4,
                              "image": sky.Image(pip=["torch"], apt=["ffmpeg"])}
    return PoolSpec.build(**{**values, **overrides})


def render(pool: PoolSpec, **kwargs: Any) -> dict[str, Any]:
    return render_cluster_config(pool, cluster_name="sky-unit", api_url="http://127.0.0.1:9", ssh_private_key="/k",
                                 **kwargs)


def test_n_nodes_are_a_head_and_n_minus_one_workers_that_come_up_with_the_cluster() -> None:
    config = render(spec())
    provider, shapes = validate_cluster_config(config)
    assert config["head_node_type"] == "head" and config["max_workers"] == 3
    assert (shapes["head"].kind, shapes["head"].min_workers, shapes["head"].max_workers) == ("head", 0, 0)
    assert (shapes["worker"].min_workers, shapes["worker"].max_workers) == (3, 3), "min_workers: up with the cluster"
    for shape in shapes.values():
        assert (shape.node_config.accelerator, shape.node_config.gpus) == ("RTX 4090", 2), "same accelerator"
    assert (provider.geolocation, provider.min_reliability, provider.bid_multiplier) == ("US", 0.97, 1.3)
    assert provider.api_url == "http://127.0.0.1:9"


def test_a_single_node_pool_has_no_worker_type() -> None:
    config = render(spec(nodes=1))
    assert list(config["available_node_types"]) == ["head"] and config["max_workers"] == 0


def test_every_node_gets_its_gpu_count_as_a_ray_resource() -> None:
    config = fill_node_resources(render(spec()))
    for settings in config["available_node_types"].values():
        assert settings["resources"]["GPU"] == 2
        assert settings["resources"]["accelerator_type:RTX-4090"] == 1


def test_the_image_becomes_the_setup_commands_of_every_node() -> None:
    commands = render(spec())["setup_commands"]
    assert commands == sky.Image(pip=["torch"], apt=["ffmpeg"]).setup_commands(python="python")
    assert any("pip install" in c and "torch" in c for c in commands)


@pytest.mark.parametrize(("allocation", "head", "workers"), [
    ("on-demand", "on-demand", "on-demand"),
    ("spot-if-available", "on-demand", "spot-if-available"),
    ("spot", "spot", "spot"),
])
def test_allocation_of_the_head_and_the_workers(allocation: str, head: str, workers: str) -> None:
    types = render(spec(allocation=allocation))["available_node_types"]
    assert types["head"]["node_config"]["allocation"] == head
    assert types["worker"]["node_config"]["allocation"] == workers
    assert head_allocation(Allocation.parse(allocation)).value == head


def test_the_api_key_is_never_in_the_config() -> None:
    pool = spec(provider=sky.VastAI(api_key=SECRET))
    config = render(pool, api_key_file="/tmp/key")
    assert SECRET not in json.dumps(config)
    assert config["provider"]["api_key_file"] == "/tmp/key"
    assert "api_key_file" not in render(spec())["provider"], "no key given: the provider's own lookup"


@pytest.mark.parametrize(("overrides", "kwargs", "field"), [
    ({"accelerator": None}, {}, "accelerator"),
    ({"vcpus": 8}, {}, "vcpus"),
    ({"memory_gb": 64}, {}, "memory_gb"),
    ({}, {"provider_overrides": {"api_key": SECRET}}, "provider_overrides.api_key"),
    ({}, {"provider_overrides": {"cache_ttl_s": -1}}, "provider.cache_ttl_s"),
    ({}, {"provider_overrides": {"no_such_key": 1}}, "provider.no_such_key"),
])
def test_bad_input_is_a_config_error_naming_the_field(overrides: dict[str, Any], kwargs: dict[str, Any],
                                                      field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as raised:
        render(spec(**overrides), **kwargs)
    assert SECRET not in str(raised.value)


def test_a_pool_without_a_provider_cannot_launch_on_vast() -> None:
    with pytest.raises(ConfigError, match="provider"):
        VastLauncher().up(PoolSpec())


@pytest.mark.parametrize(("kwargs", "field"), [({"cpus_per_node": 0}, "cpus_per_node"),
                                               ({"teardown_timeout_s": 0}, "teardown_timeout_s")])
def test_launcher_options_are_checked(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        VastLauncher(**kwargs)


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    """A key pair on disk (contents are not used: nothing connects)."""
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key\n")
    key.with_suffix(".pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUnitTestOnly unit\n")
    return key


def test_prepare_writes_the_key_as_a_0600_file_and_down_removes_everything(
        ssh_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    launcher = VastLauncher(ssh_private_key=ssh_key, progress=lambda _: None)
    pool = spec(provider=sky.VastAI(api_key=SECRET), name="sky-unit")
    launch = launcher._prepare(pool)
    launcher._launch = launch  # what up() does before it starts the SDK
    assert launch.api_key_file is not None
    assert stat.S_IMODE(launch.api_key_file.stat().st_mode) == 0o600
    assert launch.api_key_file.read_text().strip() == SECRET
    assert stat.S_IMODE(launch.workdir.stat().st_mode) == 0o700
    written = launch.config_path.read_text()
    assert SECRET not in written and str(launch.api_key_file) in written
    assert json.loads(written)["provider"]["api_url"] == "http://127.0.0.1:9", "VAST_URL is the API"
    assert SECRET not in repr(launcher) and SECRET not in repr(pool)
    launcher.down()  # nothing was launched: no teardown, only the local files go
    assert not launch.workdir.exists()
    assert launcher.workdir is None
    launcher.down()  # twice is fine


def test_no_api_key_anywhere_fails_before_anything_starts(ssh_key: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    launcher = VastLauncher(ssh_private_key=ssh_key, progress=lambda _: None)
    with pytest.raises(CredentialsError, match="no Vast API key found"):
        launcher.up(spec())
    assert launcher.workdir is None


def test_events_are_read_once_and_only_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    assert reader.read() == []
    path.write_text('{"event": "step", "step": "acquiring_new_head_node"}\n{"event": "wor')
    assert reader.read() == [{"event": "step", "step": "acquiring_new_head_node"}]
    with path.open("a") as handle:
        handle.write('kers", "up": 1, "wanted": 3}\n')
    assert reader.read() == [{"event": "workers", "up": 1, "wanted": 3}]
    assert reader.read() == []


def test_progress_lines_and_a_reported_failure() -> None:
    lines: list[str] = []
    launcher = VastLauncher(progress=lines.append)
    shown: set[str] = set()
    for step in ("acquiring_new_head_node", "run_setup_cmd", "run_setup_cmd", "start_ray_runtime_completed"):
        assert launcher._on_event({"event": "step", "step": step}, shown) is None
    launcher._on_event({"event": "workers", "up": 1, "wanted": 3, "statuses": {"up-to-date": 1, "setting-up": 2}},
                       shown)
    assert lines == ["renting the head", "head: installing skyward-ray and the image", "head: Ray is running",
                     "workers joining: 1/3 up (2 setting-up, 1 up-to-date)"]
    assert launcher._on_event({"event": "done", "head_id": "7"}, shown) == {"event": "done", "head_id": "7"}
    with pytest.raises(LaunchError, match="No placement for 1 x A100"):
        launcher._on_event({"event": "error", "message": "No placement for 1 x A100"}, shown)
