"""Where a call runs: :class:`InstanceInfo` (rank, peers, GPUs), set on the worker around each pool call.

:func:`call_on_node` is the trampoline every pool task runs in a Ray worker process; :func:`instance_info` reads the
context it sets (``None`` on the driver and outside pool calls).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from skyward_ray.sky.netif import interface_for_ip

# The default torch rendezvous port on rank 0, as the legacy ``head_port``.
HEAD_PORT = 29500


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """Where a call runs: this node's rank among the pool's nodes and how to reach the others.

    ``peers`` are the nodes' Ray node IPs in rank order; on Vast, Ray runs on the overlay IP, so these are the overlay
    addresses that NCCL/Gloo must use. The field names follow the legacy ``InstanceInfo`` (``node``, ``total_nodes``,
    ``head_addr``, ``head_port``) so code written for it keeps working.
    """

    node: int
    peers: tuple[str, ...]
    accelerators: int = 0
    broadcast: bool = False
    head_port: int = HEAD_PORT

    @property
    def rank(self) -> int:
        return self.node

    @property
    def total_nodes(self) -> int:
        return len(self.peers)

    @property
    def head_addr(self) -> str:
        return self.peers[0]

    @property
    def is_head(self) -> bool:
        return self.node == 0

    @property
    def ip(self) -> str:
        """This node's address (the one Ray runs on)."""
        return self.peers[self.node]

    @property
    def interface(self) -> str | None:
        """The network interface that carries :attr:`ip` on this node (the overlay interface on Vast)."""
        return _cached_interface(self.ip)


@lru_cache(maxsize=16)
def _cached_interface(ip: str) -> str | None:
    return interface_for_ip(ip)


_node: ContextVar[InstanceInfo | None] = ContextVar("skyward_ray_node", default=None)


def instance_info() -> InstanceInfo | None:
    """This node's :class:`InstanceInfo` inside a pool call; ``None`` anywhere else (as the legacy API)."""
    return _node.get()


# What travels with every call: (rank, peers, GPUs of the node, part of a broadcast). Plain values, because Ray
# serialises those with msgpack; a dataclass would go through pickle and cost about 10% more per tiny call.
NodeContext = tuple[int, tuple[str, ...], int, bool]


def pack_context(info: InstanceInfo) -> NodeContext:
    """``info`` as the plain tuple a task carries."""
    return (info.node, info.peers, info.accelerators, info.broadcast)


def call_on_node(context: NodeContext, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``fn`` with ``context`` as the node context. Module-level so the task closure pickles it by reference."""
    rank, peers, accelerators, broadcast = context
    token = _node.set(InstanceInfo(rank, tuple(peers), accelerators, broadcast))
    try:
        return fn(*args, **kwargs)
    finally:
        _node.reset(token)
