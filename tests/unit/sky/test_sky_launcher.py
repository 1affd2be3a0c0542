"""Which cluster a pool uses, and that a pool undoes its own steps when starting fails; Ray is faked here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import skyward_ray as sky
from skyward_ray.errors import ConfigError
from skyward_ray.sky import pool as pool_module
from skyward_ray.sky.launcher import AttachLauncher, ClusterHandle, LaunchError, discover_address
from skyward_ray.sky.spec import PoolSpec


@pytest.fixture
def no_cluster_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RAY_ADDRESS and an empty Ray temp dir, so other Ray users on this machine cannot leak in."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray" / "ray_current_cluster"


def test_address_precedence(monkeypatch: pytest.MonkeyPatch, no_cluster_here: Path) -> None:
    assert discover_address(None) is None
    no_cluster_here.write_text("10.8.0.2:6379")  # what `ray start` records on a node: a `ray submit` script
    assert discover_address(None) == "10.8.0.2:6379"
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.8.0.2:10001")
    assert discover_address(None) == "ray://10.8.0.2:10001"
    assert discover_address("127.0.0.2:4321") == "127.0.0.2:4321"


def test_a_pool_attaches_when_there_is_a_cluster(monkeypatch: pytest.MonkeyPatch, no_cluster_here: Path) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.2:4321")
    launcher = sky.ComputePool(provider=sky.VastAI())._choose_launcher()
    assert isinstance(launcher, AttachLauncher) and launcher.address == "127.0.0.2:4321"
    handle = launcher.up(PoolSpec())
    assert handle == ClusterHandle(address="127.0.0.2:4321", created=False, description="attached to 127.0.0.2:4321")


def test_no_cluster_and_no_provider_is_a_clear_error(no_cluster_here: Path) -> None:
    with pytest.raises(LaunchError, match=r"no Ray cluster to attach to.*sky\.VastAI.*ray submit.*address="):
        sky.ComputePool(accelerator="RTX 4090").start()


def test_a_vast_pool_with_nothing_to_attach_to_launches_on_vast(no_cluster_here: Path) -> None:
    from skyward_ray.sky.vast_launcher import VastLauncher

    assert isinstance(sky.ComputePool(provider=sky.VastAI(), accelerator="RTX 4090")._choose_launcher(), VastLauncher)


@pytest.mark.parametrize(("kwargs", "field"), [({"first_ip": "127.0.0.1"}, "first_ip"),
                                               ({"first_ip": "192.0.2.10"}, "first_ip"), ({"nodes": 0}, "nodes")])
def test_local_launcher_refuses_addresses_ray_would_rewrite(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        sky.LocalLauncher(**kwargs)


class FakeLauncher:
    def __init__(self, fail_up: bool = False) -> None:
        self.fail_up = fail_up
        self.events: list[str] = []

    def up(self, spec: PoolSpec) -> ClusterHandle:
        self.events.append("up")
        if self.fail_up:
            raise RuntimeError("rental failed")
        return ClusterHandle(address="127.0.0.2:1", created=True, nodes=spec.nodes)

    def down(self) -> None:
        self.events.append("down")


def test_a_failed_launch_still_takes_down_what_it_may_have_made() -> None:
    launcher = FakeLauncher(fail_up=True)
    with pytest.raises(RuntimeError, match="rental failed"):
        sky.ComputePool(launcher=launcher).start()
    assert launcher.events == ["up", "down"]


def test_a_failed_connect_takes_the_new_cluster_down(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kwargs: Any) -> None:
        raise ConnectionError("GCS unreachable")

    monkeypatch.setattr(pool_module.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(pool_module.ray, "init", refuse)
    launcher = FakeLauncher()
    pool = sky.ComputePool(launcher=launcher)
    with pytest.raises(ConnectionError):
        pool.start()
    assert launcher.events == ["up", "down"] and not pool.running


def test_a_pool_that_is_not_running_says_how_to_use_it() -> None:
    pool = sky.ComputePool()
    with pytest.raises(RuntimeError, match="not running"):
        _ = pool.nodes
    pool.stop()  # harmless
