"""Which pool ``>> sky`` means: a per-context stack of entered pools, with a process-wide fallback for new threads.

A ``ContextVar`` gives nested ``with`` blocks and concurrent asyncio tasks their own innermost pool. A new thread starts
with an empty context; when exactly one pool is active in the whole process it gets that one, else the "No active pool"
error rather than a guess. Entries are opaque here: :mod:`skyward_ray.sky.pending` knows what it sends calls to.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token

NO_ACTIVE_POOL = "No active pool. Use within a @pool decorated function or 'with pool(...):' block."

_active: ContextVar[tuple[object, ...]] = ContextVar("skyward_ray_active_pools", default=())
_process_pools: list[object] = []
_process_lock = threading.Lock()


def push_pool(pool: object) -> Token[tuple[object, ...]]:
    """Make ``pool`` the innermost active pool; returns the token :func:`pop_pool` needs."""
    with _process_lock:
        _process_pools.append(pool)
    return _active.set((*_active.get(), pool))


def pop_pool(pool: object, token: Token[tuple[object, ...]]) -> None:
    """Undo :func:`push_pool`. Tolerates a token from another context (an exit on a different task)."""
    try:
        _active.reset(token)
    except ValueError:
        _active.set(tuple(p for p in _active.get() if p is not pool))
    with _process_lock:
        if pool in _process_pools:
            _process_pools.remove(pool)


def current_pool() -> object:
    """The innermost active pool, or ``RuntimeError`` with :data:`NO_ACTIVE_POOL`."""
    stack = _active.get()
    if stack:
        return stack[-1]
    with _process_lock:
        if len(_process_pools) == 1:
            return _process_pools[0]
    raise RuntimeError(NO_ACTIVE_POOL)
