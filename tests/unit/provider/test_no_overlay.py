"""Several nodes need the overlay: on Vast, instances on different machines sit behind NAT and cannot reach each
other's Ray ports, so ``use_overlay: false`` with workers is refused in one line on every road (``skyward-ray
validate``, ``ray up``'s bootstrap, the ``sky`` pool), before anything is rented; a single-node cluster without an
overlay stays allowed."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

import skyward_ray as sky
from skyward_ray.cli import main
from skyward_ray.errors import ConfigError
from skyward_ray.provider.bootstrap import validate
from skyward_ray.sky.spec import PoolSpec
from skyward_ray.sky.vast_config import render_cluster_config

REPO = Path(__file__).resolve().parents[3]
BASE = yaml.safe_load((REPO / "cluster_configs" / "vast-multinode.yaml").read_text())
REFUSED = ("provider.use_overlay: false is not allowed with workers (available_node_types.rtx4090.{key}: {count}): "
           "on Vast, instances on different machines sit behind NAT and cannot reach each other's Ray ports; "
           "allowed: use_overlay: true (the default), or no workers (max_workers: 0) for a single-node cluster")


def _config(*, max_workers: int = 3, min_workers: int = 3, cluster_max: int = 3) -> dict[str, Any]:
    config = copy.deepcopy(BASE)
    config["provider"]["use_overlay"] = False
    config["max_workers"] = cluster_max
    config["available_node_types"]["rtx4090"].update(min_workers=min_workers, max_workers=max_workers)
    return config


SHAPES = {
    "min and max workers": ({"max_workers": 3, "min_workers": 3}, "max_workers", 3),
    "max_workers only (autoscaled)": ({"max_workers": 2, "min_workers": 0}, "max_workers", 2),
}


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize(("shape", "key", "count"), SHAPES.values(), ids=SHAPES.keys())
def test_validate_refuses_in_one_line_at_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 shape: dict[str, int], key: str, count: int) -> None:
    path = _write(tmp_path, _config(**shape))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "use_overlay" in text)
    assert f"{path}:{line}:3: " + REFUSED.format(key=key, count=count) in err


def test_validate_accepts_a_single_node_cluster_without_overlay(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, _config(max_workers=0, min_workers=0, cluster_max=0))
    assert main(["validate", str(path)]) == 0
    assert "no overlay" in capsys.readouterr().out


@pytest.fixture
def no_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should validation let the config through, bootstrap's I/O would hit a closed loopback port."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VAST_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("VAST_API_KEY", "not-a-real-key")
    import skyward_ray.provider.bootstrap as bootstrap

    monkeypatch.setattr(bootstrap, "VastClient", functools.partial(bootstrap.VastClient, retry_deadline_s=0,
                                                                   timeout_s=2))


@pytest.mark.parametrize(("shape", "key", "count"), SHAPES.values(), ids=SHAPES.keys())
def test_ray_up_bootstrap_refuses_before_any_io(no_io: None, shape: dict[str, int], key: str, count: int) -> None:
    from ray.autoscaler._private.commands import _bootstrap_config

    with pytest.raises(ConfigError) as caught:
        _bootstrap_config(_config(**shape), no_config_cache=True)
    assert str(caught.value) == REFUSED.format(key=key, count=count)


def test_ray_up_validation_accepts_a_single_node_cluster_without_overlay() -> None:
    provider, shapes = validate(_config(max_workers=0, min_workers=0, cluster_max=0))
    assert not provider.use_overlay and all(shape.max_workers == 0 for shape in shapes.values())


def test_the_sky_pool_refuses_before_anything_starts(no_io: None) -> None:
    pool = sky.ComputePool(provider=sky.VastAI(use_overlay=False), accelerator="RTX 4090", nodes=3)
    with pytest.raises(ConfigError) as caught, pool:
        pytest.fail("the pool started")
    assert str(caught.value) == (
        "use_overlay: False is not allowed with nodes=3: on Vast, instances on different machines sit behind NAT and "
        "cannot reach each other's Ray ports; allowed: sky.VastAI(use_overlay=True) (the default), or nodes=1")


def test_a_single_node_pool_without_overlay_is_allowed() -> None:
    spec = PoolSpec.build(provider=sky.VastAI(use_overlay=False), accelerator="RTX 4090", nodes=1)
    config = render_cluster_config(spec, cluster_name="sky-one", api_url="http://127.0.0.1:9", ssh_private_key="/k")
    assert config["provider"]["use_overlay"] is False and config["max_workers"] == 0
