"""Node ranking, the node context, the torch environment, remote-error unwrapping and interface lookup; no Ray."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest
from ray.exceptions import RayTaskError

import skyward_ray as sky
from skyward_ray.errors import ConfigError
from skyward_ray.sky import netif, node_context
from skyward_ray.sky.dispatch import RemoteTraceback, unwrap_remote_error
from skyward_ray.sky.integrations.pytorch import distributed_env
from skyward_ray.sky.node_context import InstanceInfo, call_on_node, instance_info
from skyward_ray.sky.nodes import NodesUnavailableError, rank_nodes, wait_for_nodes

HEAD = {"node:__internal_head__": 1.0, "CPU": 4.0}


def node(node_id: str, ip: str, alive: bool = True, **resources: float) -> dict[str, Any]:
    return {"NodeID": node_id, "NodeManagerAddress": ip, "Alive": alive, "Resources": {"CPU": 1.0, **resources}}


def test_rank_zero_is_the_head_then_ips_in_numeric_order() -> None:
    raw = [
        node("c", "10.0.0.10", GPU=2),
        node("h", "10.0.0.50") | {"Resources": HEAD},
        node("a", "10.0.0.9"),
        node("dead", "10.0.0.1", alive=False),
        node("b2", "10.0.0.9"),
    ]
    ranked = rank_nodes(raw)
    assert [(n.rank, n.node_id, n.ip) for n in ranked] == [
        (0, "h", "10.0.0.50"), (1, "a", "10.0.0.9"), (2, "b2", "10.0.0.9"), (3, "c", "10.0.0.10"),
    ]
    assert ranked[0].is_head and ranked[3].gpus == 2 and ranked[0].cpus == 4.0


def test_wait_for_nodes_polls_until_enough_and_returns_the_first_n() -> None:
    views = [[node("h", "10.0.0.2") | {"Resources": HEAD}], [node("h", "10.0.0.2") | {"Resources": HEAD},
             node("w2", "10.0.0.4"), node("w1", "10.0.0.3")]]
    now = [0.0]
    nodes = wait_for_nodes(2, lambda: views[0] if now[0] < 1 else views[1], timeout_s=10,
                           clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert [n.ip for n in nodes] == ["10.0.0.2", "10.0.0.3"]


def test_wait_for_nodes_times_out_with_what_it_saw() -> None:
    now = [0.0]
    with pytest.raises(NodesUnavailableError, match=r"nodes=3 but the Ray cluster has 1 alive node.*10\.0\.0\.2"):
        wait_for_nodes(3, lambda: [node("h", "10.0.0.2") | {"Resources": HEAD}], timeout_s=5,
                       clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert now[0] >= 5


def test_instance_info_is_set_only_during_a_call() -> None:
    assert sky.instance_info() is None
    seen: list[InstanceInfo | None] = []
    call_on_node((1, ["10.8.0.2", "10.8.0.3"], 2, True), lambda: seen.append(instance_info()), (), {})
    info = seen[0]
    assert info is not None and sky.instance_info() is None
    assert (info.rank, info.node, info.total_nodes, info.head_addr, info.head_port) == (1, 1, 2, "10.8.0.2", 29500)
    assert info.peers == ("10.8.0.2", "10.8.0.3") and info.ip == "10.8.0.3"
    assert info.accelerators == 2 and info.broadcast and not info.is_head


def test_torch_environment_points_every_rank_at_rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_context, "interface_for_ip", lambda ip: "eth0")
    node_context._cached_interface.cache_clear()
    info = InstanceInfo(2, ("10.8.0.2", "10.8.0.3", "10.8.0.4"), broadcast=True)
    try:
        assert distributed_env(info) == {
            "MASTER_ADDR": "10.8.0.2", "MASTER_PORT": "29500", "RANK": "2", "NODE_RANK": "2", "WORLD_SIZE": "3",
            "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0",
        }
    finally:
        node_context._cached_interface.cache_clear()


def test_torch_integration_leaves_calls_outside_a_broadcast_alone() -> None:
    @sky.integrations.torch
    def bare() -> str | None:
        return os.environ.get("MASTER_ADDR")

    @sky.integrations.torch("gloo")
    def configured() -> str | None:
        return os.environ.get("MASTER_ADDR")

    assert bare() is None and configured() is None  # on the driver
    single = (0, ["10.8.0.2", "10.8.0.3"], 0, False)
    assert call_on_node(single, configured, (), {}) is None  # a `>>` call: no peers to rendezvous with


@pytest.mark.parametrize(("args", "kwargs"), [((), {"backend": "gloo"}), (("gloo",), {})],
                         ids=["keyword (the legacy spelling)", "positional"])
def test_torch_integration_hands_the_chosen_backend_to_init_process_group(
    args: tuple[Any, ...], kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(node_context, "interface_for_ip", lambda ip: "lo")
    node_context._cached_interface.cache_clear()
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append(("destroyed", {})))

    @sky.integrations.torch(*args, **kwargs)
    def world() -> str | None:
        return os.environ.get("WORLD_SIZE")

    try:
        assert call_on_node((1, ["10.8.0.2", "10.8.0.3"], 0, True), world, (), {}) == "2"
    finally:
        node_context._cached_interface.cache_clear()
    assert [c[0] for c in calls] == ["gloo", "destroyed"]
    assert calls[0][1]["rank"] == 1 and calls[0][1]["world_size"] == 2


@pytest.mark.parametrize(("args", "kwargs", "field"), [(("nccl2",), {}, "backend"),
                                                      ((), {"backend": "nccl2"}, "backend"),
                                                      (("gloo",), {"backend": "nccl"}, "given twice"),
                                                      ((), {"master_port": 0}, "port"),
                                                      ((), {"timeout_s": 0}, "timeout"),
                                                      ((), {"timeout_s": "10"}, "timeout")])
def test_torch_integration_rejects_bad_options(args: tuple[Any, ...], kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        sky.integrations.torch(*args, **kwargs)


class CustomError(Exception):
    pass


def test_remote_errors_come_back_as_the_users_type_with_the_remote_traceback() -> None:
    remote_text = 'Traceback (most recent call last):\n  File "job.py", line 3, in f\n    raise CustomError("x")'
    wrapped = RayTaskError("f", remote_text, CustomError("bad input"), pid=42, ip="10.8.0.3")
    for error in (wrapped, wrapped.as_instanceof_cause()):
        user_error = unwrap_remote_error(error)
        assert type(user_error) is CustomError and str(user_error) == "bad input"
        assert isinstance(user_error.__cause__, RemoteTraceback)
        assert 'raise CustomError("x")' in str(user_error.__cause__)
        assert "\x1b[" not in str(user_error.__cause__)


def test_errors_that_are_not_task_failures_pass_through() -> None:
    plain = TimeoutError("slow")
    assert unwrap_remote_error(plain) is plain


def test_interface_lookup_finds_loopback_and_reads_the_route_table() -> None:
    assert netif.interface_for_ip("127.0.0.2") == "lo"
    assert netif.interface_for_ip("not an ip") is None
    table = (
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"  # default route via a gateway: ignored
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"  # 172.17.0.0/16
        "eth1\t0000080A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"  # 10.8.0.0/24
        "eth2\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n"  # 10.0.0.0/8
    )
    if netif.struct.pack("=I", 1) != netif.struct.pack("<I", 1):
        pytest.skip("the sample table is in little-endian host order")
    lookup = netif._route_interface
    assert lookup(ipaddress.IPv4Address("10.8.0.7"), table) == "eth1"  # the most specific route wins
    assert lookup(ipaddress.IPv4Address("10.9.0.7"), table) == "eth2"
    assert lookup(ipaddress.IPv4Address("172.17.0.2"), table) == "docker0"
    assert lookup(ipaddress.IPv4Address("192.0.2.9"), table) is None
