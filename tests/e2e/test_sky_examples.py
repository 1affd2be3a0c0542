"""Every example runs to its printed result against a local 4-node Ray cluster it attaches to via RAY_ADDRESS.

(On the Vast emulator, with launching, they run unchanged: tests/e2e/test_sky_vast.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyward_ray as sky
from skyward_ray.sky.spec import PoolSpec

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A 4-node local cluster this process starts but does not connect to: the examples are the drivers."""
    launcher = sky.LocalLauncher(nodes=4)
    handle = launcher.up(PoolSpec(nodes=4))
    try:
        yield handle.address
    finally:
        launcher.down()


def run_example(name: str, address: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if address:
        env["RAY_ADDRESS"] = address
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / name)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_configuration_snippets_are_all_valid() -> None:
    assert run_example("configuration.py", None).rstrip().endswith("all seed configurations are valid")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("basic_usage.py", "hello from "),
        ("single_node_training.py", "Training result: {'loss': "),
        ("batch_processing.py", "Processed 10 batches"),
        ("production_inference.py", "Predictions: [{'input': 'hello'"),
        ("ray_remote_on_ray_up.py", "sum of squares: 1240 (expected 1240)"),
    ],
)
def test_example_prints_its_result(address: str, name: str, expected: str) -> None:
    assert expected in run_example(name, address)


def test_multi_node_example_all_reduces_across_every_rank(address: str) -> None:
    output = run_example("multi_node_distributed.py", address)
    assert [line for line in output.splitlines() if line.startswith("Node ")] == [
        f"Node {rank}/4 completed" for rank in range(4)
    ]
    assert "all-reduce sum on every node: [10.0, 10.0, 10.0, 10.0] (expected 10.0, backend gloo)" in output


def test_lower_layers_import_without_ray_or_the_sky_api() -> None:
    """The sky names are lazy, so the Vast client, placement and the emulator stay free of Ray."""
    probe = (
        "import sys, skyward_ray, skyward_ray.vast.models, skyward_ray.placement.options;"
        "print(sorted(m for m in ('ray', 'skyward_ray.sky') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == "[]"
