"""Pending calls as Ray tasks pinned to a pool's ranked nodes, and remote failures re-raised as the user's own.

One Ray remote function per pool, ``@sky.compute`` function and node, built on first use: a trampoline that sets the
node context (:func:`skyward_ray.sky.node_context.call_on_node`) and is pinned to its node. A call then costs one
``.remote()`` with the user's own arguments, as raw Ray does.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import ray
from ray.exceptions import RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from skyward_ray.sky.node_context import InstanceInfo, NodeContext, call_on_node, pack_context
from skyward_ray.sky.nodes import NodeInfo
from skyward_ray.sky.pending import ComputeFunction, PendingCompute

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a node; attached as ``__cause__`` of the re-raised exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def unwrap_remote_error(error: BaseException) -> BaseException:
    """The user's exception behind a ``RayTaskError`` (original type), with the remote traceback as its cause (the
    way ``concurrent.futures.ProcessPoolExecutor`` reports one).

    Anything else (a Ray system error such as a dead node, or a cause Ray could not carry back) is returned as is.
    """
    if not isinstance(error, RayTaskError):
        return error
    cause = error.cause
    while isinstance(cause, RayTaskError) and cause.cause is not None:
        cause = cause.cause  # a task that itself awaited a failed task
    if not isinstance(cause, BaseException) or isinstance(cause, RayTaskError):
        return error
    # str() of a RayTaskError (also of the dual "RayTaskError(ValueError)" instances ray.get raises) is the remote
    # traceback headed by "ray::fn() (pid=..., ip=...)"; Ray colours the header for terminals.
    cause.__cause__ = RemoteTraceback("\n" + _ANSI.sub("", str(error)))
    return cause


def get(refs: Any) -> Any:
    """``ray.get`` that re-raises a remote failure as the user's own exception."""
    try:
        return ray.get(refs)
    except RayTaskError as error:
        user_error = unwrap_remote_error(error)
        if user_error is error:
            raise
        raise user_error from user_error.__cause__


def _make_remote(fn: Callable[..., Any], context: NodeContext) -> Any:
    # The node context is baked into the task rather than passed per call: on a loaded 2-core machine every extra
    # task argument costs about as much as all the rest of this shim (measured by benchmarks/bench_sky_overhead.py).
    def task(*args: Any, **kwargs: Any) -> Any:
        return call_on_node(context, fn, args, kwargs)

    # The function's own name shows in `ray list tasks` and the dashboard. Only the name is copied: a matching
    # __module__ would make cloudpickle look the task up by reference and find the user's ComputeFunction instead.
    task.__name__ = getattr(fn, "__name__", "task")
    task.__qualname__ = getattr(fn, "__qualname__", task.__name__)
    return ray.remote(max_retries=0)(task)


class Dispatcher:
    """Submits pending calls to a fixed list of ranked nodes. Thread-safe: several threads may submit at once.

    Broadcasts go to every node, everything else round-robin; each task is pinned to its node with
    ``NodeAffinitySchedulingStrategy(soft=False)``.
    A call asks for all of its node's GPUs, as the legacy did: the function sees every GPU of the node
    (``CUDA_VISIBLE_DEVICES``), and a GPU node runs one call at a time, like the legacy ``concurrency=1``. Calls are not
    retried (``max_retries=0``): an operator runs a call once, and a retry elsewhere would break a broadcast's ranks.

    Nothing here calls ``ray.cancel``: in Ray 2.60 a cancel that races a finishing task can abort the driver process
    (``Check failed: it != submissible_tasks_.end()``, ray-project/ray#54846; seen when a failed broadcast cancelled
    its siblings), which would skip the pool's teardown. So when one call of a group or broadcast fails, the others
    run to completion and their results are dropped (as ``asyncio.gather`` does).
    """

    def __init__(self, nodes: Sequence[NodeInfo], runtime_env: dict[str, Any] | None = None) -> None:
        if not nodes:
            raise ValueError("a pool needs at least one node")
        self.nodes = tuple(nodes)
        peers = tuple(node.ip for node in self.nodes)
        self._context = {
            (node.rank, broadcast): pack_context(InstanceInfo(node.rank, peers, node.gpus, broadcast))
            for node in self.nodes
            for broadcast in (False, True)
        }
        self._options = [self._node_options(node, runtime_env) for node in self.nodes]
        self._handles: dict[tuple[ComputeFunction[..., Any], int, bool], Any] = {}
        self._lock = threading.Lock()
        self._next_rank = 0

    @staticmethod
    def _node_options(node: NodeInfo, runtime_env: dict[str, Any] | None) -> dict[str, Any]:
        options: dict[str, Any] = {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            "num_gpus": node.gpus,
            # A head started with num_cpus=0 still takes calls: they then reserve no CPU there.
            "num_cpus": 1 if node.cpus >= 1 else 0,
        }
        if runtime_env:
            options["runtime_env"] = runtime_env
        return options

    def _handle(self, fn: ComputeFunction[..., Any], rank: int, broadcast: bool) -> Any:
        key = (fn, rank, broadcast)
        handle = self._handles.get(key)
        if handle is None:
            with self._lock:
                handle = self._handles.get(key)
                if handle is None:
                    remote = _make_remote(fn.fn, self._context[rank, broadcast])
                    handle = self._handles[key] = remote.options(**self._options[rank])
        return handle

    def _submit(self, pending: PendingCompute[Any], rank: int, broadcast: bool) -> ray.ObjectRef:
        return self._handle(pending.fn, rank, broadcast).remote(*pending.args, **pending.kwargs)

    def _next_ranks(self, count: int) -> Iterator[int]:
        """``count`` consecutive ranks, round-robin; reserved at once so concurrent submitters never collide."""
        with self._lock:
            start, self._next_rank = self._next_rank, self._next_rank + count
        size = len(self.nodes)
        return ((start + offset) % size for offset in range(count))

    # --- the operators -----------------------------------------------------------------------------------------------

    def submit_refs(self, items: Sequence[PendingCompute[Any]]) -> list[ray.ObjectRef]:
        """Start every call (round-robin over the nodes) and return their refs in order."""
        return [self._submit(p, rank, False) for p, rank in zip(items, self._next_ranks(len(items)), strict=True)]

    def run(self, pending: PendingCompute[Any]) -> Any:
        return get(self.submit_refs([pending])[0])

    def broadcast(self, pending: PendingCompute[Any]) -> list[Any]:
        return get([self._submit(pending, node.rank, True) for node in self.nodes])

    def run_group(self, items: Sequence[PendingCompute[Any]], stream: bool = False) -> list[Any] | Iterator[Any]:
        refs = self.submit_refs(items)
        return _stream(refs) if stream else get(refs)

    def submit(self, pending: PendingCompute[Any]) -> Future[Any]:
        refs = self.submit_refs([pending])
        return _future(refs, lambda values: values[0])

    def submit_group(self, items: Sequence[PendingCompute[Any]]) -> Future[list[Any]]:
        return _future(self.submit_refs(items), list)


def _stream(refs: list[ray.ObjectRef]) -> Iterator[Any]:
    """Yield each value as its call finishes (completion order)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield get(done[0])


def _future(refs: list[ray.ObjectRef], combine: Callable[[list[Any]], Any]) -> Future[Any]:
    """A ``concurrent.futures.Future`` over ``refs``: the combined values, or the first failure (user's type).

    The future is *running* from the start, so ``cancel()`` returns False, as for any running call.
    """
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()
    values: list[Any] = [None] * len(refs)
    remaining = [len(refs)]
    lock = threading.Lock()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            try:
                setter(value)
            except Exception as error:  # InvalidStateError: another call of the group settled it first
                log.debug("future already settled: %s", error)

    def on_done(index: int, ray_future: Future[Any]) -> None:
        try:
            value = ray_future.result()
        except BaseException as error:
            settle(future.set_exception, unwrap_remote_error(error))
            return
        with lock:
            values[index] = value
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            settle(future.set_result, combine(values))

    for index, ref in enumerate(refs):
        ref.future().add_done_callback(lambda f, i=index: on_done(i, f))
    return future
