"""At interpreter exit, close every provider so its pending label writes reach Vast (``ray up`` ends right after its
last ``set_node_tags``), within ``EXIT_FLUSH_BUDGET_S`` in all; a warning names what an unreachable API kept back."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Protocol

log = logging.getLogger(__name__)

EXIT_FLUSH_BUDGET_S = 10.0  # at interpreter exit, all providers together wait at most this long for label writes


class Closable(Protocol):
    """What the exit flush needs of a provider."""

    cluster_name: str

    def close(self, timeout_s: float = ...) -> None: ...

    def unflushed_node_ids(self) -> list[str]: ...


_EXIT_FLUSH: weakref.WeakSet[Closable] = weakref.WeakSet()
_EXIT_LOCK = threading.Lock()


def register_exit_flush(provider: Closable) -> None:
    """Close ``provider`` at interpreter exit (held weakly: a provider dropped earlier is not kept alive)."""
    with _EXIT_LOCK:
        first = not _EXIT_FLUSH
        _EXIT_FLUSH.add(provider)
    if first:
        atexit.register(flush_all_at_exit)


def flush_all_at_exit(providers: Iterable[Closable] | None = None, budget_s: float = EXIT_FLUSH_BUDGET_S) -> None:
    """Close every provider (writing its pending labels) in parallel, within ``budget_s`` in all.

    An unreachable API must not hold the exit of ``ray up`` (or the head's monitor) for minutes of client retries:
    what is not written by then is named in a warning and left (the labels only lag; the next ``ray up`` writes the
    tags again). The closes run in daemon threads, so one still blocked in a call does not hold the interpreter."""
    deadline = time.monotonic() + budget_s
    closing: list[tuple[Closable, threading.Thread]] = []
    for provider in list(_EXIT_FLUSH if providers is None else providers):
        thread = threading.Thread(target=_close_quietly, args=(provider, budget_s), name="skyward-exit-flush",
                                  daemon=True)
        thread.start()
        closing.append((provider, thread))
    for _provider, thread in closing:
        thread.join(max(0.0, deadline - time.monotonic()))
    for provider, thread in closing:
        unflushed = provider.unflushed_node_ids()
        within = f" within {budget_s:g} s" if thread.is_alive() else ""
        if unflushed:
            log.warning("exit: the tags of Vast instance(s) %s of cluster %r were not written%s (is the Vast API "
                        "reachable?); their labels lag until the next write", ", ".join(unflushed),
                        provider.cluster_name, within)
        elif thread.is_alive():
            log.warning("exit: closing the provider of cluster %r did not end%s (a Vast call still in flight); "
                        "left behind", provider.cluster_name, within)


def _close_quietly(provider: Closable, timeout_s: float) -> None:
    try:
        provider.close(timeout_s)
    except Exception as exc:  # at exit there is no caller to raise to; the warning after the join names the nodes
        log.debug("closing the provider of cluster %r at exit failed: %s", provider.cluster_name, type(exc).__name__)
