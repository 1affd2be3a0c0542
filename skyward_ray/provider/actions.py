"""Carries out the calls the health verdicts decided (destroy, re-bid, look up) in a small background pool, so Ray's
tick never waits on them; a failed call is logged and decided again at a later refresh."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from skyward_ray.provider.records import Action, ProviderState
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import VastError

log = logging.getLogger(__name__)


class ActionRunner:
    """The background pool of the provider's API calls (started at the first call, shut down by :meth:`close`)."""

    def __init__(self, state: ProviderState, client: Callable[[], VastClient], lookup: Callable[[str], object]) -> None:
        self._state = state
        self._client = client
        self._lookup = lookup
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="skyward-vast")
            return self._pool

    def dispatch(self, actions: list[Action]) -> None:
        if actions:
            pool = self.pool()
            for action in actions:
                pool.submit(self.perform, action)

    def perform(self, action: Action) -> None:
        try:
            if action.kind == "destroy":
                try:
                    self._client().destroy_instance(int(action.node_id))
                except VastError:
                    self._state.destroy_ended([action.node_id], ok=False)
                    raise
                self._state.destroy_ended([action.node_id], ok=True)
            elif action.kind == "rebid":
                assert action.price is not None
                self._client().change_bid(int(action.node_id), action.price)
            elif action.kind == "lookup":
                self._lookup(action.node_id)
        except VastError as exc:
            log.warning("Vast %s of instance %s failed (retried on a later refresh): %s", action.kind,
                        action.node_id, exc)
        except Exception:
            log.exception("Vast %s of instance %s failed", action.kind, action.node_id)
            if action.kind == "destroy":
                self._state.destroy_ended([action.node_id], ok=False)

    def close(self) -> None:
        """Wait for the calls in flight, then stop the pool."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=False)
