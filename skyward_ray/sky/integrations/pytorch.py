"""``sky.integrations.torch(backend=None)``: one torch.distributed process group per broadcast.

On each node of a ``fn(...) @ sky`` broadcast, the ``env://`` variables point at rank 0's Ray node IP (the overlay IP on
Vast), then ``init_process_group`` runs around ``fn``. One process per node, as the legacy integration.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

from skyward_ray.errors import ConfigError
from skyward_ray.sky.node_context import HEAD_PORT, InstanceInfo, instance_info

P = ParamSpec("P")
T = TypeVar("T")

_BACKENDS = ("nccl", "gloo", "mpi", "ucc")


def distributed_env(info: InstanceInfo, master_port: int = HEAD_PORT) -> dict[str, str]:
    """The environment of rank ``info.node`` in a world of ``info.total_nodes`` processes, one per node."""
    env = {
        "MASTER_ADDR": info.head_addr,
        "MASTER_PORT": str(master_port),
        "RANK": str(info.node),
        "NODE_RANK": str(info.node),
        "WORLD_SIZE": str(info.total_nodes),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
    }
    interface = info.interface
    if interface:
        env["NCCL_SOCKET_IFNAME"] = interface
        env["GLOO_SOCKET_IFNAME"] = interface
    return env


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _decorate(fn: Callable[P, T], backend: str | None, master_port: int, timeout_s: float) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        info = instance_info()
        if info is None or not info.broadcast:
            return fn(*args, **kwargs)
        import torch
        import torch.distributed as dist

        if dist.is_initialized():
            return fn(*args, **kwargs)
        with _environment(distributed_env(info, master_port)):
            chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            dist.init_process_group(
                chosen, init_method="env://", rank=info.node, world_size=info.total_nodes,
                timeout=timedelta(seconds=timeout_s),
            )
            try:
                return fn(*args, **kwargs)
            finally:
                dist.destroy_process_group()

    return wrapper


@overload
def torch(fn: Callable[P, T], /) -> Callable[P, T]: ...
@overload
def torch(
    backend: str | None = None, /, *, master_port: int = HEAD_PORT, timeout_s: float = 600.0
) -> Callable[[Callable[P, T]], Callable[P, T]]: ...
@overload
def torch(
    *, backend: str | None = None, master_port: int = HEAD_PORT, timeout_s: float = 600.0
) -> Callable[[Callable[P, T]], Callable[P, T]]: ...
def torch(
    fn_or_backend: Any = None, /, *, backend: str | None = None, master_port: int = HEAD_PORT,
    timeout_s: float = 600.0,
) -> Any:
    """``@sky.integrations.torch()``, ``@sky.integrations.torch(backend="gloo")`` (the legacy spelling),
    ``@sky.integrations.torch("gloo")`` or bare ``@sky.integrations.torch``: a process group around each broadcast.

    Before ``fn`` runs it sets ``MASTER_ADDR``, ``MASTER_PORT`` (29500), ``RANK``, ``NODE_RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK`` (0), ``LOCAL_WORLD_SIZE`` (1), ``NCCL_SOCKET_IFNAME`` and ``GLOO_SOCKET_IFNAME`` (the interface
    holding this node's IP), calls ``init_process_group`` (``nccl`` when CUDA is available, else ``gloo``, unless
    ``backend`` says), runs ``fn``, destroys the group and restores the environment. Outside a broadcast it does
    nothing: a single ``>>`` call has no peers to rendezvous with, and calls made locally or with a process group
    already initialised run unchanged.
    """
    if callable(fn_or_backend):
        return _decorate(fn_or_backend, None, master_port, timeout_s)
    if fn_or_backend is not None:
        if backend is not None:
            raise ConfigError(f"torch.backend: given twice ({fn_or_backend!r} and backend={backend!r}); "
                              "allowed: one of them")
        backend = fn_or_backend
    if backend is not None and backend not in _BACKENDS:
        raise ConfigError(f"torch.backend: {backend!r} is not allowed; allowed: None (auto), {', '.join(_BACKENDS)}")
    if isinstance(master_port, bool) or not isinstance(master_port, int) or not 1 <= master_port <= 65535:
        raise ConfigError(f"torch.master_port: {master_port!r} is not allowed; allowed: a TCP port 1-65535")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0:
        raise ConfigError(f"torch.timeout_s: {timeout_s!r} is not allowed; allowed: seconds > 0")
    return lambda fn: _decorate(fn, backend, master_port, timeout_s)
