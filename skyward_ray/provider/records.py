"""What the provider knows about the cluster's instances: one record per node, and the tables every part of the
provider shares behind one lock (which is never held during an API call or a sleep)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS

from skyward_ray.placement import NodeAssignment
from skyward_ray.vast.models import Instance


@dataclass
class NodeRecord:
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

    @property
    def ready(self) -> bool:
        """Running with an SSH endpoint: the moment Ray may start installing over SSH (the overlay address is read
        on the node at the first SSH contact, so nobody waits for the API to show it)."""
        return self.instance is not None and self.instance.ready


@dataclass(frozen=True)
class Site:
    """Where a launch rents: a physical cluster and its overlay, or anywhere."""

    cluster_id: int | None = None
    overlay_name: str | None = None
    subnet: str | None = None


@dataclass(frozen=True)
class Rental:
    """One node of a plan, reserved against the budget under ``nonce`` until its rental ends."""

    nonce: str
    assignment: NodeAssignment
    image: str


@dataclass(frozen=True)
class Action:
    """An API call decided under the lock and made outside it."""

    kind: str  # "destroy", "rebid", "lookup"
    node_id: str
    price: float | None = None


@dataclass
class ProviderState:
    """The provider's mutable tables. Every field is read and written with ``lock`` held."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # tags changed in memory, label not written yet
    writing: set[str] = field(default_factory=set)  # label write in flight
    written_at: dict[str, float] = field(default_factory=dict)  # when our last label write ended
    looked_up: set[str] = field(default_factory=set)  # ids given their one GET since they last left the snapshot
    inflight: dict[str, float] = field(default_factory=dict)  # rental nonce -> $/h reserved
    ghost_nonces: set[str] = field(default_factory=set)  # rentals of unknown outcome: an instance with one is a ghost
    # ghost nonce -> when its rental failed: its $/h stays reserved until a list begun after that shows whether the
    # instance exists (then it counts as a terminated node until its destroy succeeds)
    unsettled_ghosts: dict[str, float] = field(default_factory=dict)
    avoided_until: dict[int, float] = field(default_factory=dict)  # machine id -> when it may be rented again
    site: Site | None = None  # the cluster's physical cluster and overlay, once known
    odd_rows: set[str] = field(default_factory=set)  # instances whose rows did not parse whole (logged once each)
    # address -> (instance id, when), as read on the instances themselves by an overlay search
    overlay_claims: dict[str, tuple[str, float]] = field(default_factory=dict)

    def set_tags(self, node: NodeRecord, tags: Mapping[str, str], now: float) -> None:
        """Replace a node's tags (lock held), restarting its SSH deadline when ray-node-status changes."""
        if tags.get(TAG_RAY_NODE_STATUS) != node.tags.get(TAG_RAY_NODE_STATUS):
            node.status_since = now
        node.tags = dict(tags)

    def label_is_newer(self, node_id: str, snapshot_started: float) -> bool:
        """A label may replace memory only when we have no write pending or in flight and the list began after our
        last write ended (else it can still show the label we overwrote); lock held."""
        if node_id in self.dirty or node_id in self.writing:
            return False
        return snapshot_started >= self.written_at.get(node_id, float("-inf"))

    def forget(self, node_id: str) -> None:
        """Drop a node that no longer exists (lock held)."""
        self.nodes.pop(node_id, None)
        self.dirty.discard(node_id)

    def live_nodes(self) -> list[NodeRecord]:
        """Nodes not terminated (lock held)."""
        return [node for node in self.nodes.values() if not node.terminated]

    def committed_per_hour(self) -> float:
        """Billed nodes plus rentals in flight (lock held): what max_hourly_cost is already spent on. A terminated
        node counts until its destroy succeeded: a failed destroy leaves it running and billed."""
        live = sum(node.hourly_cost for node in self.nodes.values() if node.billed)
        return live + sum(self.inflight.values())

    def destroy_ended(self, node_ids: Iterable[str], *, ok: bool) -> None:
        """Record how destroy calls ended (takes the lock): a node stops counting against ``max_hourly_cost`` only
        once Vast accepted its destroy (or said it was gone); after a failure the next refresh sends it again."""
        with self.lock:
            for node_id in node_ids:
                node = self.nodes.get(node_id)
                if node is None:
                    continue
                node.destroying = False
                node.destroyed = node.destroyed or ok
