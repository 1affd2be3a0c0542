"""``VastNodeProvider``: Ray's cluster launcher and autoscaler (v2 and v1) on Vast.ai.

Loaded by Ray with ``provider: {type: external, module: skyward_ray.provider.VastNodeProvider}``, on the laptop that
runs ``ray up`` and in the head's autoscaler. Node ids are Vast instance ids (as strings).

**One source of truth.** A node's tags live in its Vast label (:mod:`skyward_ray.provider.tags`). Both sides rebuild
the same state from one list of the account's instances per ``cache_ttl_s``: the unpaged ``GET /api/v0/instances/``,
one call whatever the number of nodes (the paged ``GET /api/v1/instances/`` takes one call per 25 rows at one call
per second, 20 s for 500 nodes, and serves only where the unpaged list is gone). Every per-node getter reads that
snapshot. A node this process just rented is visible at once with its tags; a node missing from the snapshot costs
at most one ``GET /instances/{id}/``. A labelled row the client could not parse is still a node (from its label), so
``ray down`` destroys it.

**The tick never waits on a list.** ``non_terminated_nodes`` and the getters serve the last snapshot; when it is due,
one background thread lists behind it (never two at once). Only the first list of a process is made in the caller's
thread, and its failure is raised: a freshly started monitor (or ``ray up``) that believed it had no nodes would rent
a second head or duplicate workers. A node rented or looked up after a list began is not dropped by that list.

**Overlay addresses come from the nodes.** Vast serves no overlay address (``local_ipaddrs`` holds host-side ones and
counts only when it holds one in the overlay subnet). A node is ready as soon as it runs with an SSH endpoint; its
address is read on the node at the first SSH contact (:mod:`skyward_ray.provider.command_runner`: over the public
endpoint from the laptop, by a search of the overlay from the head) and written to its label. No fixed wait.

**Thread safety.** Ray calls the provider from its main loop, launcher threads, updater threads and executors. All
state sits behind ``self._lock``, which is never held during an API call (or a sleep): methods copy what they need,
release it, do the I/O, then take it again to record the result. ``self._refresh_lock`` only makes concurrent
refreshes share one list call; it guards no state, and the tick never takes it.

**Tags.** ``set_node_tags`` changes memory at once and marks the node dirty; a background thread writes the labels
after ``tag_flush_delay_s`` (so the four writes of a node's setup coalesce), and at interpreter exit whatever is still
pending (within ``EXIT_FLUSH_BUDGET_S`` in all; a warning names what an unreachable API kept from being written). A
snapshot never overwrites tags with a label older than our own last write.

**Renting** (:meth:`create_node`, :meth:`create_node_with_resources_and_labels`): search, plan with
:mod:`skyward_ray.placement`, then rent the plan's offers. Vast accepts one rental per 4.5 s per account and address
(and refuses a burst with 429s and a 12 s penalty), so the rentals queue on the client's process-wide pacer and start
4.5 s apart: 16 nodes take about 70 s whatever we do. Meanwhile every accepted rental is a node at once (visible to
``non_terminated_nodes`` with its tags, so Ray's v2 autoscaler takes it before the batch ends), and a log line says
how far the batch is and when the next rental goes out. Searches are budgeted too (10 per minute): launches share
answers for ``search_ttl_s`` (:mod:`skyward_ray.provider.search_cache`). The head's creation picks the physical
cluster that can host the head plus the cluster's workers, and creates the overlay there; workers are searched on
that cluster and join the overlay. An account without overlays fails ``ray up`` in one line with Vast's answer and
nothing rented. A rental is never repeated after a 5xx or a timeout (its nonce is remembered, and an instance
carrying it is destroyed as a ghost); an offer taken by someone else moves on to the next offer; a failed create
that still names an instance destroys it. ``max_hourly_cost`` counts live nodes and rentals in flight.

**Keeping nodes honest** (on every refresh, in both processes): an outbid worker is destroyed and reported terminated
(policy ``replace``) or re-bid up to ``max_bid`` (``rebid``); a failed instance, one stuck loading past
``loading_timeout_s`` or one Ray cannot SSH into within ``ssh_timeout_s`` is destroyed and its machine avoided for
``avoid_machine_s`` (not forever: a machine may fail once, and a cluster confined to one physical cluster must not
run out of machines under a run of faults). The API calls those decisions need run in a background pool, never in
the tick.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import logging
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from click import ClickException
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_WAITING_FOR_SSH,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray.errors import ConfigError, SkywardError
from skyward_ray.placement import (
    DEFAULT_SEARCH_LIMIT,
    NodeAssignment,
    NodeGroup,
    NoPlacementError,
    PlacementRequest,
    Plan,
    build_queries,
    explain,
    plan,
)
from skyward_ray.placement.budget import with_fewer_workers
from skyward_ray.provider.command_runner import Endpoint, VastSSHCommandRunner
from skyward_ray.provider.config import (
    HEAD_KIND,
    InterruptedPolicy,
    VastNodeConfig,
    VastProviderConfig,
    overlay_name_for,
)
from skyward_ray.provider.list_stamp import ListStamp
from skyward_ray.provider.overlay_ip import SUBNET_ENV, interface_addresses
from skyward_ray.provider.search_cache import OfferCache
from skyward_ray.provider.tags import (
    MAX_CREATE_LABEL_LENGTH,
    TAG_OVERLAY_IP,
    TAG_OVERLAY_SUBNET,
    TAG_PHYSICAL_CLUSTER,
    TAG_RENTAL,
    decode_label,
    encode_label,
    is_cluster_label,
)
from skyward_ray.vast.client import CREATE_INSTANCE, VastClient
from skyward_ray.vast.credentials import resolve_api_key
from skyward_ray.vast.errors import NotFoundError, OfferGoneError, ProtocolError, VastError
from skyward_ray.vast.models import Instance, NodeState, Offer, Overlay, overlay_env_key, port_env_key
from skyward_ray.vast.pacing import identity_of

log = logging.getLogger(__name__)

# Environment each rented instance gets (never a secret: Vast shows env in its console).
CLUSTER_ENV = "SKYWARD_CLUSTER"
API_URL_ENV = "SKYWARD_VAST_URL"
INSTANCE_TIMEOUT_ENV = "SKYWARD_INSTANCE_TIMEOUT"
# Vast's SSH login attaches tmux unless this file exists; Ray's non-interactive SSH commands need a plain shell.
BASE_ONSTART = "touch ~/.no_auto_tmux"

RENT_ROUNDS = 3  # searches per launch when offers keep being taken by others
MISSING_GRACE_S = 60.0  # a rented node absent from lists this long is checked with one GET
DESTROY_RETRY_S = 30.0  # a terminated node still listed after this long is destroyed again
OVERLAY_POLL_S = 1.0
FLUSH_RETRY_S = 0.25  # between label writes retried before the process ends
# While Ray waits on a booting node, the snapshot is refreshed this often: twice the list's documented interval, so the
# delays of a loaded machine never bring two lists of a process closer than Vast allows.
PENDING_REFRESH_S = 2.0
UNPAGED_LIST = "GET /api/v0/instances/"
# The unpaged list documents no limit; its paged successor documents 1 s per call. We keep 1.5 s between two of ours:
# a loaded machine delays one request more than the next, and the server counts arrivals.
UNPAGED_LIST_INTERVAL_S = 1.5
CLAIM_TTL_S = 120.0  # an overlay address met on an instance this process does not know is skipped this long
OVERLAY_SEARCH_MAX = 1022  # addresses of an overlay subnet searched for a node (Vast's overlays are /24s)
EXIT_FLUSH_BUDGET_S = 10.0  # at interpreter exit, all providers together wait at most this long for label writes


class VastLaunchError(SkywardError):
    """A launch could not rent anything; the message says why (placement explanation or rental errors)."""


class NodeLaunchError(NodeLaunchException, ClickException):
    """What ``create_node`` raises: a NodeLaunchException for Ray's autoscalers (category + description), and a
    ClickException because ``ray up`` (a click app) lets the head's ``create_node`` errors escape: click then prints
    ``Error: <message>`` in one line instead of a traceback."""


@dataclass
class _Node:
    """What this process knows about one instance of the cluster."""

    node_id: str
    tags: dict[str, str]
    instance: Instance | None = None  # the latest wire view; None until a list or GET shows it
    first_seen: float = 0.0  # our clock: rental time, or when a list first showed it
    running_since: float | None = None  # our clock: first seen running with an SSH endpoint
    status_since: float = 0.0  # when ray-node-status last changed (the SSH deadline)
    machine_id: int | None = None
    price_per_hour: float | None = None
    terminated: bool = False
    destroy_sent_at: float | None = None
    destroying: bool = False  # a destroy call is in flight: no second one meanwhile
    destroyed: bool = False  # a destroy call succeeded: Vast stopped billing it
    rebids: int = 0
    state_known: bool = False  # some row of it had its status fields whole (a verdict needs them)

    @property
    def kind(self) -> str | None:
        return self.tags.get(TAG_RAY_NODE_KIND)

    @property
    def billed(self) -> bool:
        """Still costing money: until a destroy call succeeds (or a list no longer shows it), terminated or not."""
        return not self.destroyed

    @property
    def hourly_cost(self) -> float:
        if self.price_per_hour is not None:
            return self.price_per_hour
        return (self.instance.dph_total if self.instance else None) or 0.0


@dataclass(frozen=True)
class _Site:
    """Where a launch rents: a physical cluster and its overlay, or anywhere."""

    cluster_id: int | None = None
    overlay_name: str | None = None
    subnet: str | None = None


@dataclass
class _Outcome:
    created: list[str] = field(default_factory=list)
    gone: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Rental:
    """One node of a plan, reserved against the budget under ``nonce`` until its rental ends."""

    nonce: str
    assignment: NodeAssignment
    image: str


@dataclass(frozen=True)
class _Action:
    """An API call decided under the lock and made outside it."""

    kind: str  # "destroy", "rebid", "lookup"
    node_id: str
    price: float | None = None


class _Progress:
    """How far one launch is, told in log lines while the pacer spaces its rentals (the autoscaler's log on the head,
    ``ray up``'s output on the laptop): the expected time when it starts, then "k of N rented" and when the next
    rental goes out, after each one."""

    def __init__(self, provider: VastNodeProvider, group: str, total: int) -> None:
        self._provider = provider
        self._group = group
        self._total = total
        self._done = 0
        self._queued = 0
        self._lock = threading.Lock()

    def _pace(self) -> tuple[float, float, float]:
        """From the client's pacer: (seconds until a create booked now starts, seconds until the first create
        already queued starts, seconds between two creates). The queue holds every launch's rentals (Ray runs two
        launches at once), so a create booked now is also when the last queued one will have started."""
        client = self._provider.client
        try:
            status = client.pacing_status(CREATE_INSTANCE)
            limits = client.pace_limits
        except AttributeError:  # a client without a pacer (a test double)
            return 0.0, 0.0, 0.0
        step = limits.interval(str(CREATE_INSTANCE)) + limits.margin_s
        queued_first = max(0.0, status.next_slot_in_s - status.waiting * step) if status.waiting else \
            status.next_slot_in_s
        return status.next_slot_in_s, max(queued_first, status.closed_for_s), step

    def starting(self, rentals: int) -> None:
        with self._lock:
            self._queued += rentals
        new, _, step = self._pace()
        if rentals > 1 and step > 0:
            log.info("renting %d %s node(s): Vast accepts one rental every %.1f s per account, so the last should be "
                     "accepted in about %.0f s; each node is reported as soon as Vast accepts it", rentals,
                     self._group, step, new + (rentals - 1) * step)

    def accepted(self) -> None:
        with self._lock:
            self._done += 1
            done, queued = self._done, self._queued
        left = max(0, queued - done)
        if self._total <= 1:
            return
        if left == 0:
            log.info("rented %d of %d %s node(s)", done, self._total, self._group)
            return
        last, first, step = self._pace()
        log.info("rented %d of %d %s node(s); the next rental goes out in %.1f s, the %d left within about %.0f s",
                 done, self._total, self._group, first, left, max(last - step, first + (left - 1) * step))


class VastNodeProvider(NodeProvider):
    """Ray ``NodeProvider`` for Vast.ai. See the module docstring for the design; it is thread-safe."""

    def __init__(
        self,
        provider_config: dict[str, Any],
        cluster_name: str,
        *,
        client: VastClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        start_threads: bool = True,
    ) -> None:
        super().__init__(provider_config, cluster_name)
        self.config = VastProviderConfig.from_config(provider_config)
        self._clock = clock
        self._start_threads = start_threads
        self._client = client
        self._client_lock = threading.Lock()
        self._list_stamp: ListStamp | None = None  # set with a client this provider makes (not an injected one)
        self._overlay_name = self.config.overlay_name or overlay_name_for(cluster_name)

        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        self._next_refresh_at: float | None = None  # None: never listed
        self._listed = False  # one list has succeeded: from then on the tick never waits on a list
        self._refreshing = False  # a background refresh is running (one at a time)
        self._last_list_s: float | None = None  # how long the last successful list took (our clock)
        self._last_list_started: float | None = None
        self._last_list_failed = False
        # "unpaged" until the server shows it lacks that list; one str swapped once (no lock: a racing list at worst
        # asks the old way once more)
        self._list_source = self.config.instance_list
        self._dirty: set[str] = set()
        self._writing: set[str] = set()
        self._written_at: dict[str, float] = {}
        self._looked_up: set[str] = set()  # ids given their one GET since they last left the snapshot
        self._inflight: dict[str, float] = {}  # rental nonce -> $/h reserved
        self._ghost_nonces: set[str] = set()  # rentals whose outcome is unknown: any instance with them is a ghost
        # ghost nonce -> when its rental failed: its $/h stays reserved until a list begun after that shows whether
        # the instance exists (then it counts as a terminated node until its destroy succeeds)
        self._unsettled_ghosts: dict[str, float] = {}
        self._avoided_until: dict[int, float] = {}  # machine id -> our clock when it may be rented again
        self._overlay_cache: _Site | None = None
        self._odd_rows: set[str] = set()  # instances whose rows did not parse whole (logged once each)
        # address -> (instance id, when), as read on the instances themselves by an overlay search
        self._overlay_claims: dict[str, tuple[str, float]] = {}
        self.offer_cache = OfferCache(lambda query: self.client.search_offers(query), ttl_s=self.config.search_ttl_s,
                                      clock=clock)

        self._flush_wanted = threading.Event()
        self._closing = threading.Event()
        self._flusher: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        if start_threads:
            _register_exit_flush(self)

    # =============================================================================================================
    # The API client (lazy: Ray builds providers for commands that never call Vast)
    # =============================================================================================================

    @property
    def client(self) -> VastClient:
        with self._client_lock:
            if self._client is None:
                api_key = self._api_key()
                self._client = VastClient(
                    api_key=api_key,
                    base_url=self.config.api_url,
                    # The unpaged list has no documented limit; it is held to a little more than its successor's.
                    min_interval_s={"*": self.config.api_min_interval_s,
                                    UNPAGED_LIST: max(UNPAGED_LIST_INTERVAL_S, self.config.api_min_interval_s)},
                    rate_scale=self.config.api_rate_scale,
                )
                # Lists are also spaced across this machine's processes (ray up, then ray exec...).
                self._list_stamp = ListStamp(identity_of(self._client.base_url, api_key), UNPAGED_LIST_INTERVAL_S)
            return self._client

    def _api_key(self) -> str:
        """The key file ray up gave the head, else the usual lookup (explicit env, then the key files)."""
        if self.config.api_key_file:
            path = Path(self.config.api_key_file).expanduser()
            if path.is_file():
                key = path.read_text().strip()
                if key:
                    return key
        return resolve_api_key(None)

    def _background(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="skyward-vast")
            return self._pool

    # =============================================================================================================
    # The snapshot
    # =============================================================================================================

    def refresh(self, *, force: bool = False) -> None:
        """List the account's instances now if the snapshot is older than ``cache_ttl_s`` (one call for all threads).

        Blocking: for callers that need the newest state (a launch choosing its site, tests). Ray's tick and the
        getters never call it after the first list; they start :meth:`_refresh_behind` instead. A failed list is
        logged and the last snapshot kept."""
        self._refresh_quietly(force=force)

    def _refresh_quietly(self, *, force: bool = False, unless_listed_after: float | None = None) -> None:
        try:
            self._refresh(force=force, unless_listed_after=unless_listed_after)
        except VastError as exc:
            log.warning("Vast instance list failed, serving the last snapshot: %s", exc)

    def _refresh(self, *, force: bool = False, unless_listed_after: float | None = None) -> None:
        """One list (if still due once the refresh lock is ours); raises the list's VastError. A forced refresh
        decided at ``unless_listed_after`` is dropped when another list began after that (while we waited)."""
        if not force and self._fresh():
            return
        with self._refresh_lock:
            if not force and self._fresh():
                return  # another thread refreshed while we waited
            with self._lock:
                last = self._last_list_started
            if unless_listed_after is not None and last is not None and last > unless_listed_after:
                return
            started = self._clock()
            with self._lock:
                self._last_list_started = started
            try:
                instances = self._list_account()
            except VastError:
                with self._lock:  # try again after one TTL instead of hammering a failing API
                    self._next_refresh_at = started + self.config.cache_ttl_s
                    self._last_list_failed = True
                raise
            with self._lock:
                actions = self._apply_snapshot(instances, started)
                self._next_refresh_at = started + self.config.cache_ttl_s
                self._listed = True
                self._last_list_failed = False
                self._last_list_s = self._clock() - started
        self._dispatch(actions)

    def _list_account(self) -> list[Instance]:
        """Every instance of the account, the cheapest documented way.

        ``unpaged``: the legacy ``GET /api/v0/instances/`` (Vast's hello-world check), one call whatever the number
        of instances. The current ``GET /api/v1/instances/`` pages 25 rows at a time and allows one call per second,
        so 500 nodes take 20 calls and about 20 s. A server filter does not shorten that (the rows to see are our own
        cluster's; the filters have no prefix test, and a string range on ``label`` depends on the server's
        collation, which could hide our rows). When the unpaged list is not served (404 without Vast's error body,
        405, 410) or answers in another shape, the paged list is used from then on."""
        client = self.client
        if self._list_stamp is not None:
            self._list_stamp.wait_turn()
        if self._list_source == "unpaged":
            try:
                return client.list_instances_v0()
            except VastError as exc:
                if not _unpaged_list_missing(exc):
                    raise
                log.warning("the unpaged instance list (GET /api/v0/instances/) is not served (%s): listing with "
                            "the paged GET /api/v1/instances/ from now on", exc)
                self._list_source = "paged"
        return client.list_instances()

    def _fresh(self) -> bool:
        with self._lock:
            return self._next_refresh_at is not None and self._clock() < self._next_refresh_at

    def _current_snapshot(self) -> None:
        """What Ray's tick and every getter call: never waits on a list, except for the first.

        Until one list has succeeded the process knows nothing, and answering "no nodes" would let a freshly started
        monitor (or ``ray up``) rent a second head or duplicate workers: so the first list is made in the caller's
        thread and its failure raised. After that a stale snapshot is served as is while one background thread lists
        behind it (:meth:`_refresh_behind`)."""
        with self._lock:
            listed = self._listed
        if not listed:
            self._refresh()
            return
        self._refresh_behind()

    def _refresh_behind(self, *, waiting: bool = False) -> None:
        """Start a refresh in the background when the snapshot is due (one refresher at a time; never waits).

        Due after ``cache_ttl_s``; for a caller ``waiting`` on a node to come up (Ray's updater polling a booting
        node), after ``PENDING_REFRESH_S`` since the last list began, so a node that runs after 2 s is not seen 4 s
        later. That is one list call per 2 s at most, half the list's limit; after a failed list, one TTL."""
        with self._lock:
            now = self._clock()
            if waiting and self._last_list_started is not None and not self._last_list_failed:
                due_at = self._last_list_started + min(PENDING_REFRESH_S, self.config.cache_ttl_s)
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
            with self._lock:
                self._refreshing = False
            raise

    def _background_refresh(self, decided_at: float) -> None:
        try:
            # Due already (decided under the lock at decided_at), unless a blocking refresh began since.
            self._refresh_quietly(force=True, unless_listed_after=decided_at)
        except Exception:  # a bug must not end the refresher silently for good: the next tick starts another
            log.exception("refreshing the Vast instance snapshot failed")
        finally:
            with self._lock:
                self._refreshing = False

    def _apply_snapshot(self, instances: Iterable[Instance], started: float) -> list[_Action]:
        """Merge one list into the state (lock held) and decide what each node's state calls for."""
        now = self._clock()
        actions: list[_Action] = []
        listed: set[str] = set()
        for instance in instances:
            if not is_cluster_label(instance.label, self.cluster_name):
                continue
            node_id = str(instance.id)
            decoded = decode_label(instance.label)
            label_tags = decoded[1] if decoded else {}
            nonce = label_tags.get(TAG_RENTAL)
            if nonce in self._ghost_nonces:
                # A rental we were never told about: billed until destroyed, so it is kept as a terminated node
                # (counted against max_hourly_cost, its destroy retried at every refresh until one succeeds).
                listed.add(node_id)
                node = self._nodes.get(node_id)
                if node is None:
                    node = self._nodes[node_id] = _Node(node_id, label_tags, instance, first_seen=now,
                                                        status_since=now, machine_id=instance.machine_id,
                                                        terminated=True)
                    log.warning("Vast instance %s is the ghost of a rental whose answer was lost: destroying it",
                                node_id)
                node.instance = instance
                actions.extend(self._judge(node, now))
                continue
            if nonce in self._inflight:
                continue  # its rental thread registers it with the price it paid
            listed.add(node_id)
            self._looked_up.discard(node_id)
            partial = is_partial_row(instance)
            failed = unparsed_fields(instance)
            if (partial or failed) and node_id not in self._odd_rows:
                self._odd_rows.add(node_id)
                log.warning("Vast instance %s of cluster %s: %s did not parse; %s", node_id, self.cluster_name,
                            "its row" if partial else ", ".join(sorted(failed)),
                            "kept as a node from its label (terminating it still destroys it)" if partial else
                            "the last values seen are kept for those")
            node = self._nodes.get(node_id)
            if node is None:
                node = self._nodes[node_id] = _Node(node_id, label_tags, instance, first_seen=now, status_since=now,
                                                    machine_id=instance.machine_id)
            else:
                # A row that did not parse (whole or in part) keeps the facts of the last one that did.
                node.instance = _patched(node.instance, instance, failed, partial=partial)
                node.machine_id = node.machine_id or instance.machine_id
                if self._label_is_newer(node_id, started):
                    self._set_tags(node, label_tags, now)
            if not partial and not failed & _STATE_FIELDS:
                node.state_known = True
            if node.state_known or node.terminated:
                actions.extend(self._judge(node, now))  # no facts, no verdict (a terminated node's destroy is retried)
        for nonce, failed_at in list(self._unsettled_ghosts.items()):
            if started >= failed_at:  # this list shows the ghost if it exists: the reservation has done its job
                del self._unsettled_ghosts[nonce]
                self._inflight.pop(nonce, None)
        for node_id, node in list(self._nodes.items()):
            if node_id in listed:
                continue
            if node.first_seen > started:
                continue  # rented (or looked up) after this list began: it cannot be in it yet
            if node.terminated or node.instance is not None:
                del self._nodes[node_id]  # destroyed: by us, by Ray, or by someone else
                self._dirty.discard(node_id)
            elif now - node.first_seen > MISSING_GRACE_S and node_id not in self._looked_up:
                self._looked_up.add(node_id)
                actions.append(_Action("lookup", node_id))
        return actions

    def _label_is_newer(self, node_id: str, snapshot_started: float) -> bool:
        """A label may replace memory only when we have no write pending or in flight and the list began after our
        last write ended (else it can still show the label we overwrote)."""
        if node_id in self._dirty or node_id in self._writing:
            return False
        return snapshot_started >= self._written_at.get(node_id, float("-inf"))

    def _set_tags(self, node: _Node, tags: Mapping[str, str], now: float) -> None:
        if tags.get(TAG_RAY_NODE_STATUS) != node.tags.get(TAG_RAY_NODE_STATUS):
            node.status_since = now
        node.tags = dict(tags)

    def _judge(self, node: _Node, now: float) -> list[_Action]:
        """What a listed node's state calls for (lock held). Marks the node terminated when it is to be destroyed."""
        if node.terminated:
            if node.destroying:
                return []
            if node.destroyed and node.destroy_sent_at is not None and now - node.destroy_sent_at <= DESTROY_RETRY_S:
                return []  # Vast accepted the destroy; the list may lag behind it a little
            # The last destroy failed (or Vast still lists it long after accepting one): again, at every refresh,
            # so an instance Ray terminated never stays billed because one call failed.
            node.destroying = True
            node.destroy_sent_at = now
            return [_Action("destroy", node.node_id)]
        instance = node.instance
        assert instance is not None
        if instance.ready and node.running_since is None:
            node.running_since = now
        state = instance.state
        reason: str | None = None
        avoid_machine = False
        if state is NodeState.FAILED:
            reason, avoid_machine = f"failed ({instance.actual_status}: {instance.status_msg or 'no message'})", True
        elif state is NodeState.INTERRUPTED:
            return self._on_interrupted(node, now)
        elif state is NodeState.PENDING and now - node.first_seen > self.config.loading_timeout_s:
            reason, avoid_machine = f"still {instance.actual_status or 'provisioning'} after "\
                                    f"{self.config.loading_timeout_s:g} s", True
        elif (node.tags.get(TAG_RAY_NODE_STATUS) == STATUS_WAITING_FOR_SSH
              and now - node.status_since > self.config.ssh_timeout_s):
            reason, avoid_machine = f"unreachable over SSH for {self.config.ssh_timeout_s:g} s", True
        if reason is None:
            return []
        if avoid_machine and node.machine_id is not None:
            self._avoided_until[node.machine_id] = now + self.config.avoid_machine_s
        log.warning("Vast instance %s (machine %s) %s: destroying it%s", node.node_id, node.machine_id, reason,
                    f" and avoiding its machine for {self.config.avoid_machine_s:g} s" if avoid_machine else "")
        return self._terminate_locked(node, now)

    def _on_interrupted(self, node: _Node, now: float) -> list[_Action]:
        instance = node.instance
        assert instance is not None
        if self.config.interrupted_policy is InterruptedPolicy.REBID and self.config.max_bid is not None:
            current = node.price_per_hour or instance.dph_total or 0.0
            market = (instance.min_bid or current) * self.config.bid_multiplier
            new_bid = min(max(market, current * self.config.bid_multiplier), self.config.max_bid)
            if new_bid > current + 1e-9:
                node.price_per_hour = new_bid
                node.rebids += 1
                log.warning("Vast instance %s was outbid at $%.4f/h: raising its bid to $%.4f/h", node.node_id,
                            current, new_bid)
                return [_Action("rebid", node.node_id, new_bid)]
            if node.rebids and current >= self.config.max_bid - 1e-9:
                log.warning("Vast instance %s is outbid at max_bid $%.4f/h: replacing it", node.node_id, current)
            elif node.rebids:
                return []  # our raised bid has not taken effect yet
        if node.kind == NODE_KIND_HEAD:
            log.error("the head (Vast instance %s) was outbid; it is kept (destroying it would end the cluster): "
                      "use allocation on-demand for the head, or interrupted_policy rebid", node.node_id)
            return []
        log.warning("Vast instance %s was outbid: destroying it so the autoscaler replaces it", node.node_id)
        return self._terminate_locked(node, now)

    def _terminate_locked(self, node: _Node, now: float) -> list[_Action]:
        node.terminated = True
        node.destroying = True
        node.destroy_sent_at = now
        self._dirty.discard(node.node_id)
        return [_Action("destroy", node.node_id)]

    def _destroy_ended(self, node_ids: Iterable[str], *, ok: bool) -> None:
        """Record how destroy calls ended: a node stops counting against ``max_hourly_cost`` only once Vast
        accepted its destroy (or said it was gone); after a failure the next refresh sends it again."""
        with self._lock:
            for node_id in node_ids:
                node = self._nodes.get(node_id)
                if node is None:
                    continue
                node.destroying = False
                node.destroyed = node.destroyed or ok

    def _dispatch(self, actions: list[_Action]) -> None:
        if actions:
            pool = self._background()
            for action in actions:
                pool.submit(self._perform, action)

    def _perform(self, action: _Action) -> None:
        try:
            if action.kind == "destroy":
                try:
                    self.client.destroy_instance(int(action.node_id))
                except VastError:
                    self._destroy_ended([action.node_id], ok=False)
                    raise
                self._destroy_ended([action.node_id], ok=True)
            elif action.kind == "rebid":
                assert action.price is not None
                self.client.change_bid(int(action.node_id), action.price)
            elif action.kind == "lookup":
                self._lookup(action.node_id)
        except VastError as exc:
            log.warning("Vast %s of instance %s failed (retried on a later refresh): %s", action.kind,
                        action.node_id, exc)
        except Exception:
            log.exception("Vast %s of instance %s failed", action.kind, action.node_id)
            if action.kind == "destroy":
                self._destroy_ended([action.node_id], ok=False)

    def _node(self, node_id: str) -> _Node | None:
        """The node from the snapshot, or after one GET for an id the snapshot lacks (never more than one per absence).

        Never waits on a list once one has succeeded: a node that is not ready yet (rented but unlisted, loading)
        only starts a background refresh when the snapshot is due, and its caller (Ray's updater polls) sees the
        result at its next look. Ready nodes never cause a refresh, so a steady tick still costs one list per TTL."""
        with self._lock:
            listed = self._listed
            node = self._nodes.get(node_id)
            pending = node is not None and not node.terminated and not self._ready(node)
        if not listed:
            self.refresh()  # the first list (a failure is logged; the GET below still answers for this id)
        elif pending:
            self._refresh_behind(waiting=True)
        with self._lock:
            node = self._nodes.get(node_id)
            if node is not None or node_id in self._looked_up:
                return node
            self._looked_up.add(node_id)
        return self._lookup(node_id)

    def _ready(self, node: _Node) -> bool:
        """Running with an SSH endpoint (lock held): the moment Ray may start installing over SSH.

        A node on an overlay needs nothing more. Vast documents no API field for the overlay address, so it is
        read on the node at the first SSH contact (the command runner finds the node on the overlay when the API
        does not say where it is) and kept in the node's tags; nobody waits for the API to show it."""
        return node.instance is not None and node.instance.ready

    def _lookup(self, node_id: str) -> _Node | None:
        """One ``GET /instances/{id}/``: adopt the instance if it is ours, forget it if it is gone."""
        if not node_id.isdigit():
            return None
        try:
            instance = self.client.get_instance(int(node_id))
        except VastError as exc:
            log.warning("Vast lookup of instance %s failed: %s", node_id, exc)
            with self._lock:
                return self._nodes.get(node_id)
        with self._lock:
            decoded = decode_label(instance.label) if instance is not None else None
            nonce = decoded[1].get(TAG_RENTAL) if decoded else None
            if instance is None or not is_cluster_label(instance.label, self.cluster_name) or (
                nonce in self._ghost_nonces or nonce in self._inflight
            ):
                if instance is None:
                    self._nodes.pop(node_id, None)
                    self._dirty.discard(node_id)
                return self._nodes.get(node_id)
            node = self._nodes.get(node_id)
            if node is None:
                now = self._clock()
                node = self._nodes[node_id] = _Node(node_id, decoded[1] if decoded else {}, instance, first_seen=now,
                                                    status_since=now, machine_id=instance.machine_id)
            else:
                node.instance = instance
            return node

    # =============================================================================================================
    # Ray's read API (snapshot only)
    # =============================================================================================================

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        """The snapshot's live nodes (see :meth:`_current_snapshot`: only the first call of a process waits on a
        list, and raises if it fails rather than report an empty cluster)."""
        self._current_snapshot()
        with self._lock:
            return [
                node_id
                for node_id, node in self._nodes.items()
                if not node.terminated and all(node.tags.get(key) == value for key, value in tag_filters.items())
            ]

    def is_running(self, node_id: str) -> bool:
        node = self._node(node_id)
        with self._lock:
            # Ray starts installing over SSH as soon as this is true; the runner finds the node's overlay address.
            return node is not None and not node.terminated and self._ready(node)

    def is_terminated(self, node_id: str) -> bool:
        node = self._node(node_id)
        with self._lock:
            return node is None or node.terminated

    def node_tags(self, node_id: str) -> dict[str, str]:
        node = self._node(node_id)
        with self._lock:
            return dict(node.tags) if node is not None else {}

    def external_ip(self, node_id: str) -> str | None:
        """The host the laptop SSHes to: the direct public address, else Vast's proxy host."""
        node = self._node(node_id)
        with self._lock:
            if node is None or node.instance is None:
                return None
            endpoint = node.instance.ssh_endpoint
            return endpoint[0] if endpoint else None

    def internal_ip(self, node_id: str) -> str | None:
        """The overlay address (Ray's node IP there); without an overlay, the first local or the public address."""
        node = self._node(node_id)
        with self._lock:
            if node is None or node.instance is None:
                return None
            if node.tags.get(TAG_OVERLAY_SUBNET):
                return self._overlay_ip(node)
            instance = node.instance
            return (instance.local_ipaddrs[0] if instance.local_ipaddrs else None) or instance.public_ipaddr

    def _overlay_ip(self, node: _Node) -> str | None:
        """The overlay address from the API (``local_ipaddrs``), else the one learned on the node (lock held)."""
        subnet = node.tags.get(TAG_OVERLAY_SUBNET)
        if not subnet:
            return None
        listed = node.instance.overlay_ip(subnet) if node.instance is not None else None
        return listed or node.tags.get(TAG_OVERLAY_IP)

    def unknown_overlay_subnet(self, node_id: str) -> str | None:
        """The node's overlay subnet when its overlay address is still unknown (the SSH runner then looks)."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None or node.terminated or self._overlay_ip(node) is not None:
                return None
            return node.tags.get(TAG_OVERLAY_SUBNET)

    def learn_node_addresses(self, node_id: str, addresses: Iterable[str]) -> str | None:
        """Record the node's overlay address among ``addresses`` (read on the node) in its tags, so its label carries
        it to every other process. Returns the address, or None when none is in the subnet. An address read on an
        instance this process does not know yet is remembered as taken, so an overlay search skips it."""
        texts = list(addresses)
        with self._lock:
            self._overlay_claims.update(dict.fromkeys(texts, (node_id, self._clock())))
            node = self._nodes.get(node_id)
            subnet = node.tags.get(TAG_OVERLAY_SUBNET) if node is not None else None
            if node is None or not subnet:
                return None
            network = ipaddress.ip_network(subnet, strict=False)
            for text in texts:
                try:
                    address = ipaddress.ip_address(text)
                except ValueError:
                    continue
                if address in network:
                    if node.tags.get(TAG_OVERLAY_IP) == str(address):
                        return str(address)  # known already: nothing to write
                    node.tags[TAG_OVERLAY_IP] = str(address)
                    self._dirty.add(node_id)
                    break
            else:
                return None
        log.info("Vast instance %s: overlay address %s learned on the node", node_id, address)
        self._ensure_flusher()
        self._flush_wanted.set()
        return str(address)

    def overlay_search(self, node_id: str) -> list[str]:
        """Where on the overlay a node whose overlay address is unknown may answer: every address of its subnet that
        neither this process nor a known node holds. Empty when the address is known, or when this process is not on
        the overlay (the laptop reads it over the public endpoint instead)."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None or node.terminated or self._overlay_ip(node) is not None:
                return []
            subnet = node.tags.get(TAG_OVERLAY_SUBNET)
            if not subnet:
                return []
            # Addresses held by live nodes, or claimed lately by an instance this process does not know (one rented
            # by another process). A destroyed node's address may be handed out again, so it is searched.
            now = self._clock()
            taken = set()
            for address, (claimer, at) in self._overlay_claims.items():
                holder = self._nodes.get(claimer)
                if (holder is not None and not holder.terminated) or (holder is None and now - at < CLAIM_TTL_S):
                    taken.add(address)
            for other in self._nodes.values():
                if other is not node and not other.terminated:
                    address = self._overlay_ip(other)
                    if address:
                        taken.add(address)
        try:
            network = ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            return []
        local = {str(iface.ip) for _, iface in interface_addresses()}
        if not any(ipaddress.ip_address(address) in network for address in local):
            return []  # not on this overlay: nothing there is reachable from here
        hosts = itertools.islice(network.hosts(), OVERLAY_SEARCH_MAX)
        return [str(address) for address in hosts if str(address) not in taken and str(address) not in local]

    def ssh_endpoints(self, node_id: str, use_internal_ip: bool) -> list[Endpoint]:
        """SSH endpoints, best first: the overlay (head -> worker), the direct mapped port, then Vast's proxy."""
        node = self._node(node_id)
        with self._lock:
            if node is None or node.instance is None:
                return []
            candidates: list[Endpoint] = []
            overlay_ip = self._overlay_ip(node)
            if use_internal_ip and overlay_ip:
                candidates.append((overlay_ip, 22))
            if node.instance.ssh_direct:
                candidates.append(node.instance.ssh_direct)
            if node.instance.ssh_proxy and self.config.ssh_proxy:
                candidates.append(node.instance.ssh_proxy)
            return candidates

    def get_command_runner(
        self,
        log_prefix: str,
        node_id: str,
        auth_config: dict[str, Any],
        cluster_name: str,
        process_runner: ModuleType,
        use_internal_ip: bool,
        docker_config: dict[str, Any] | None = None,
    ) -> VastSSHCommandRunner:
        if docker_config and docker_config.get("container_name"):
            raise SkywardError("docker: is not supported on Vast (instances are containers already); remove it")
        return VastSSHCommandRunner(
            endpoints=self,
            log_prefix=log_prefix,
            node_id=node_id,
            provider=self,
            auth_config=auth_config,
            cluster_name=cluster_name,
            process_runner=process_runner,
            use_internal_ip=use_internal_ip,
        )

    # =============================================================================================================
    # Tags
    # =============================================================================================================

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        node = self._node(node_id)
        with self._lock:
            if node is None or node.terminated:
                return
            self._set_tags(node, {**node.tags, **tags}, self._clock())
            self._dirty.add(node_id)
        self._ensure_flusher()
        self._flush_wanted.set()

    def _ensure_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None or not self._start_threads:
                return
            self._flusher = threading.Thread(target=self._flush_loop, name="skyward-tag-flush", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._closing.is_set():
            self._flush_wanted.wait()
            if self._closing.wait(self.config.tag_flush_delay_s):
                return
            self._flush_wanted.clear()
            if not self.flush_tags():
                self._closing.wait(self.config.cache_ttl_s)  # the API failed: back off before the retry

    def flush_tags(self) -> bool:
        """Write every pending label now (one request per changed node). False if some write failed."""
        with self._lock:
            batch = {
                node_id: encode_label(self.cluster_name, self._nodes[node_id].tags)
                for node_id in self._dirty
                if node_id in self._nodes and not self._nodes[node_id].terminated
            }
            self._dirty.clear()
            self._writing.update(batch)
        ok = True
        for node_id, label in batch.items():
            try:
                self.client.set_label(int(node_id), label)
            except NotFoundError:
                pass  # destroyed meanwhile
            except VastError as exc:
                log.warning("writing the tags of Vast instance %s failed (retrying): %s", node_id, exc)
                ok = False
                with self._lock:
                    self._dirty.add(node_id)
                self._flush_wanted.set()
            finally:
                with self._lock:
                    self._writing.discard(node_id)
                    self._written_at[node_id] = self._clock()
        return ok

    def unflushed_node_ids(self) -> list[str]:
        """Nodes whose latest tags have not reached Vast yet (pending or in flight)."""
        with self._lock:
            return sorted(self._dirty | self._writing, key=lambda node_id: (len(node_id), node_id))

    def flush_pending(self, timeout_s: float) -> bool:
        """Write every pending label, waiting for writes in flight and retrying failed ones, for up to ``timeout_s``.

        One failed write (a 5xx, a 429) must not leave Vast with stale tags when the process is about to end: the
        next monitor rebuilds its nodes from the labels alone. True when Vast has the latest tags of every node."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):
                self.flush_tags()
            remaining = deadline - time.monotonic()
            if not self.unflushed_node_ids():
                return True
            if remaining <= 0:
                return False
            time.sleep(min(FLUSH_RETRY_S, remaining))  # a write in flight elsewhere, or a failed one to retry

    def close(self, timeout_s: float = 30.0) -> None:
        """Write pending tags and stop the background threads (also run at interpreter exit, so the last tags of
        ``ray up`` reach Vast). A label write in flight is waited for, not cut off."""
        deadline = time.monotonic() + timeout_s
        self._closing.set()
        self._flush_wanted.set()
        with self._lock:
            flusher, pool, self._pool = self._flusher, self._pool, None
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout_s)
        self.flush_pending(max(0.0, deadline - time.monotonic()))
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=False)

    # =============================================================================================================
    # Creating nodes
    # =============================================================================================================

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any] | None:
        return self._create(node_config, tags, count)

    def create_node_with_resources_and_labels(
        self,
        node_config: dict[str, Any],
        tags: dict[str, str],
        count: int,
        resources: dict[str, float],
        labels: dict[str, str],
    ) -> dict[str, Any] | None:
        return self._create(node_config, tags, count)

    def _create(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any] | None:
        if count <= 0:
            return {}
        try:
            node = VastNodeConfig.from_config(node_config, section="node_config")
            kind = tags.get(TAG_RAY_NODE_KIND, NODE_KIND_WORKER)
            group_name = tags.get(TAG_RAY_USER_NODE_TYPE) or kind
            if kind == NODE_KIND_HEAD:
                try:
                    site, reserved = self._head_site(node, group_name)
                except VastError as exc:
                    if not overlay_refused(exc):
                        raise
                    raise NodeLaunchError("overlay-unavailable", overlays_unavailable_message(exc), None) from None
            else:
                site, reserved = self._worker_site(), None
            outcome = self._rent(node, kind, group_name, tags, count, site, reserved)
        except NoPlacementError as exc:
            raise NodeLaunchError("no-placement", str(exc), sys.exc_info()) from exc
        except ConfigError as exc:
            raise NodeLaunchError("bad-config", str(exc), sys.exc_info()) from exc
        except (VastError, SkywardError) as exc:
            raise NodeLaunchError("vast-error", str(exc), sys.exc_info()) from exc
        if not outcome.created:
            details = "; ".join(dict.fromkeys(outcome.errors)) or "every offer was taken before we could rent it"
            raise NodeLaunchError("rental-failed", f"no {group_name} node could be rented: {details}", None)
        if len(outcome.created) < count:
            log.warning("rented %d of %d %s nodes: %s", len(outcome.created), count, group_name,
                        "; ".join(dict.fromkeys(outcome.errors)))
        return {node_id: {} for node_id in outcome.created}

    # --- where to rent ---------------------------------------------------------------------------------------------

    def _multi_node(self) -> bool:
        """Whether the cluster can have more than one node, i.e. needs one physical cluster and an overlay."""
        if not self.config.use_overlay:
            return False
        if not self.config.node_types:
            return True  # unknown shape: assume workers will come
        return sum(shape.max_workers for shape in self.config.node_types.values()) > 0

    def _head_site(self, node: VastNodeConfig, group_name: str) -> tuple[_Site, list[_Rental] | None]:
        """Choose the physical cluster for the head and the cluster's workers, and create the overlay there.

        Returns the site and the head's reserved rental from that joint plan (None: plan the head alone)."""
        if not self._multi_node():
            return _Site(), None
        overlay = self._find_overlay()
        live = [n for n in self._live_nodes() if n.kind == NODE_KIND_WORKER]
        groups = self._cluster_groups(node, group_name)
        pinned = overlay.cluster_id if overlay is not None else None
        try:
            the_plan, rentals = self._plan(groups, group_name, pinned_cluster=pinned, physical_cluster=True)
        except NoPlacementError:
            if overlay is None or live:
                raise
            # A stale overlay from an earlier cluster of this name, with nothing on it: start afresh.
            log.warning("overlay %s (cluster %s) cannot host this cluster and has no nodes: replacing it",
                        overlay.name, overlay.cluster_id)
            self.client.delete_overlay(name=overlay.name)
            overlay = None
            the_plan, rentals = self._plan(groups, group_name, pinned_cluster=None, physical_cluster=True)
        try:
            if overlay is None:
                assert the_plan.cluster_id is not None
                overlay = self._create_overlay(the_plan.cluster_id)
        except BaseException:
            self._release(rentals)
            raise
        site = _Site(overlay.cluster_id, overlay.name, overlay.internal_subnet)
        with self._lock:
            self._overlay_cache = site
        return site, rentals

    def _cluster_groups(self, head: VastNodeConfig, head_group: str) -> list[NodeGroup]:
        """The head plus every worker type at its max_workers (falls back to min_workers when that cannot fit)."""
        groups = [NodeGroup(name=head_group, accelerator=head.accelerator, gpus_per_node=head.gpus, count=1,
                            allocation=head.allocation_for(HEAD_KIND), include_variants=head.include_variants)]
        for name, shape in self.config.node_types.items():
            if shape.max_workers <= 0:
                continue
            worker = shape.node_config
            group = f"{name} workers" if name == head_group else name  # the head's type may have workers too
            groups.append(NodeGroup(name=group, accelerator=worker.accelerator, gpus_per_node=worker.gpus,
                                    count=shape.max_workers, allocation=worker.allocation_for(NODE_KIND_WORKER),
                                    include_variants=worker.include_variants))
        return groups

    def _worker_site(self) -> _Site:
        """The head's physical cluster and overlay, from the head's label (or the overlay list)."""
        if not self._multi_node():
            return _Site()
        with self._lock:
            if self._overlay_cache is not None:
                return self._overlay_cache
        self.refresh()
        with self._lock:
            for node in self._nodes.values():
                if node.kind == NODE_KIND_HEAD and not node.terminated and node.tags.get(TAG_PHYSICAL_CLUSTER):
                    site = _Site(int(node.tags[TAG_PHYSICAL_CLUSTER]), self._overlay_name,
                                 node.tags.get(TAG_OVERLAY_SUBNET))
                    if site.subnet:
                        self._overlay_cache = site
                        return site
        overlay = self._find_overlay()
        if overlay is None or overlay.cluster_id is None:
            raise VastLaunchError(f"overlay {self._overlay_name} of cluster {self.cluster_name!r} does not exist: "
                                  "the head creates it (run ray up), workers join it")
        site = _Site(overlay.cluster_id, overlay.name, overlay.internal_subnet)
        with self._lock:
            self._overlay_cache = site
        return site

    def _find_overlay(self) -> Overlay | None:
        for overlay in self.client.list_overlays():
            if overlay.name == self._overlay_name:
                return overlay
        return None

    def _create_overlay(self, cluster_id: int) -> Overlay:
        """Create the cluster's overlay on ``cluster_id`` and wait (``overlay_timeout``) until it is listed."""
        log.info("creating overlay %s on physical cluster %s", self._overlay_name, cluster_id)
        try:
            self.client.create_overlay(cluster_id, self._overlay_name)
        except VastError as exc:
            if not exc.outcome_unknown:
                raise
        deadline = self._clock() + self.config.overlay_timeout
        while True:
            overlay = self._find_overlay()
            if overlay is not None and overlay.internal_subnet:
                return overlay
            if self._clock() >= deadline:
                raise VastLaunchError(f"overlay {self._overlay_name} did not appear on physical cluster {cluster_id} "
                                      f"within overlay_timeout={self.config.overlay_timeout} s")
            time.sleep(OVERLAY_POLL_S)

    # --- planning and renting --------------------------------------------------------------------------------------

    def _plan(
        self, groups: list[NodeGroup], rent_group: str, *, pinned_cluster: int | None, physical_cluster: bool | None
    ) -> tuple[Plan, list[_Rental]]:
        """Search (outside the lock), then plan and reserve ``rent_group``'s nodes in one locked step, so concurrent
        launches never both spend the same ``max_hourly_cost`` headroom."""
        with self._lock:
            excluded = self._excluded_now()
        request = PlacementRequest(groups=tuple(groups), cluster_id=pinned_cluster, excluded_machines=excluded,
                                   physical_cluster=None if pinned_cluster is not None else physical_cluster)
        options = self.config.placement
        queries = build_queries(request, options, limit=self._search_limit(request))
        offers = self._search(queries)
        the_plan, rentals, committed, offers = self._plan_and_reserve(request, rent_group, queries, offers)
        if the_plan is None and self.offer_cache.is_dirty(queries):
            # The shared answer lost offers to our own rentals or to rivals since it was fetched: a fresh search may
            # hold what it lacks. A clean answer that cannot place says what a new search would, so none is made.
            self.offer_cache.note_refresh()
            offers = self._search(queries, fresh=True)
            the_plan, rentals, committed, offers = self._plan_and_reserve(request, rent_group, queries, offers)
        if the_plan is None:
            # A strict search returns nothing that fails a filter, so it cannot say which filter emptied it: one
            # broad search (on failure only, shared like any other) lets the explanation name the filter and how far
            # it would have to move.
            broad = self._search(build_queries(request, options, limit=self._search_limit(request), broad=True))
            explanation = explain(request, options, [*offers.values(), *broad.values()],
                                  already_committed_per_hour=committed)
            if physical_cluster:  # the head's plan: when the cap stops it, also name the max_workers it covers
                explanation = with_fewer_workers(
                    explanation, request, options, list(offers.values()),
                    lambda group: f"available_node_types.{group.removesuffix(' workers')}.max_workers",
                    already_committed_per_hour=committed)
            raise NoPlacementError(explanation)
        return the_plan, rentals

    def _plan_and_reserve(
        self, request: PlacementRequest, rent_group: str, queries: list[dict[str, Any]], offers: dict[int, Offer]
    ) -> tuple[Plan | None, list[_Rental], float, dict[int, Offer]]:
        """Plan on the shared answers as they are now and reserve ``rent_group``'s nodes (money and GPUs) in one
        locked step. Returns (plan or None, rentals, $/h already committed, the offers planned on)."""
        with self._lock:
            offers = self.offer_cache.current(queries, offers)
            committed = self._committed_per_hour()
            try:
                the_plan = plan(request, self.config.placement, list(offers.values()),
                                already_committed_per_hour=committed)
            except NoPlacementError:
                return None, [], committed, offers
            rentals = [_Rental(secrets.token_hex(4), assignment, the_plan.image)
                       for assignment in the_plan.nodes_of(rent_group)]
            for rental in rentals:
                self._inflight[rental.nonce] = rental.assignment.price_per_hour
                self.offer_cache.take(rental.nonce, rental.assignment.machine_id, rental.assignment.offer.num_gpus,
                                      queries)
        return the_plan, rentals, committed, offers

    def _search(self, queries: list[dict[str, Any]], *, fresh: bool = False) -> dict[int, Offer]:
        """Every query's offers merged by id (a spot-if-available group searches bids and on-demand), from the
        answers every launch shares for ``search_ttl_s`` unless ``fresh``; missing ones are searched at once."""
        return self.offer_cache.offers(queries, fresh=fresh)

    def _excluded_now(self) -> frozenset[int]:
        """The configured exclusions plus the machines still avoided after a failure (lock held)."""
        now = self._clock()
        for machine_id, until in list(self._avoided_until.items()):
            if now >= until:
                del self._avoided_until[machine_id]
                log.info("machine %s is no longer avoided (avoid_machine_s=%g elapsed)", machine_id,
                         self.config.avoid_machine_s)
        return frozenset(self.config.excluded_machines) | frozenset(self._avoided_until)

    @staticmethod
    def _search_limit(request: PlacementRequest) -> int:
        """Offers to fetch per search. Choosing a physical cluster needs the market's breadth; renting on a pinned
        cluster or anywhere needs only the cheapest few per node (results come cheapest first), and every offer
        fetched costs parsing time."""
        if request.cluster_id is None and request.physical_cluster:
            return DEFAULT_SEARCH_LIMIT
        return min(DEFAULT_SEARCH_LIMIT, max(100, 10 * request.total_nodes))

    def _release(self, rentals: Iterable[_Rental]) -> None:
        with self._lock:
            for rental in rentals:
                self._inflight.pop(rental.nonce, None)
                self.offer_cache.released(rental.nonce)

    def _committed_per_hour(self) -> float:
        """Billed nodes plus rentals in flight (lock held): what max_hourly_cost is already spent on. A terminated
        node counts until its destroy succeeded: a failed destroy leaves it running and billed."""
        live = sum(node.hourly_cost for node in self._nodes.values() if node.billed)
        return live + sum(self._inflight.values())

    def _live_nodes(self) -> list[_Node]:
        self.refresh()
        with self._lock:
            return [node for node in self._nodes.values() if not node.terminated]

    def _rent(
        self,
        node: VastNodeConfig,
        kind: str,
        group_name: str,
        tags: Mapping[str, str],
        count: int,
        site: _Site,
        reserved: list[_Rental] | None,
    ) -> _Outcome:
        """Rent ``count`` nodes: plan, rent through the pacer, and plan again while offers were taken by others."""
        outcome = _Outcome()
        progress = _Progress(self, group_name, count)
        group = NodeGroup(name=group_name, accelerator=node.accelerator, gpus_per_node=node.gpus, count=1,
                          allocation=node.allocation_for(kind), include_variants=node.include_variants)
        rentals = reserved
        for _round in range(RENT_ROUNDS):
            missing = count - len(outcome.created)
            if missing <= 0:
                break
            if rentals is None:
                _, rentals = self._plan([group.model_copy(update={"count": missing})], group_name,
                                        pinned_cluster=site.cluster_id, physical_cluster=site.cluster_id is not None)
            round_outcome = self._rent_round(node, tags, rentals, site, progress)
            outcome.created += round_outcome.created
            outcome.errors += round_outcome.errors
            outcome.gone += round_outcome.gone
            rentals = None
            if not round_outcome.gone:
                break  # only offers taken by others are worth a new plan
        return outcome

    def _rent_round(self, node: VastNodeConfig, tags: Mapping[str, str], rentals: list[_Rental],
                    site: _Site, progress: _Progress) -> _Outcome:
        """Rent ``rentals`` at once: each queues on the client's pacer, which starts them one create interval apart
        in the order they asked (no burst for Vast to refuse), so the batch takes (n - 1) x 4.5 s."""
        outcome = _Outcome()
        progress.starting(len(rentals))
        workers = max(min(len(rentals), self.config.rent_concurrency), 1)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skyward-rent") as pool:
            futures = [pool.submit(self._rent_one, node, tags, rental, site, progress) for rental in rentals]
            for future in futures:
                result = future.result()
                if isinstance(result, str):
                    outcome.created.append(result)
                elif isinstance(result, OfferGoneError):
                    outcome.gone += 1
                else:
                    outcome.errors.append(str(result))
        return outcome

    def _rent_one(self, node: VastNodeConfig, tags: Mapping[str, str], rental: _Rental, site: _Site,
                  progress: _Progress | None = None) -> str | Exception:
        """One ``PUT /asks``; returns the new node id, or the error. Never retried here (the client retries a 429,
        which Vast refused before doing anything)."""
        assignment = rental.assignment
        node_tags = {**tags, TAG_RAY_CLUSTER_NAME: self.cluster_name, TAG_RENTAL: rental.nonce}
        if site.cluster_id is not None:
            node_tags[TAG_PHYSICAL_CLUSTER] = str(site.cluster_id)
        if site.subnet:
            node_tags[TAG_OVERLAY_SUBNET] = site.subnet
        kind = node_tags.get(TAG_RAY_NODE_KIND, NODE_KIND_WORKER)
        try:
            created = self.client.create_instance(
                assignment.offer_id,
                image=rental.image,
                disk_gb=self.config.disk_gb,
                label=encode_label(self.cluster_name, node_tags, limit=MAX_CREATE_LABEL_LENGTH),
                env=self._instance_env(node, kind, site),
                onstart=BASE_ONSTART + (f"\n{node.onstart}" if node.onstart else ""),
                price=assignment.bid_price,
            )
        except VastError as exc:
            if isinstance(exc, OfferGoneError):
                self.offer_cache.gone(assignment.machine_id)
            self.offer_cache.released(rental.nonce)
            with self._lock:
                if exc.outcome_unknown and exc.new_contract is None:
                    # It may exist anyway: destroy it when a list shows it, and keep its price reserved until then.
                    self._ghost_nonces.add(rental.nonce)
                    self._unsettled_ghosts[rental.nonce] = self._clock()
                else:
                    self._inflight.pop(rental.nonce, None)
                    if exc.new_contract is not None:
                        self._ghost_nonces.add(rental.nonce)  # should the destroy below fail, a list retries it
            if exc.new_contract is not None:
                self._destroy_quietly(exc.new_contract, f"failed rental of offer {assignment.offer_id}")
            if isinstance(exc, OfferGoneError):
                return exc
            return VastLaunchError(f"offer {assignment.offer_id}: {exc}")
        except BaseException:
            self._release([rental])
            raise
        node_id = str(created.new_contract)
        now = self._clock()
        with self._lock:
            self._nodes[node_id] = _Node(node_id, node_tags, None, first_seen=now, status_since=now,
                                         machine_id=assignment.machine_id,
                                         price_per_hour=assignment.price_per_hour)
            self._inflight.pop(rental.nonce, None)
        self.offer_cache.rented(rental.nonce)
        log.info("rented Vast instance %s: offer %s on machine %s, $%.4f/h%s", node_id, assignment.offer_id,
                 assignment.machine_id, assignment.price_per_hour, " (bid)" if assignment.is_bid else "")
        if progress is not None:
            progress.accepted()
        if self.config.ssh_public_key:
            try:
                self.client.attach_ssh_key(created.new_contract, self.config.ssh_public_key)
            except VastError as exc:
                log.warning("attaching the SSH key to Vast instance %s failed (the account key may do): %s",
                            node_id, exc)
        return node_id

    def _instance_env(self, node: VastNodeConfig, kind: str, site: _Site) -> dict[str, str]:
        env = {**node.env, CLUSTER_ENV: self.cluster_name, API_URL_ENV: self.client.base_url}
        if kind != NODE_KIND_HEAD:
            env[INSTANCE_TIMEOUT_ENV] = str(self.config.instance_timeout)
        if site.overlay_name and site.subnet:
            env[overlay_env_key(site.overlay_name)] = "1"
            env[SUBNET_ENV] = site.subnet
        for port in node.ports:
            env[port_env_key(port)] = "1"
        return env

    def _destroy_quietly(self, instance_id: int, why: str) -> None:
        try:
            self.client.destroy_instance(instance_id)
            log.warning("destroyed Vast instance %s left by a %s", instance_id, why)
        except VastError as exc:
            log.error("could not destroy Vast instance %s left by a %s (the label sweep retries): %s", instance_id,
                      why, exc)

    # =============================================================================================================
    # Terminating and cleaning up
    # =============================================================================================================

    def terminate_node(self, node_id: str) -> dict[str, Any] | None:
        return self.terminate_nodes([node_id])

    def terminate_nodes(self, node_ids: list[str]) -> dict[str, Any] | None:
        """Destroy nodes in one bulk request; nodes already gone count as done. They are hidden at once."""
        now = self._clock()
        to_destroy: list[int] = []
        for node_id in dict.fromkeys(node_ids):
            node = self._node(node_id)
            if node is None:
                continue  # not ours, or already gone
            with self._lock:
                node.terminated = True
                self._dirty.discard(node_id)
                if node.destroying or node.destroyed:
                    continue  # a destroy is in flight or done: the refresh sends it again if needed
                node.destroying = True
                node.destroy_sent_at = now
            to_destroy.append(int(node_id))
        if not to_destroy:
            return None
        try:
            if len(to_destroy) == 1:
                self.client.destroy_instance(to_destroy[0])
            else:
                self.client.destroy_instances(to_destroy)
        except VastError as exc:
            if len(to_destroy) == 1:
                log.error("destroying Vast instance %s failed (retried at the next refresh): %s", to_destroy[0], exc)
                self._destroy_ended([str(to_destroy[0])], ok=False)
                return None
            log.warning("bulk destroy of %s failed (%s): destroying one by one", to_destroy, exc)
            for instance_id in to_destroy:
                try:
                    self.client.destroy_instance(instance_id)
                except VastError as one_exc:
                    log.error("destroying Vast instance %s failed (retried at the next refresh): %s", instance_id,
                              one_exc)
                    self._destroy_ended([str(instance_id)], ok=False)
                else:
                    self._destroy_ended([str(instance_id)], ok=True)
            return None
        except BaseException:
            self._destroy_ended([str(i) for i in to_destroy], ok=False)
            raise
        self._destroy_ended([str(i) for i in to_destroy], ok=True)
        return None

    def cleanup_cluster_resources(self) -> None:
        """After ``ray down``: destroy every instance still carrying the cluster's label (ghosts of failed rentals
        included), then delete the overlay. Bounded; raises if something is left."""
        deadline = self._clock() + max(120.0, self.config.overlay_timeout)
        leftovers: list[int] = []
        while True:
            leftovers = [i.id for i in self._list_account() if is_cluster_label(i.label, self.cluster_name)]
            if not leftovers or self._clock() >= deadline:
                break
            log.info("destroying %d leftover instance(s) of cluster %s: %s", len(leftovers), self.cluster_name,
                     leftovers)
            try:
                self.client.destroy_instances(leftovers)
            except VastError:
                for instance_id in leftovers:
                    with contextlib.suppress(VastError):
                        self.client.destroy_instance(instance_id)
            time.sleep(OVERLAY_POLL_S)
        try:
            overlay = self._find_overlay()
        except VastError as exc:
            if not overlay_refused(exc):
                raise
            overlay = None  # an account without overlays has none to delete
            log.info("no overlay to delete (Vast refused listing overlays: %s)", exc)
        if overlay is not None:
            log.info("deleting overlay %s", overlay.name)
            self.client.delete_overlay(name=overlay.name)
        with self._lock:
            self._overlay_cache = None
            self._nodes.clear()
            self._dirty.clear()
        if leftovers:
            raise SkywardError(f"Vast instances {leftovers} of cluster {self.cluster_name!r} could not be destroyed; "
                               "destroy them in the Vast console")

    # =============================================================================================================
    # Config hooks (laptop side)
    # =============================================================================================================

    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        from skyward_ray.provider.bootstrap import bootstrap_config

        return bootstrap_config(cluster_config)

    @staticmethod
    def fillout_available_node_types_resources(cluster_config: dict[str, Any]) -> dict[str, Any]:
        from skyward_ray.provider.bootstrap import fill_node_resources

        return fill_node_resources(cluster_config)

    def prepare_for_head_node(self, cluster_config: dict[str, Any]) -> dict[str, Any]:
        """The head's config (see :func:`~skyward_ray.provider.bootstrap.prepare_head_config`).

        Ray calls this on the laptop at every ``ray up``, also when ``bootstrap_config``'s result came from Ray's
        config cache. The staged key file is written again here, before the file mounts are synced, so the head gets
        the key this laptop uses now: a cached config must not ship the key of an earlier run (a rotated key, a
        restarted emulator), which would leave the head's autoscaler unable to rent."""
        from skyward_ray.provider.bootstrap import prepare_head_config, stage_api_key

        stage_api_key(self._api_key(), self.cluster_name)
        return prepare_head_config(cluster_config)


# Fields a node's verdict (failed, interrupted, stuck loading) is drawn from.
_STATE_FIELDS = frozenset({"actual_status", "intended_status", "cur_state", "next_state", "status_msg", "is_bid"})


def unparsed_fields(instance: Instance) -> set[str]:
    """The fields of a row the client had to leave out (they did not parse); empty for a whole row."""
    return {str(problem).split(" ", 1)[0] for problem in getattr(instance, "unparsed_fields", ())}


def _patched(previous: Instance | None, row: Instance, failed: set[str], *, partial: bool) -> Instance:
    """The instance to keep after a list: the row, unless it lost fields that an earlier row had (then those keep
    their earlier values; a row with nothing but id and label keeps the earlier instance whole)."""
    if previous is None or (not partial and not failed):
        return row
    if partial:
        return previous
    update = {name: getattr(row, name) for name in row.model_fields_set if name not in failed}
    return previous.model_copy(update=update)


def is_partial_row(instance: Instance) -> bool:
    """A row the client could not parse, returned with its id and label only (so a labelled node is never lost):
    it still names the node and its tags, but says nothing about its state."""
    return instance.model_fields_set <= {"id", "label"}


def _unpaged_list_missing(exc: VastError) -> bool:
    """Whether an error of the unpaged list says the server does not serve it (rather than that it failed now): a
    404 or 410 without Vast's error code (a route that is gone), a 405, or a body of another shape."""
    if isinstance(exc, ProtocolError):
        return True
    return (exc.status in (404, 410) and exc.error_code is None) or exc.status == 405


def overlay_refused(exc: VastError) -> bool:
    """Whether Vast refused an overlay call as an account without overlays is refused (a 4xx other than a 429),
    rather than failing now. The overlay endpoints are in none of Vast's published API files and the official client
    ships its overlay commands disabled, so an account may well lack them."""
    status = exc.status
    return (status is not None and 400 <= status < 500 and status != 429
            and "/api/v0/overlay/" in (exc.endpoint or ""))


def overlays_unavailable_message(exc: VastError) -> str:
    """The one line ``ray up`` prints when the account has no overlays: what failed with Vast's answer, and the way
    that still works."""
    return (f"Vast refused the overlay network this cluster needs ({exc}); nothing was rented. A multi-node cluster "
            "needs Vast overlays; single-node clusters (provider.use_overlay: false) still work")


# Pending tag writes must reach Vast even when the process ends right after the last set_node_tags (ray up does).
_EXIT_FLUSH: weakref.WeakSet[VastNodeProvider] = weakref.WeakSet()
_EXIT_LOCK = threading.Lock()


def _register_exit_flush(provider: VastNodeProvider) -> None:
    with _EXIT_LOCK:
        first = not _EXIT_FLUSH
        _EXIT_FLUSH.add(provider)
    if first:
        atexit.register(_flush_all_at_exit)


def _flush_all_at_exit(providers: Iterable[VastNodeProvider] | None = None,
                       budget_s: float = EXIT_FLUSH_BUDGET_S) -> None:
    """Close every provider (writing its pending labels) in parallel, within ``budget_s`` in all.

    An unreachable API must not hold the exit of ``ray up`` (or the head's monitor) for minutes of client retries:
    what is not written by then is named in a warning and left (the labels only lag; the next ``ray up`` writes the
    tags again). The closes run in daemon threads, so one still blocked in a call does not hold the interpreter."""
    deadline = time.monotonic() + budget_s
    closing: list[tuple[VastNodeProvider, threading.Thread]] = []
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


def _close_quietly(provider: VastNodeProvider, timeout_s: float) -> None:
    try:
        provider.close(timeout_s)
    except Exception as exc:  # at exit there is no caller to raise to; the warning after the join names the nodes
        log.debug("closing the provider of cluster %r at exit failed: %s", provider.cluster_name, type(exc).__name__)
