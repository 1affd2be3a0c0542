"""``@sky.compute`` and the operators: a call is a value until an operator sends it to a pool.

``fn(x)`` on a ``@sky.compute`` function returns a :class:`PendingCompute`; ``>>``, ``@``, ``>`` and ``&`` (or
``sky.gather``) send it to ``sky`` (the innermost active pool) or to a pool object, any :class:`Target`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload, runtime_checkable

from skyward_ray.sky.active_pool import current_pool

P = ParamSpec("P")
T = TypeVar("T")


@runtime_checkable
class Target(Protocol):
    """What an operator needs from a pool. :class:`~skyward_ray.sky.pool.ComputePool` implements it."""

    def run(self, pending: PendingCompute[T]) -> T: ...

    def broadcast(self, pending: PendingCompute[T]) -> list[T]: ...

    def submit(self, pending: PendingCompute[T]) -> Future[T]: ...

    def run_group(self, items: tuple[PendingCompute[Any], ...], stream: bool = False) -> Any: ...

    def submit_group(self, items: tuple[PendingCompute[Any], ...]) -> Future[list[Any]]: ...


def resolve_target(target: object) -> Target:
    """``sky`` (the package module) -> the innermost active pool; a pool -> itself; anything else -> ``TypeError``."""
    if isinstance(target, ModuleType):
        if target.__name__.partition(".")[0] == __name__.partition(".")[0]:
            return cast(Target, current_pool())
    elif isinstance(target, Target):
        return target
    raise TypeError(
        f"cannot send a pending call to {target!r}: the target must be `sky` (the skyward_ray module, inside a pool) "
        "or a ComputePool"
    )


class ComputeFunction(Generic[P, T]):
    """A function whose calls are deferred: ``f(*a)`` returns a :class:`PendingCompute` instead of running.

    It holds no Ray state (each pool builds its own per-node tasks), so it pickles as the plain function it wraps.
    """

    def __init__(self, fn: Callable[P, T]) -> None:
        if isinstance(fn, ComputeFunction):
            fn = fn.fn
        if not callable(fn):
            raise TypeError(f"@sky.compute needs a function, got {fn!r}")
        self.fn: Callable[P, T] = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> PendingCompute[T]:
        return PendingCompute(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<sky.compute {getattr(self.fn, '__qualname__', self.fn)!r}>"


@overload
def compute(fn: Callable[P, T], /) -> ComputeFunction[P, T]: ...
@overload
def compute() -> Callable[[Callable[P, T]], ComputeFunction[P, T]]: ...
def compute(fn: Callable[P, T] | None = None, /) -> Any:
    """Decorator: calling the function returns a pending call; an operator (``>> sky``, ``@ sky``...) runs it."""
    if fn is None:
        return ComputeFunction
    return ComputeFunction(fn)


# 0.6+ spelling of the same decorator.
function = compute


@dataclass(frozen=True, eq=False, slots=True)
class PendingCompute(Generic[T]):
    """One deferred call. Immutable; applying an operator to it more than once runs it more than once.

    ==================  ====================================================================
    ``p >> target``     run on one node of the pool (round-robin), block, return the value
    ``p @ target``      run once on every node, return the values as a list in node-rank order
    ``p > target``      start it, return a ``concurrent.futures.Future``
    ``p & q``           a :class:`PendingComputeGroup`; ``group >> target`` runs all concurrently, list in order
    ``sky.gather(...)`` the same group; ``stream=True`` makes ``>>`` yield values as they finish
    ==================  ====================================================================

    Groups return a **list**, as ``sky.gather`` always did. The legacy returned a tuple for ``&`` groups; unpacking
    (``a, b = (p & q) >> sky``), indexing and iteration behave the same, only ``== (x, y)`` differs.
    """

    fn: ComputeFunction[..., T]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __rshift__(self, target: object) -> T:
        return resolve_target(target).run(self)

    def __matmul__(self, target: object) -> list[T]:
        return resolve_target(target).broadcast(self)

    def __gt__(self, target: object) -> Future[T]:
        return resolve_target(target).submit(self)

    def __and__(self, other: PendingCompute[Any] | PendingComputeGroup) -> PendingComputeGroup:
        if isinstance(other, PendingComputeGroup):
            return PendingComputeGroup((self, *other.items), other.stream)
        if isinstance(other, PendingCompute):
            return PendingComputeGroup((self, other))
        return NotImplemented

    def __repr__(self) -> str:
        name = getattr(self.fn.fn, "__qualname__", self.fn)
        return f"PendingCompute({name}, args={self.args!r}, kwargs={dict(self.kwargs)!r})"


@dataclass(frozen=True, eq=False, slots=True)
class PendingComputeGroup:
    """Several pending calls that run concurrently; ``>>`` returns their values in order (or streams them)."""

    items: tuple[PendingCompute[Any], ...]
    stream: bool = False

    def __rshift__(self, target: object) -> list[Any] | Iterator[Any]:
        return resolve_target(target).run_group(self.items, self.stream)

    def __gt__(self, target: object) -> Future[list[Any]]:
        if self.stream:
            raise TypeError("a streaming group yields values as they finish; use `>>`, not `>`")
        return resolve_target(target).submit_group(self.items)

    def __matmul__(self, target: object) -> Any:
        raise TypeError("broadcast (`@`) takes one pending call, not a group; broadcast each call or gather with `>>`")

    def __and__(self, other: PendingCompute[Any] | PendingComputeGroup) -> PendingComputeGroup:
        if isinstance(other, PendingComputeGroup):
            return PendingComputeGroup((*self.items, *other.items), self.stream or other.stream)
        if isinstance(other, PendingCompute):
            return PendingComputeGroup((*self.items, other), self.stream)
        return NotImplemented

    def __len__(self) -> int:
        return len(self.items)


def gather(*pendings: PendingCompute[Any] | Iterable[PendingCompute[Any]], stream: bool = False) -> PendingComputeGroup:
    """Group pending calls to run concurrently: ``sky.gather(a, b) >> sky`` or ``sky.gather(f(i) for i in xs) >> sky``.

    Arguments may be pending calls or iterables of them (a generator works). With ``stream=True``, ``>>``
    returns an iterator that yields each value as its call finishes (completion order).
    """
    items: list[PendingCompute[Any]] = []
    for arg in pendings:
        if isinstance(arg, PendingCompute):
            items.append(arg)
        elif isinstance(arg, PendingComputeGroup):
            items.extend(arg.items)
        elif isinstance(arg, Iterable) and not isinstance(arg, str | bytes | Mapping):
            for item in arg:
                if not isinstance(item, PendingCompute):
                    raise TypeError(f"sky.gather takes pending calls (from @sky.compute functions), got {item!r}")
                items.append(item)
        else:
            raise TypeError(f"sky.gather takes pending calls (from @sky.compute functions), got {arg!r}")
    return PendingComputeGroup(tuple(items), stream)
