"""Which pool ``>> sky`` means on the driver, and which node a call runs on inside a task.

Two pieces of ambient state, both kept here so nothing else touches globals:

- the **active pool**: a ``ContextVar`` holding the stack of pools entered in this context, so nested ``with`` blocks
  and concurrent asyncio tasks each see their own innermost pool. A new thread starts with an empty context; when
  exactly one pool is active in the whole process, that thread falls back to it (a thread pool inside a ``@sky.pool``
  function just works), and otherwise gets the seed's "No active pool" error rather than a guess.
- the **node context**: the :class:`InstanceInfo` of the call running in this worker process, set by the task
  trampoline for the duration of the call and read by :func:`instance_info` (``None`` on the driver).
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from skyward_ray.sky.netif import interface_for_ip

if TYPE_CHECKING:
    from skyward_ray.sky.pool import ComputePool

NO_ACTIVE_POOL = "No active pool. Use within a @pool decorated function or 'with pool(...):' block."

# The default torch rendezvous port on rank 0, as the legacy ``head_port``.
HEAD_PORT = 29500

_active: ContextVar[tuple[ComputePool, ...]] = ContextVar("skyward_ray_active_pools", default=())
_process_pools: list[ComputePool] = []
_process_lock = threading.Lock()


def push_pool(pool: ComputePool) -> Any:
    """Make ``pool`` the innermost active pool; returns the token :func:`pop_pool` needs."""
    with _process_lock:
        _process_pools.append(pool)
    return _active.set((*_active.get(), pool))


def pop_pool(pool: ComputePool, token: Any) -> None:
    """Undo :func:`push_pool`. Tolerates a token from another context (an exit on a different task)."""
    try:
        _active.reset(token)
    except ValueError:
        _active.set(tuple(p for p in _active.get() if p is not pool))
    with _process_lock:
        if pool in _process_pools:
            _process_pools.remove(pool)


def current_pool() -> ComputePool:
    """The innermost active pool, or ``RuntimeError`` with the seed's message."""
    stack = _active.get()
    if stack:
        return stack[-1]
    with _process_lock:
        if len(_process_pools) == 1:
            return _process_pools[0]
    raise RuntimeError(NO_ACTIVE_POOL)


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """Where a call runs: this node's rank among the pool's nodes and how to reach the others.

    ``peers`` are the nodes' Ray node IPs in rank order; on Vast, Ray runs on the overlay IP, so these are the overlay
    addresses that NCCL/Gloo must use. The field names follow the legacy ``InstanceInfo`` (``node``, ``total_nodes``,
    ``head_addr``, ``head_port``) so seed-era code keeps working.
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


def node_context(info: InstanceInfo) -> NodeContext:
    return (info.node, info.peers, info.accelerators, info.broadcast)


def call_on_node(context: NodeContext, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``fn`` with ``context`` as the node context. Module-level so the task closure pickles it by reference."""
    rank, peers, accelerators, broadcast = context
    token = _node.set(InstanceInfo(rank, tuple(peers), accelerators, broadcast))
    try:
        return fn(*args, **kwargs)
    finally:
        _node.reset(token)
