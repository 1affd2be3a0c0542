"""Pending calls and operators, without Ray: what builds a call, what runs it, and where ``sky`` points."""

from __future__ import annotations

import re
import threading
from concurrent.futures import Future
from typing import Any

import pytest
from ray import cloudpickle

import skyward_ray as sky
from skyward_ray.sky.active_pool import NO_ACTIVE_POOL, current_pool, pop_pool, push_pool
from skyward_ray.sky.pending import ComputeFunction, PendingCompute, PendingComputeGroup, Target

calls: list[Any] = []


@sky.compute
def record(x: int, *, y: int = 0) -> int:
    """Adds, and records that it ran."""
    calls.append((x, y))
    return x + y


class FakePool:
    """A Target that runs calls in-process and logs which operator reached it."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def run(self, pending: PendingCompute[Any]) -> Any:
        self.log.append("run")
        return pending.fn.fn(*pending.args, **pending.kwargs)

    def broadcast(self, pending: PendingCompute[Any]) -> list[Any]:
        self.log.append("broadcast")
        return [pending.fn.fn(*pending.args, **pending.kwargs)] * 2

    def submit(self, pending: PendingCompute[Any]) -> Future[Any]:
        self.log.append("submit")
        future: Future[Any] = Future()
        future.set_result(self.run(pending))
        return future

    def run_group(self, items: tuple[PendingCompute[Any], ...], stream: bool = False) -> Any:
        self.log.append(f"group(stream={stream})")
        values = [p.fn.fn(*p.args, **p.kwargs) for p in items]
        return iter(values) if stream else values

    def submit_group(self, items: tuple[PendingCompute[Any], ...]) -> Future[list[Any]]:
        self.log.append("submit_group")
        future: Future[list[Any]] = Future()
        future.set_result(self.run_group(items))
        return future


@pytest.fixture
def fake() -> Any:
    pool = FakePool()
    token = push_pool(pool)
    try:
        yield pool
    finally:
        pop_pool(pool, token)


def test_calling_builds_a_frozen_pending_call_and_runs_nothing() -> None:
    calls.clear()
    pending = record(1, y=2)
    assert isinstance(pending, PendingCompute)
    assert pending.args == (1,) and dict(pending.kwargs) == {"y": 2}
    assert calls == []
    with pytest.raises(AttributeError):
        pending.args = (5,)  # type: ignore[misc]


def test_decorator_keeps_the_functions_identity() -> None:
    assert isinstance(record, ComputeFunction)
    assert record.__name__ == "record" and record.__doc__ == "Adds, and records that it ran."
    assert sky.function is sky.compute
    assert sky.compute()(record.fn).fn is record.fn  # the called form
    assert ComputeFunction(record).fn is record.fn  # stacking @sky.compute twice is harmless
    with pytest.raises(TypeError, match="needs a function"):
        sky.compute(42)  # type: ignore[call-overload]


def test_compute_function_pickles_for_ray() -> None:
    clone = cloudpickle.loads(cloudpickle.dumps(record))
    assert clone.fn(2, y=3) == 5


def test_operators_on_sky_reach_the_innermost_pool(fake: FakePool) -> None:
    assert record(1, y=2) >> sky == 3
    assert record(2) @ sky == [2, 2]
    future = record(3) > sky
    assert isinstance(future, Future) and future.result() == 3
    assert fake.log == ["run", "broadcast", "submit", "run"]


def test_groups_keep_order_and_concatenate(fake: FakePool) -> None:
    a, b, c, d = record(1), record(2), record(3), record(4)
    assert isinstance(a & b, PendingComputeGroup)
    assert (a & b) >> sky == [1, 2]
    assert (a & (b & c)) >> sky == [1, 2, 3]
    assert ((a & b) & (c & d)) >> sky == [1, 2, 3, 4]
    assert ((a & b) & c) >> sky == [1, 2, 3]
    assert len(a & b & c) == 3


def test_gather_accepts_calls_iterables_and_groups(fake: FakePool) -> None:
    assert sky.gather(record(i) for i in range(3)) >> sky == [0, 1, 2]  # a generator of calls
    assert sky.gather(record(0), [record(1), record(2)], record(3) & record(4)) >> sky == [0, 1, 2, 3, 4]
    assert sky.gather() >> sky == []
    streamed = sky.gather(record(5), record(6), stream=True) >> sky
    assert not isinstance(streamed, list) and list(streamed) == [5, 6]
    assert (sky.gather(record(1), record(2)) > sky).result() == [1, 2]
    assert "group(stream=True)" in fake.log and "submit_group" in fake.log


@pytest.mark.parametrize("bad", [42, "abc", [record(1), 3], {"a": record(1)}])
def test_gather_rejects_what_is_not_a_pending_call(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"sky\.gather takes pending calls"):
        sky.gather(bad)


def test_group_operators_that_make_no_sense_say_so(fake: FakePool) -> None:
    with pytest.raises(TypeError, match="broadcast"):
        (record(1) & record(2)) @ sky
    with pytest.raises(TypeError, match="streaming group"):
        sky.gather(record(1), stream=True) > sky  # noqa: B015
    with pytest.raises(TypeError):
        record(1) & 5  # type: ignore[operator]


def test_outside_a_pool_sky_is_the_seeds_error() -> None:
    with pytest.raises(RuntimeError, match=re.escape(NO_ACTIVE_POOL)):
        record(1) >> sky
    with pytest.raises(RuntimeError, match=re.escape(NO_ACTIVE_POOL)):
        record(1) @ sky
    with pytest.raises(RuntimeError, match=re.escape(NO_ACTIVE_POOL)):
        sky.gather(record(1)) >> sky


@pytest.mark.parametrize("target", [re, object(), 3, "sky"])
def test_anything_else_as_target_is_a_type_error(target: object) -> None:
    with pytest.raises(TypeError, match="must be `sky`"):
        record(1) >> target


def test_a_pool_object_is_a_target_without_being_active() -> None:
    pool = FakePool()
    assert isinstance(pool, Target)
    assert record(4) >> pool == 4
    assert record(4) @ pool == [4, 4]
    assert (record(1) & record(2)) >> pool == [1, 2]


def test_nested_pools_resolve_innermost_and_unwind() -> None:
    outer, inner = FakePool(), FakePool()
    outer_token = push_pool(outer)
    inner_token = push_pool(inner)
    assert current_pool() is inner
    pop_pool(inner, inner_token)
    assert current_pool() is outer
    pop_pool(outer, outer_token)
    with pytest.raises(RuntimeError):
        current_pool()


def test_threads_use_the_only_active_pool_but_refuse_to_guess_between_two() -> None:
    first, second = FakePool(), FakePool()
    results: list[Any] = []

    def from_thread() -> None:
        try:
            results.append(current_pool())
        except RuntimeError as error:
            results.append(error)

    token = push_pool(first)
    try:
        thread = threading.Thread(target=from_thread)
        thread.start()
        thread.join(10)
        assert results[-1] is first
        token2 = push_pool(second)
        try:
            thread = threading.Thread(target=from_thread)
            thread.start()
            thread.join(10)
            assert isinstance(results[-1], RuntimeError)
        finally:
            pop_pool(second, token2)
    finally:
        pop_pool(first, token)


def test_public_names_stay_themselves_after_every_subpackage_import() -> None:
    import importlib
    import pkgutil
    import types

    import skyward_ray.sky

    for module in pkgutil.walk_packages(skyward_ray.sky.__path__, "skyward_ray.sky."):
        importlib.import_module(module.name)
    pending_module = importlib.import_module("skyward_ray.sky.pending")
    assert sky.compute is pending_module.compute
    from skyward_ray import compute as imported

    assert imported is pending_module.compute
    assert {"compute", "pool", "gather", "ComputePool", "VastAI"} <= set(dir(sky))
    modules = {name for name in sky.__all__ if isinstance(getattr(sky, name), types.ModuleType)}
    assert modules == {"integrations"}
    with pytest.raises(AttributeError):
        _ = sky.no_such_name  # type: ignore[attr-defined]


def test_functions_that_use_sky_pickle_for_ray() -> None:
    def uses_sky() -> object:
        return sky.instance_info()

    assert cloudpickle.loads(cloudpickle.dumps(uses_sky))() is None
    assert cloudpickle.loads(cloudpickle.dumps(sky)) is sky
