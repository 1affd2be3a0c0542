"""Where a launch rents. A multi-node cluster lives on one physical cluster joined by an overlay network: the head's
launch picks the physical cluster that can host the head plus every worker and creates the overlay there; workers
rent on the head's site (from its label, else the overlay list). A single-node cluster rents anywhere."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER

from skyward_ray.errors import SkywardError
from skyward_ray.placement import NodeGroup, NoPlacementError
from skyward_ray.provider.config import HEAD_KIND, VastNodeConfig, VastProviderConfig
from skyward_ray.provider.records import ProviderState, Rental, Site
from skyward_ray.provider.reservations import Reservations
from skyward_ray.provider.tags import TAG_OVERLAY_SUBNET, TAG_PHYSICAL_CLUSTER
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import VastError
from skyward_ray.vast.models import Overlay

log = logging.getLogger(__name__)

OVERLAY_POLL_S = 1.0


class VastLaunchError(SkywardError):
    """A launch could not rent anything; the message says why (placement explanation or rental errors)."""


class SiteChooser:
    """The cluster's site: chosen by the head's launch, found again by every worker launch."""

    def __init__(self, state: ProviderState, config: VastProviderConfig, cluster_name: str, overlay_name: str, *,
                 client: Callable[[], VastClient], reservations: Reservations, refresh: Callable[[], None],
                 clock: Callable[[], float]) -> None:
        self._state = state
        self._config = config
        self._cluster_name = cluster_name
        self.overlay_name = overlay_name
        self._client = client
        self._reservations = reservations
        self._refresh = refresh  # a blocking refresh of the snapshot (failures logged)
        self._clock = clock

    def multi_node(self) -> bool:
        """Whether the cluster can have more than one node, i.e. needs one physical cluster and an overlay."""
        if not self._config.use_overlay:
            return False
        if not self._config.node_types:
            return True  # unknown shape: assume workers will come
        return sum(shape.max_workers for shape in self._config.node_types.values()) > 0

    def head_site(self, node: VastNodeConfig, group_name: str) -> tuple[Site, list[Rental] | None]:
        """Choose the physical cluster for the head and the cluster's workers, and create the overlay there.

        Returns the site and the head's reserved rental from that joint plan (None: plan the head alone)."""
        if not self.multi_node():
            return Site(), None
        overlay = self.find_overlay()
        self._refresh()
        with self._state.lock:
            live = [n for n in self._state.live_nodes() if n.kind == NODE_KIND_WORKER]
        groups = self._cluster_groups(node, group_name)
        pinned = overlay.cluster_id if overlay is not None else None
        plan_site = self._reservations.plan
        try:
            the_plan, rentals = plan_site(groups, group_name, pinned_cluster=pinned, physical_cluster=True)
        except NoPlacementError:
            if overlay is None or live:
                raise
            # A stale overlay from an earlier cluster of this name, with nothing on it: start afresh.
            log.warning("overlay %s (cluster %s) cannot host this cluster and has no nodes: replacing it",
                        overlay.name, overlay.cluster_id)
            self._client().delete_overlay(name=overlay.name)
            overlay = None
            the_plan, rentals = plan_site(groups, group_name, pinned_cluster=None, physical_cluster=True)
        try:
            if overlay is None:
                assert the_plan.cluster_id is not None
                overlay = self._create_overlay(the_plan.cluster_id)
        except BaseException:
            self._reservations.release(rentals)
            raise
        return self._remember(Site(overlay.cluster_id, overlay.name, overlay.internal_subnet)), rentals

    def _cluster_groups(self, head: VastNodeConfig, head_group: str) -> list[NodeGroup]:
        """The head plus every worker type at its max_workers (falls back to min_workers when that cannot fit)."""
        groups = [NodeGroup(name=head_group, accelerator=head.accelerator, gpus_per_node=head.gpus, count=1,
                            allocation=head.allocation_for(HEAD_KIND), include_variants=head.include_variants)]
        for name, shape in self._config.node_types.items():
            if shape.max_workers <= 0:
                continue
            worker = shape.node_config
            group = f"{name} workers" if name == head_group else name  # the head's type may have workers too
            groups.append(NodeGroup(name=group, accelerator=worker.accelerator, gpus_per_node=worker.gpus,
                                    count=shape.max_workers, allocation=worker.allocation_for(NODE_KIND_WORKER),
                                    include_variants=worker.include_variants))
        return groups

    def worker_site(self) -> Site:
        """The head's physical cluster and overlay, from the head's label (or the overlay list)."""
        if not self.multi_node():
            return Site()
        with self._state.lock:
            if self._state.site is not None:
                return self._state.site
        self._refresh()
        with self._state.lock:
            for node in self._state.nodes.values():
                if node.kind == NODE_KIND_HEAD and not node.terminated and node.tags.get(TAG_PHYSICAL_CLUSTER):
                    site = Site(int(node.tags[TAG_PHYSICAL_CLUSTER]), self.overlay_name,
                                node.tags.get(TAG_OVERLAY_SUBNET))
                    if site.subnet:
                        self._state.site = site
                        return site
        overlay = self.find_overlay()
        if overlay is None or overlay.cluster_id is None:
            raise VastLaunchError(f"overlay {self.overlay_name} of cluster {self._cluster_name!r} does not exist: "
                                  "the head creates it (run ray up), workers join it")
        return self._remember(Site(overlay.cluster_id, overlay.name, overlay.internal_subnet))

    def _remember(self, site: Site) -> Site:
        with self._state.lock:
            self._state.site = site
        return site

    def find_overlay(self) -> Overlay | None:
        for overlay in self._client().list_overlays():
            if overlay.name == self.overlay_name:
                return overlay
        return None

    def _create_overlay(self, cluster_id: int) -> Overlay:
        """Create the cluster's overlay on ``cluster_id`` and wait (``overlay_timeout``) until it is listed."""
        log.info("creating overlay %s on physical cluster %s", self.overlay_name, cluster_id)
        try:
            self._client().create_overlay(cluster_id, self.overlay_name)
        except VastError as exc:
            if not exc.outcome_unknown:
                raise
        deadline = self._clock() + self._config.overlay_timeout
        while True:
            overlay = self.find_overlay()
            if overlay is not None and overlay.internal_subnet:
                return overlay
            if self._clock() >= deadline:
                raise VastLaunchError(f"overlay {self.overlay_name} did not appear on physical cluster {cluster_id} "
                                      f"within overlay_timeout={self._config.overlay_timeout} s")
            time.sleep(OVERLAY_POLL_S)


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
