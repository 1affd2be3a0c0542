"""``skyward-ray validate`` checks offline what it can (GPU names with the closest ones, regions) and says which
checks need the market."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from skyward_ray.cli import main
from skyward_ray.demo import CLUSTER_CONFIG

REPO = Path(__file__).resolve().parents[3]
CONFIG = CLUSTER_CONFIG


def variant(tmp_path: Path, change: Any) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    change(config)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def worker_gpu(name: str) -> Any:
    return lambda c: c["available_node_types"]["rtx4090"]["node_config"].update(accelerator=name)


def test_an_unknown_gpu_name_is_refused_with_the_closest_names_at_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = variant(tmp_path, worker_gpu("RTX 4091"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "RTX 4091" in text)
    assert f"{path}:{line}:" in err
    assert "available_node_types.rtx4090.node_config.accelerator: 'RTX 4091' is not a GPU name" in err
    assert "closest: 'RTX 4090'" in err and "--allow-unknown-gpu" in err


def test_allow_unknown_gpu_lets_a_newer_gpu_through(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = variant(tmp_path, worker_gpu("RTX 6090"))
    assert main(["validate", "--allow-unknown-gpu", str(path)]) == 0
    assert "1 x RTX 6090" in capsys.readouterr().out


def test_a_region_name_is_checked_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = variant(tmp_path, lambda c: c["provider"].update(geolocation="Narnia"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "provider.geolocation: 'Narnia' is not allowed" in err and "two-letter country code" in err


def test_mixed_gpu_models_are_valid_and_the_market_checks_are_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = variant(tmp_path, worker_gpu("A100"))  # no rule forbids two GPU models on one physical cluster
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {path}: ")
    market = out.strip().splitlines()[-1]
    assert market.startswith("Not checked offline (they need the market; `skyward-ray offers` asks it):")
    assert "one physical cluster" in market and "max_hourly_cost" in market


def test_the_shipped_configs_pass(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in [*(REPO / "cluster_configs").glob("*.yaml"), CLUSTER_CONFIG])
    assert main(["validate", *files]) == 0
    assert capsys.readouterr().out.count("\nOK ") + 1 == len(files)
