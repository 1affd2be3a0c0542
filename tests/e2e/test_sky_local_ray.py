"""The ``sky`` operators on a real Ray cluster of three local raylets (127.0.0.2-4), started once for the module.

Rank 2 advertises two logical GPUs, so GPU scheduling is visible (``CUDA_VISIBLE_DEVICES``) without GPUs.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import ray
from ray import cloudpickle

import skyward_ray as sky
from skyward_ray.sky.dispatch import RemoteTraceback
from skyward_ray.sky.nodes import NodesUnavailableError

NODE_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
# pytest imports this file as a top-level module the Ray workers cannot import; ship its classes by value instead.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.timeout(300)


class BoomError(Exception):
    """A user-defined exception type; it must come back as itself, not as a Ray wrapper."""


@sky.compute
def where(tag: object = None) -> dict[str, object]:
    info = sky.instance_info()
    return {
        "tag": tag,
        "ip": ray.util.get_node_ip_address(),
        "rank": info.rank if info else None,
        "peers": info.peers if info else None,
        "broadcast": info.broadcast if info else None,
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "env": os.environ.get("SKY_TEST_VAR"),
    }


@sky.compute
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@sky.compute
def add(a: int, b: int = 0) -> int:
    return a + b


@sky.compute
def fail(message: str) -> None:
    raise BoomError(message)


@sky.compute
def fail_on_rank(rank: int) -> int:
    info = sky.instance_info()
    assert info is not None
    if info.rank == rank:
        raise KeyError(f"rank {rank}")
    return info.rank


@pytest.fixture(scope="module")
def cluster() -> Iterator[sky.ComputePool]:
    """One 3-node local cluster for the whole module; the pool owns it and removes it at the end."""
    pool = sky.ComputePool(nodes=3, launcher=sky.LocalLauncher(gpus_per_node=[0, 0, 2]))
    pool.start()
    try:
        where() @ pool  # warm every node's worker once, so timings below measure scheduling, not process start
        yield pool
    finally:
        pool.stop()


def test_nodes_are_ranked_head_first_then_by_ip(cluster: sky.ComputePool) -> None:
    assert [n.ip for n in cluster.nodes] == NODE_IPS
    assert [n.rank for n in cluster.nodes] == [0, 1, 2]
    assert cluster.nodes[0].is_head and not any(n.is_head for n in cluster.nodes[1:])
    assert [n.gpus for n in cluster.nodes] == [0, 0, 2]


def test_rshift_returns_the_value_and_spreads_round_robin(cluster: sky.ComputePool) -> None:
    assert add(2, b=3) >> sky == 5
    ips = [(where(i) >> sky)["ip"] for i in range(6)]
    assert sorted(ips) == sorted(NODE_IPS * 2), ips  # every node got exactly two of six calls


def test_broadcast_runs_once_per_node_in_rank_order(cluster: sky.ComputePool) -> None:
    results = where("b") @ sky
    assert [r["ip"] for r in results] == NODE_IPS
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert all(r["broadcast"] and r["peers"] == tuple(NODE_IPS) for r in results)


def test_a_call_gets_all_of_its_nodes_gpus(cluster: sky.ComputePool) -> None:
    results = where() @ sky
    # Ray hides GPUs from GPU-less tasks (CUDA_VISIBLE_DEVICES="" or unset) and shows all of a node's to ours.
    assert [r["cuda"] or "" for r in results] == ["", "", "0,1"]


def test_gather_and_ampersand_return_lists_in_order(cluster: sky.ComputePool) -> None:
    assert sky.gather(*(add(i, 1) for i in range(7))) >> sky == [i + 1 for i in range(7)]
    assert sky.gather(add(i) for i in range(4)) >> sky == [0, 1, 2, 3]  # a generator of calls
    assert (add(1) & add(2) & add(3)) >> sky == [1, 2, 3]
    assert ((add(1) & add(2)) & (add(3) & add(4))) >> cluster == [1, 2, 3, 4]
    assert cluster.map(add, range(5)) == [0, 1, 2, 3, 4]


def test_gather_is_concurrent_across_nodes(cluster: sky.ComputePool) -> None:
    seconds = 2.0
    started = time.monotonic()
    assert sky.gather(*(nap(seconds) for _ in NODE_IPS)) >> sky == [seconds] * 3
    elapsed = time.monotonic() - started
    # Serial would be 6 s; concurrent is one task's time plus scheduling.
    assert elapsed < seconds * 1.75, elapsed


def test_gather_stream_yields_in_completion_order(cluster: sky.ComputePool) -> None:
    stream = sky.gather(nap(2.0), nap(0.1), nap(1.0), stream=True) >> sky
    assert not isinstance(stream, list)
    assert list(stream) == [0.1, 1.0, 2.0]


def test_gt_returns_a_future(cluster: sky.ComputePool) -> None:
    future = add(20, 22) > sky
    assert isinstance(future, Future)
    assert future.result(timeout=60) == 42
    group_future = sky.gather(add(1), add(2)) > cluster
    assert group_future.result(timeout=60) == [1, 2]


def test_future_carries_the_original_exception(cluster: sky.ComputePool) -> None:
    future = fail("from a future") > sky
    with pytest.raises(BoomError, match="from a future"):
        future.result(timeout=60)


def test_a_submitted_call_runs_to_completion(cluster: sky.ComputePool) -> None:
    # ray.cancel can abort the driver when it races a finishing task (Ray 2.60), so futures are running from the start.
    future = nap(0.5) > sky
    assert future.running()
    assert not future.cancel()
    assert future.result(timeout=60) == 0.5


def test_remote_exception_keeps_its_type_and_remote_traceback(cluster: sky.ComputePool) -> None:
    with pytest.raises(BoomError, match="kaboom") as caught:
        fail("kaboom") >> sky
    remote = caught.value.__cause__
    assert isinstance(remote, RemoteTraceback)
    assert "raise BoomError(message)" in str(remote)  # the line that raised, on the node
    assert "in fail" in str(remote)


def test_one_failing_node_fails_the_broadcast_with_its_error(cluster: sky.ComputePool) -> None:
    for _ in range(5):  # repeated: this once raced a sibling cancel into a Ray driver abort
        with pytest.raises(KeyError, match="rank 1"):
            fail_on_rank(1) @ sky


def test_a_failing_member_fails_the_gather(cluster: sky.ComputePool) -> None:
    with pytest.raises(BoomError, match="second"):
        sky.gather(add(1), fail("second"), add(3)) >> sky


def test_instance_info_is_none_on_the_driver(cluster: sky.ComputePool) -> None:
    assert sky.instance_info() is None
    single = where() >> sky
    assert single["rank"] in (0, 1, 2) and single["broadcast"] is False


def test_nested_attach_pool_is_innermost_and_leaves_the_cluster_running(cluster: sky.ComputePool) -> None:
    with sky.ComputePool(nodes=2, address=cluster.address) as inner:
        assert [r["ip"] for r in where() @ sky] == NODE_IPS[:2]  # `sky` is the innermost pool
        assert [r["ip"] for r in where() @ cluster] == NODE_IPS  # an explicit target still works
        assert inner.running
    assert not inner.running
    assert ray.is_initialized()  # the attach pool did not own the connection, so it left it open
    assert [r["ip"] for r in where() @ sky] == NODE_IPS


def test_pool_decorator_attaches_for_each_call(cluster: sky.ComputePool) -> None:
    @sky.pool(nodes=1, address=cluster.address)
    def main(x: int) -> list[dict[str, object]]:
        return where(x) @ sky

    assert [r["ip"] for r in main(1)] == NODE_IPS[:1]
    assert [r["tag"] for r in main(2)] == [2]


def test_image_env_reaches_every_call(cluster: sky.ComputePool) -> None:
    with sky.ComputePool(nodes=3, address=cluster.address, image=sky.Image(env={"SKY_TEST_VAR": "on"})):
        assert [r["env"] for r in where() @ sky] == ["on"] * 3
        assert (where() >> sky)["env"] == "on"
    assert (where() >> sky)["env"] is None  # the outer pool has no image env


def test_image_packages_already_present_are_skipped_with_a_log_line(
    cluster: sky.ComputePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="skyward_ray.sky.pool")
    with sky.ComputePool(nodes=2, address=cluster.address, image=sky.Image(pip=["pytest", "ray>=2"])):
        pass
    assert "pytest, ray>=2 already installed on all 2 node(s)" in caplog.text
    caplog.clear()
    with sky.ComputePool(nodes=1, address=cluster.address, image=sky.Image(pip=["surely-not-installed-pkg"])):
        assert add(1) >> sky == 1  # a missing package warns; it does not fail the pool
    assert "node rank 0 (127.0.0.2) lacks surely-not-installed-pkg" in caplog.text


def test_too_many_nodes_for_the_cluster_is_a_clear_error(cluster: sky.ComputePool) -> None:
    with pytest.raises(NodesUnavailableError, match="nodes=5 but the Ray cluster has 3 alive node"):
        sky.ComputePool(nodes=5, address=cluster.address, ready_timeout=1).start()


def test_threads_fall_back_to_the_only_active_pool(cluster: sky.ComputePool) -> None:
    with ThreadPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(lambda i: add(i, 100) >> sky, range(8)))
    assert results == [i + 100 for i in range(8)]


def test_concurrent_submitters_share_the_pool(cluster: sky.ComputePool) -> None:
    totals: list[int] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        values = sky.gather(*(add(offset, i) for i in range(5))) >> cluster
        with lock:
            totals.append(sum(values))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(totals) == sorted(5 * k + 10 for k in range(4))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        return int(sock.getsockname()[1])


def test_torch_gloo_all_reduce_across_two_nodes(cluster: sky.ComputePool) -> None:
    port = _free_port()

    @sky.compute
    @sky.integrations.torch(master_port=port, timeout_s=120)
    def all_reduce() -> dict[str, object]:
        import torch
        import torch.distributed as dist

        rank = dist.get_rank()
        tensor = torch.tensor([float(rank + 1)])
        dist.all_reduce(tensor)
        names = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "GLOO_SOCKET_IFNAME")
        return {
            "rank": rank,
            "world": dist.get_world_size(),
            "backend": dist.get_backend(),
            "sum": tensor.item(),
            "env": {name: os.environ.get(name) for name in names},
        }

    @sky.compute
    def after() -> tuple[bool, str | None]:
        import torch.distributed as dist

        return dist.is_initialized(), os.environ.get("MASTER_ADDR")

    with sky.ComputePool(nodes=2, address=cluster.address):
        results = all_reduce() @ sky
        assert after() @ sky == [(False, None), (False, None)]  # group destroyed, environment restored
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["sum"] == 3.0 and r["world"] == 2 and r["backend"] == "gloo" for r in results)
    for rank, result in enumerate(results):
        assert result["env"] == {
            "MASTER_ADDR": "127.0.0.2", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2",
            "LOCAL_RANK": "0", "GLOO_SOCKET_IFNAME": "lo",
        }
