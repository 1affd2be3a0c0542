"""A pool's nodes and their ranks, read from Ray.

Rank 0 is the Ray head; the other alive nodes follow by Ray node IP compared as addresses (10.0.0.9 before 10.0.0.10),
then by node id. The order is stable for the pool's life and the same on every driver; on Vast it is overlay-address
order. A pool of ``nodes=N`` uses the first N nodes in this order.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from skyward_ray.errors import SkywardError

_HEAD_RESOURCE = "node:__internal_head__"


class NodesUnavailableError(SkywardError):
    """The cluster did not have the pool's nodes within the wait."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One Ray node of a pool, as the driver sees it."""

    rank: int
    node_id: str
    ip: str
    gpus: int
    cpus: float
    is_head: bool


def _ip_key(ip: str) -> tuple[int, int | str]:
    try:
        return (0, int(ipaddress.ip_address(ip)))
    except ValueError:
        return (1, ip)


def rank_nodes(raw_nodes: Sequence[dict[str, Any]]) -> list[NodeInfo]:
    """Alive nodes from ``ray.nodes()``-shaped records, ranked (see the module docstring)."""
    alive = [n for n in raw_nodes if n.get("Alive") or n.get("alive")]

    def key(node: dict[str, Any]) -> tuple[bool, tuple[int, int | str], str]:
        resources = node.get("Resources") or {}
        return (_HEAD_RESOURCE not in resources, _ip_key(str(node.get("NodeManagerAddress", ""))), str(node["NodeID"]))

    ranked = []
    for rank, node in enumerate(sorted(alive, key=key)):
        resources = node.get("Resources") or {}
        ranked.append(
            NodeInfo(
                rank=rank,
                node_id=str(node["NodeID"]),
                ip=str(node.get("NodeManagerAddress", "")),
                gpus=int(resources.get("GPU", 0)),
                cpus=float(resources.get("CPU", 0)),
                is_head=_HEAD_RESOURCE in resources,
            )
        )
    return ranked


def wait_for_nodes(
    count: int,
    list_nodes: Callable[[], Sequence[dict[str, Any]]],
    timeout_s: float,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[NodeInfo]:
    """The first ``count`` ranked nodes, polling ``list_nodes`` until that many are alive or ``timeout_s`` passes."""
    deadline = clock() + timeout_s
    while True:
        ranked = rank_nodes(list_nodes())
        if len(ranked) >= count:
            return ranked[:count]
        if clock() >= deadline:
            seen = ", ".join(f"{n.ip} (rank {n.rank})" for n in ranked) or "none"
            raise NodesUnavailableError(
                f"the pool needs nodes={count} but the Ray cluster has {len(ranked)} alive node(s) after "
                f"{timeout_s:g} s: {seen}. Start more nodes, or lower nodes= to at most {len(ranked)}."
            )
        sleep(poll_s)
