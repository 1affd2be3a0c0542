"""The provider's view of the cluster: one list of the account's instances per ``cache_ttl_s``, made behind Ray's tick
by one background thread (only a process's first list runs in the caller and raises), plus at most one GET for a node
the list lacks. Every getter of the provider reads it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from skyward_ray.provider.config import VastProviderConfig
from skyward_ray.provider.list_stamp import ListStamp
from skyward_ray.provider.merge import SnapshotMerge
from skyward_ray.provider.records import Action, NodeRecord, ProviderState
from skyward_ray.provider.tags import TAG_RENTAL, decode_label, is_cluster_label
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import ProtocolError, VastError
from skyward_ray.vast.models import Instance

log = logging.getLogger(__name__)

# While Ray waits on a booting node, the snapshot is refreshed this often: twice the list's documented interval, so the
# delays of a loaded machine never bring two lists of a process closer than Vast allows.
PENDING_REFRESH_S = 2.0


class Snapshot:
    """When to list, how to list, and the node getter every read of the provider goes through."""

    def __init__(self, state: ProviderState, config: VastProviderConfig, cluster_name: str, *,
                 client: Callable[[], VastClient], list_stamp: Callable[[], ListStamp | None], merge: SnapshotMerge,
                 dispatch: Callable[[list[Action]], None], clock: Callable[[], float], closing: threading.Event,
                 start_threads: bool) -> None:
        self._state = state
        self._config = config
        self._cluster_name = cluster_name
        self._client = client
        self._list_stamp = list_stamp
        self._merge = merge
        self._clock = clock
        self._closing = closing
        self._start_threads = start_threads
        self._dispatch = dispatch  # hands the verdicts' API calls to the background pool
        self._refresh_lock = threading.Lock()  # makes concurrent refreshes share one list; guards no state
        self._next_refresh_at: float | None = None  # None: never listed
        self._listed = False  # one list has succeeded: from then on the tick never waits on a list
        self._refreshing = False  # a background refresh is running (one at a time)
        self._last_list_started: float | None = None
        self._last_list_failed = False
        # "unpaged" until the server shows it lacks that list; one str swapped once (no lock: a racing list at worst
        # asks the old way once more)
        self.list_source = config.instance_list

    # --- listing ---------------------------------------------------------------------------------------------------

    def refresh_quietly(self, *, force: bool = False, unless_listed_after: float | None = None) -> None:
        """:meth:`refresh` with a failed list logged and the last snapshot kept."""
        try:
            self.refresh(force=force, unless_listed_after=unless_listed_after)
        except VastError as exc:
            log.warning("Vast instance list failed, serving the last snapshot: %s", exc)

    def refresh(self, *, force: bool = False, unless_listed_after: float | None = None) -> None:
        """One list (if still due once the refresh lock is ours); raises the list's VastError. A forced refresh
        decided at ``unless_listed_after`` is dropped when another list began after that (while we waited)."""
        if not force and self._fresh():
            return
        state = self._state
        with self._refresh_lock:
            if not force and self._fresh():
                return  # another thread refreshed while we waited
            with state.lock:
                last = self._last_list_started
            if unless_listed_after is not None and last is not None and last > unless_listed_after:
                return
            started = self._clock()
            with state.lock:
                self._last_list_started = started
            try:
                instances = self.list_account()
            except VastError:
                with state.lock:  # try again after one TTL instead of hammering a failing API
                    self._next_refresh_at = started + self._config.cache_ttl_s
                    self._last_list_failed = True
                raise
            with state.lock:
                actions = self._merge.apply(instances, started, self._clock())
                self._next_refresh_at = started + self._config.cache_ttl_s
                self._listed = True
                self._last_list_failed = False
        self._dispatch(actions)

    def list_account(self) -> list[Instance]:
        """Every instance of the account, the cheapest documented way.

        ``unpaged``: the legacy ``GET /api/v0/instances/``, one call whatever the number of instances; the paged
        ``GET /api/v1/instances/`` takes one call per 25 rows at one call per second. When the unpaged list is not
        served (404 without Vast's error body, 405, 410) or answers in another shape, the paged list is used from
        then on."""
        client = self._client()
        stamp = self._list_stamp()
        if stamp is not None:
            stamp.wait_turn()
        if self.list_source == "unpaged":
            try:
                return client.list_instances_v0()
            except VastError as exc:
                if not unpaged_list_missing(exc):
                    raise
                log.warning("the unpaged instance list (GET /api/v0/instances/) is not served (%s): listing with "
                            "the paged GET /api/v1/instances/ from now on", exc)
                self.list_source = "paged"
        return client.list_instances()

    def _fresh(self) -> bool:
        with self._state.lock:
            return self._next_refresh_at is not None and self._clock() < self._next_refresh_at

    # --- serving the tick ------------------------------------------------------------------------------------------

    def current(self) -> None:
        """What Ray's tick and every getter call: never waits on a list, except for the first.

        Until one list has succeeded the process knows nothing, and answering "no nodes" would let a freshly started
        monitor (or ``ray up``) rent a second head or duplicate workers: so the first list is made in the caller's
        thread and its failure raised. After that a stale snapshot is served while one background thread lists."""
        with self._state.lock:
            listed = self._listed
        if not listed:
            self.refresh()
            return
        self.refresh_behind()

    def refresh_behind(self, *, waiting: bool = False) -> None:
        """Start a refresh in the background when the snapshot is due (one refresher at a time; never waits).

        Due after ``cache_ttl_s``; for a caller ``waiting`` on a node to come up (Ray's updater polling a booting
        node), after ``PENDING_REFRESH_S`` since the last list began, so a node that runs after 2 s is not seen 4 s
        later. That is one list call per 2 s at most, half the list's limit; after a failed list, one TTL."""
        with self._state.lock:
            now = self._clock()
            if waiting and self._last_list_started is not None and not self._last_list_failed:
                due_at = self._last_list_started + min(PENDING_REFRESH_S, self._config.cache_ttl_s)
            else:
                due_at = self._next_refresh_at if self._next_refresh_at is not None else now
            if now < due_at or self._refreshing or self._closing.is_set():
                return
            self._refreshing = True
            inline = not self._start_threads
        if inline:  # no threads wanted (tests with a fake clock): refresh in the caller, deterministically
            self._background_refresh(now)
            return
        try:
            threading.Thread(target=self._background_refresh, args=(now,), name="skyward-refresh",
                             daemon=True).start()
        except BaseException:
            with self._state.lock:
                self._refreshing = False
            raise

    def _background_refresh(self, decided_at: float) -> None:
        try:
            # Due already (decided under the lock at decided_at), unless a blocking refresh began since.
            self.refresh_quietly(force=True, unless_listed_after=decided_at)
        except Exception:  # a bug must not end the refresher silently for good: the next tick starts another
            log.exception("refreshing the Vast instance snapshot failed")
        finally:
            with self._state.lock:
                self._refreshing = False

    # --- one node --------------------------------------------------------------------------------------------------

    def node(self, node_id: str) -> NodeRecord | None:
        """The node from the snapshot, or after one GET for an id the snapshot lacks (never more than one per absence).

        Never waits on a list once one has succeeded: a node that is not ready yet only starts a background refresh
        when the snapshot is due, and its caller (Ray's updater polls) sees the result at its next look. Ready nodes
        never cause a refresh, so a steady tick still costs one list per TTL."""
        state = self._state
        with state.lock:
            listed = self._listed
            node = state.nodes.get(node_id)
            pending = node is not None and not node.terminated and not node.ready
        if not listed:
            self.refresh_quietly()  # the first list (a failure is logged; the GET below still answers for this id)
        elif pending:
            self.refresh_behind(waiting=True)
        with state.lock:
            node = state.nodes.get(node_id)
            if node is not None or node_id in state.looked_up:
                return node
            state.looked_up.add(node_id)
        return self.lookup(node_id)

    def lookup(self, node_id: str) -> NodeRecord | None:
        """One ``GET /instances/{id}/``: adopt the instance if it is ours, forget it if it is gone."""
        if not node_id.isdigit():
            return None
        state = self._state
        try:
            instance = self._client().get_instance(int(node_id))
        except VastError as exc:
            log.warning("Vast lookup of instance %s failed: %s", node_id, exc)
            with state.lock:
                return state.nodes.get(node_id)
        with state.lock:
            decoded = decode_label(instance.label) if instance is not None else None
            nonce = decoded[1].get(TAG_RENTAL) if decoded else None
            if instance is None or not is_cluster_label(instance.label, self._cluster_name) or (
                nonce in state.ghost_nonces or nonce in state.inflight
            ):
                if instance is None:
                    state.forget(node_id)
                return state.nodes.get(node_id)
            node = state.nodes.get(node_id)
            if node is None:
                now = self._clock()
                node = state.nodes[node_id] = NodeRecord(node_id, decoded[1] if decoded else {}, instance,
                                                         first_seen=now, status_since=now,
                                                         machine_id=instance.machine_id)
            else:
                node.instance = instance
            return node


def unpaged_list_missing(exc: VastError) -> bool:
    """Whether an error of the unpaged list says the server does not serve it (rather than that it failed now): a
    404 or 410 without Vast's error code (a route that is gone), a 405, or a body of another shape."""
    if isinstance(exc, ProtocolError):
        return True
    return (exc.status in (404, 410) and exc.error_code is None) or exc.status == 405
