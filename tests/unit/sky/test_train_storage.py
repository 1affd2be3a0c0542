"""The storage check for Ray Train on bids: which runs it refuses, what its one line says, and where it reads bids.

Ray Train's configs are built for real where they matter (``ray.train.RunConfig``/``ScalingConfig``, a pyarrow
filesystem), so a rename on Ray's side fails here rather than on a cluster.
"""

from __future__ import annotations

import queue
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
import ray.train as ray_train
import yaml

from skyward_ray.errors import ConfigError, SkywardError
from skyward_ray.placement.options import Allocation
from skyward_ray.sky.integrations.train import (
    allocations,
    cluster_on_bids,
    require_shared_storage,
    storage_problem,
    wait_for_checkpoint_taken,
)

REPO = Path(__file__).resolve().parents[3]


def configs(storage_path: str | None = None, filesystem: object = None, workers: int = 2) -> tuple[object, object]:
    return (ray_train.RunConfig(storage_path=storage_path, storage_filesystem=filesystem),
            ray_train.ScalingConfig(num_workers=workers))


@pytest.mark.parametrize("storage_path", [None, "/data/ray_results", "file:///tmp/x", "local:///tmp/x", "relative/dir"])
def test_multi_node_run_on_bids_without_shared_storage_is_one_clear_line(storage_path: str | None) -> None:
    run, scaling = configs(storage_path)
    with pytest.raises(ConfigError) as caught:
        require_shared_storage(run, scaling, on_bids=True)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("RunConfig.storage_path: ")
    assert (repr(storage_path) in message) if storage_path else "not set (Ray's default, ~/ray_results" in message
    assert "2-worker" in message and "bid" in message
    assert 'storage_path="s3://' in message and "endpoint_override" in message and "storage_filesystem" in message
    assert isinstance(caught.value, SkywardError), "the CLI and ray submit print it as one Error: line"


def test_rays_own_default_reads_as_not_set() -> None:
    run, scaling = ray_train.RunConfig(), ray_train.ScalingConfig(num_workers=3)
    assert run.storage_path, "Ray fills in ~/ray_results itself"
    with pytest.raises(ConfigError, match=r"^RunConfig.storage_path: not set \(Ray's default, ~/ray_results"):
        require_shared_storage(run, scaling, on_bids=True)


def test_a_local_pyarrow_filesystem_is_refused_too() -> None:
    run, scaling = configs("/data", pafs.LocalFileSystem())
    with pytest.raises(ConfigError, match=r"^RunConfig.storage_filesystem: a local filesystem is not allowed"):
        require_shared_storage(run, scaling, on_bids=True)


@pytest.mark.parametrize("storage_path", ["s3://bucket/prefix", "s3://b/p?endpoint_override=http://10.1.0.1:5000",
                                          "gs://bucket/x", "abfss://c@acct.dfs.core.windows.net/x", "hdfs://nn/x"])
def test_remote_storage_passes(storage_path: str) -> None:
    run, scaling = configs(storage_path)
    require_shared_storage(run, scaling, on_bids=True)


def test_a_remote_filesystem_passes_whatever_the_path() -> None:
    remote = pafs.S3FileSystem(endpoint_override="http://127.0.0.1:1", access_key="a", secret_key="b")
    run, scaling = configs("bucket/prefix", remote)
    require_shared_storage(run, scaling, on_bids=True)


@pytest.mark.parametrize(("workers", "on_bids"), [(1, True), (2, False), (8, False)])
def test_one_worker_or_no_bids_needs_no_shared_storage(workers: int, on_bids: bool) -> None:
    run, scaling = configs(None, workers=workers)
    require_shared_storage(run, scaling, on_bids=on_bids)


def test_elastic_worker_range_counts_its_upper_end() -> None:
    assert storage_problem(None, None, num_workers=1, on_bids=True) is None
    scaling = SimpleNamespace(num_workers=(1, 4))
    with pytest.raises(ConfigError, match="4-worker"):
        require_shared_storage(SimpleNamespace(storage_path=None, storage_filesystem=None), scaling, on_bids=True)


def _write(tmp_path: Path, node_types: dict[str, object]) -> Path:
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump({"head_node_type": "head", "available_node_types": node_types}))
    return path


def test_bids_are_read_from_the_heads_cluster_config(tmp_path: Path) -> None:
    head = {"node_config": {"accelerator": "RTX 4090", "allocation": "on-demand"}, "max_workers": 0}
    bids = _write(tmp_path, {"head": head, "w": {"node_config": {"accelerator": "RTX 4090"}, "max_workers": 2}})
    assert cluster_on_bids(bids) is True, "a worker without allocation bids (spot-if-available)"
    run, scaling = configs(None)
    with pytest.raises(ConfigError):
        require_shared_storage(run, scaling, cluster_config=bids)

    on_demand = _write(tmp_path, {"head": head, "w": {"node_config": {"allocation": "on_demand"}, "max_workers": 2}})
    assert cluster_on_bids(on_demand) is False
    require_shared_storage(run, scaling, cluster_config=on_demand)

    unused = _write(tmp_path, {"head": head, "w": {"node_config": {"allocation": "spot"}, "max_workers": 0}})
    assert cluster_on_bids(unused) is False, "a worker type that never rents cannot be outbid"

    assert cluster_on_bids(tmp_path / "missing.yaml") is None
    require_shared_storage(run, scaling, cluster_config=tmp_path / "missing.yaml")  # cannot judge: no refusal


def test_a_head_without_allocation_is_on_demand_and_a_bad_allocation_names_its_field() -> None:
    found = allocations({"head_node_type": "h", "available_node_types": {"h": {"node_config": {}}}})
    assert found == {"h": Allocation.ON_DEMAND}
    with pytest.raises(ConfigError, match=r"^available_node_types.w.node_config.allocation: 'cheap' is not allowed"):
        allocations({"head_node_type": "h", "available_node_types": {"w": {"node_config": {"allocation": "cheap"}}}})


@pytest.mark.parametrize("name", ["emulator-train.yaml", "vast-train.yaml"])
def test_the_train_cluster_configs_rent_bid_workers(name: str) -> None:
    config = yaml.safe_load((REPO / "cluster_configs" / name).read_text())
    found = allocations(config)
    assert found[config["head_node_type"]] is Allocation.ON_DEMAND, "the driver and Train's controller live there"
    assert cluster_on_bids(REPO / "cluster_configs" / name) is True
    assert config["available_node_types"][config["head_node_type"]]["resources"]["CPU"] == 0, "no Train worker"
    assert "~/.aws/credentials" in config["file_mounts"], "the bucket's key reaches every node as a file"


class _FakeContext:
    def __init__(self, results: queue.Queue[object]) -> None:
        self._results = results

    def get_result_queue(self) -> queue.Queue[object]:
        return self._results


def test_wait_for_checkpoint_taken_returns_once_the_controller_took_the_report(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from ray.train.v2._internal.execution import context as train_context

    results: queue.Queue[object] = queue.Queue(maxsize=1)
    results.put("report")
    monkeypatch.setattr(train_context, "get_train_context", lambda: _FakeContext(results))
    assert wait_for_checkpoint_taken(timeout_s=0.2, poll_s=0.01) is False, "not taken: bounded, then False"

    def controller_poll() -> None:
        results.get_nowait()
        results.task_done()

    timer = threading.Timer(0.1, controller_poll)
    timer.start()
    try:
        assert wait_for_checkpoint_taken(timeout_s=10, poll_s=0.01) is True
    finally:
        timer.join()


def test_wait_for_checkpoint_taken_outside_a_train_worker_returns_at_once() -> None:
    import time

    started = time.monotonic()
    assert wait_for_checkpoint_taken(timeout_s=30) is False
    assert time.monotonic() - started < 5, "no Train context: no wait"
