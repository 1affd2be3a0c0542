"""Writes nodes' tags to their Vast labels: a background thread flushes what ``set_node_tags`` changed after
``tag_flush_delay_s`` (so a node's setup writes coalesce), and :meth:`TagFlusher.flush_pending` retries until every
label is written when the process is about to end."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from skyward_ray.provider.config import VastProviderConfig
from skyward_ray.provider.records import ProviderState
from skyward_ray.provider.tags import encode_label
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import NotFoundError, VastError

log = logging.getLogger(__name__)

FLUSH_RETRY_S = 0.25  # between label writes retried before the process ends


class TagFlusher:
    """The label writer of one provider: its thread starts at the first change (when threads are wanted)."""

    def __init__(self, state: ProviderState, config: VastProviderConfig, cluster_name: str, *,
                 client: Callable[[], VastClient], clock: Callable[[], float], closing: threading.Event,
                 start_threads: bool) -> None:
        self._state = state
        self._config = config
        self._cluster_name = cluster_name
        self._client = client
        self._clock = clock
        self._closing = closing
        self._start_threads = start_threads
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Some node's tags changed: have them written after the flush delay."""
        with self._state.lock:
            if self._thread is None and self._start_threads:
                self._thread = threading.Thread(target=self._loop, name="skyward-tag-flush", daemon=True)
                self._thread.start()
        self._wanted.set()

    def _loop(self) -> None:
        while not self._closing.is_set():
            self._wanted.wait()
            if self._closing.wait(self._config.tag_flush_delay_s):
                return
            self._wanted.clear()
            if not self.flush():
                self._closing.wait(self._config.cache_ttl_s)  # the API failed: back off before the retry

    def flush(self) -> bool:
        """Write every pending label now (one request per changed node). False if some write failed."""
        state = self._state
        with state.lock:
            batch = {
                node_id: encode_label(self._cluster_name, state.nodes[node_id].tags)
                for node_id in state.dirty
                if node_id in state.nodes and not state.nodes[node_id].terminated
            }
            state.dirty.clear()
            state.writing.update(batch)
        ok = True
        for node_id, label in batch.items():
            try:
                self._client().set_label(int(node_id), label)
            except NotFoundError:
                pass  # destroyed meanwhile
            except VastError as exc:
                log.warning("writing the tags of Vast instance %s failed (retrying): %s", node_id, exc)
                ok = False
                with state.lock:
                    state.dirty.add(node_id)
                self._wanted.set()
            finally:
                with state.lock:
                    state.writing.discard(node_id)
                    state.written_at[node_id] = self._clock()
        return ok

    def unflushed(self) -> list[str]:
        """Nodes whose latest tags have not reached Vast yet (pending or in flight)."""
        with self._state.lock:
            return sorted(self._state.dirty | self._state.writing, key=lambda node_id: (len(node_id), node_id))

    def flush_pending(self, timeout_s: float) -> bool:
        """Write every pending label, waiting for writes in flight and retrying failed ones, for up to ``timeout_s``.

        One failed write (a 5xx, a 429) must not leave Vast with stale tags when the process is about to end: the
        next monitor rebuilds its nodes from the labels alone. True when Vast has the latest tags of every node."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):
                self.flush()
            remaining = deadline - time.monotonic()
            if not self.unflushed():
                return True
            if remaining <= 0:
                return False
            time.sleep(min(FLUSH_RETRY_S, remaining))  # a write in flight elsewhere, or a failed one to retry

    def stop(self, timeout_s: float) -> None:
        """End the flush thread (the caller has set ``closing``), waiting up to ``timeout_s`` for a write in it."""
        self._wanted.set()
        with self._state.lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
