"""``VastNodeProvider``: Ray's cluster launcher and autoscaler on Vast.ai (``provider: {type: external, module:
skyward_ray.provider.VastNodeProvider}``). Node ids are Vast instance ids; a node's tags live in its Vast label.

This class holds Ray's NodeProvider contract and delegates: the snapshot (:mod:`.snapshot`, :mod:`.merge`), health
verdicts (:mod:`.health`, :mod:`.actions`), renting (:mod:`.renting`, :mod:`.sites`, :mod:`.reservations`), tag
writes (:mod:`.tag_flush`, :mod:`.exit_flush`), overlay addresses (:mod:`.overlay_addresses`), :mod:`.teardown`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from ray.autoscaler.node_provider import NodeProvider

from skyward_ray.errors import SkywardError
from skyward_ray.provider.actions import ActionRunner
from skyward_ray.provider.bootstrap import bootstrap_config, fill_node_resources, prepare_head_config, stage_api_key
from skyward_ray.provider.command_runner import Endpoint, VastSSHCommandRunner
from skyward_ray.provider.config import VastProviderConfig, overlay_name_for
from skyward_ray.provider.exit_flush import register_exit_flush
from skyward_ray.provider.health import Health
from skyward_ray.provider.merge import SnapshotMerge
from skyward_ray.provider.overlay_addresses import OverlayAddresses, overlay_ip
from skyward_ray.provider.records import NodeRecord, ProviderState
from skyward_ray.provider.renting import Renter
from skyward_ray.provider.reservations import Reservations
from skyward_ray.provider.search_cache import OfferCache
from skyward_ray.provider.sites import SiteChooser
from skyward_ray.provider.snapshot import Snapshot
from skyward_ray.provider.tag_flush import TagFlusher
from skyward_ray.provider.tags import TAG_OVERLAY_SUBNET
from skyward_ray.provider.teardown import Teardown
from skyward_ray.provider.vast_access import VastAccess
from skyward_ray.vast.client import VastClient

log = logging.getLogger(__name__)


class VastNodeProvider(NodeProvider):
    """Ray ``NodeProvider`` for Vast.ai; thread-safe (Ray calls it from its loop, launcher and updater threads)."""

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
        self._access = VastAccess(self.config, client)
        self.state = ProviderState()
        self._lock = self.state.lock  # the one state lock, never held during an API call or a sleep
        self._closing = threading.Event()
        self._build_parts(start_threads)
        if start_threads:
            register_exit_flush(self)

    def _build_parts(self, start_threads: bool) -> None:
        """Wire the parts together; each gets the shared state and the client getter, none holds another's state."""
        config, name, state, clock = self.config, self.cluster_name, self.state, self._clock
        client = self._access.client
        self.offer_cache = OfferCache(lambda query: self.client.search_offers(query), ttl_s=config.search_ttl_s,
                                      clock=clock)
        self.health = Health(state, config, clock)
        self.actions = ActionRunner(state, client, lookup=lambda node_id: self.snapshot.lookup(node_id))
        self.snapshot = Snapshot(state, config, name, client=client, list_stamp=lambda: self._access.list_stamp,
                                 merge=SnapshotMerge(state, self.health, name), dispatch=self.actions.dispatch,
                                 clock=clock, closing=self._closing, start_threads=start_threads)
        self.reservations = Reservations(state, config, self.offer_cache, self.health.excluded_machines, clock)
        self.sites = SiteChooser(state, config, name, config.overlay_name or overlay_name_for(name), client=client,
                                 reservations=self.reservations, refresh=self.refresh, clock=clock)
        self.renter = Renter(state, config, name, client=client, sites=self.sites, reservations=self.reservations,
                             offer_cache=self.offer_cache, clock=clock)
        self.overlay = OverlayAddresses(state, clock)
        self.tag_flusher = TagFlusher(state, config, name, client=client, clock=clock, closing=self._closing,
                                      start_threads=start_threads)
        self.teardown = Teardown(state, config, name, client=client, node=self.snapshot.node,
                                 list_account=self.snapshot.list_account, sites=self.sites, clock=clock)

    @property
    def client(self) -> VastClient:
        """The Vast client (made at its first use)."""
        return self._access.client()

    def refresh(self, *, force: bool = False) -> None:
        """List the account's instances now if the snapshot is older than ``cache_ttl_s`` (one call for all threads).

        Blocking: for callers that need the newest state (a launch choosing its site, tests). Ray's tick and the
        getters never call it after the first list. A failed list is logged and the last snapshot kept."""
        self.snapshot.refresh_quietly(force=force)

    # --- Ray's read API (snapshot only) ----------------------------------------------------------------------------

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        """The snapshot's live nodes (only the first call of a process waits on a list, and raises if it fails
        rather than report an empty cluster)."""
        self.snapshot.current()
        with self._lock:
            return [
                node.node_id
                for node in self.state.live_nodes()
                if all(node.tags.get(key) == value for key, value in tag_filters.items())
            ]

    def _node(self, node_id: str) -> NodeRecord | None:
        return self.snapshot.node(node_id)

    def is_running(self, node_id: str) -> bool:
        node = self._node(node_id)
        with self._lock:
            # Ray starts installing over SSH as soon as this is true; the runner finds the node's overlay address.
            return node is not None and not node.terminated and node.ready

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
                return overlay_ip(node)
            instance = node.instance
            return (instance.local_ipaddrs[0] if instance.local_ipaddrs else None) or instance.public_ipaddr

    # --- overlay addresses and SSH (used by the command runner) ----------------------------------------------------

    def unknown_overlay_subnet(self, node_id: str) -> str | None:
        """The node's overlay subnet when its overlay address is still unknown (the SSH runner then looks)."""
        return self.overlay.unknown_subnet(node_id)

    def learn_node_addresses(self, node_id: str, addresses: Iterable[str]) -> str | None:
        """Record the node's overlay address among ``addresses`` (read on the node) in its tags, so its label carries
        it to every other process. Returns the address, or None when none is in the subnet."""
        address, new = self.overlay.learn(node_id, addresses)
        if new:
            log.info("Vast instance %s: overlay address %s learned on the node", node_id, address)
            self.tag_flusher.wake()
        return address

    def overlay_search(self, node_id: str) -> list[str]:
        """Where on the overlay a node whose overlay address is unknown may answer (empty off the overlay)."""
        return self.overlay.search(node_id)

    def ssh_endpoints(self, node_id: str, use_internal_ip: bool) -> list[Endpoint]:
        """SSH endpoints, best first: the overlay (head -> worker), the direct mapped port, then Vast's proxy."""
        node = self._node(node_id)
        with self._lock:
            if node is None or node.instance is None:
                return []
            candidates: list[Endpoint] = []
            address = overlay_ip(node)
            if use_internal_ip and address:
                candidates.append((address, 22))
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

    # --- tags ------------------------------------------------------------------------------------------------------

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        """Change the tags in memory at once; the flush thread writes the label after ``tag_flush_delay_s``."""
        node = self._node(node_id)
        with self._lock:
            if node is None or node.terminated:
                return
            self.state.set_tags(node, {**node.tags, **tags}, self._clock())
            self.state.dirty.add(node_id)
        self.tag_flusher.wake()

    def flush_tags(self) -> bool:
        """Write every pending label now (one request per changed node). False if some write failed."""
        return self.tag_flusher.flush()

    def unflushed_node_ids(self) -> list[str]:
        """Nodes whose latest tags have not reached Vast yet (pending or in flight)."""
        return self.tag_flusher.unflushed()

    def flush_pending(self, timeout_s: float) -> bool:
        """Write every pending label, retrying failed writes, for up to ``timeout_s``; True when all are written."""
        return self.tag_flusher.flush_pending(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write pending tags and stop the background threads (also run at interpreter exit, so the last tags of
        ``ray up`` reach Vast). A label write in flight is waited for, not cut off."""
        deadline = time.monotonic() + timeout_s
        self._closing.set()
        self.tag_flusher.stop(timeout_s)
        self.flush_pending(max(0.0, deadline - time.monotonic()))
        self.actions.close()

    # --- creating and terminating nodes ----------------------------------------------------------------------------

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any] | None:
        return self.renter.launch(node_config, tags, count)

    def create_node_with_resources_and_labels(
        self,
        node_config: dict[str, Any],
        tags: dict[str, str],
        count: int,
        resources: dict[str, float],
        labels: dict[str, str],
    ) -> dict[str, Any] | None:
        return self.renter.launch(node_config, tags, count)

    def terminate_node(self, node_id: str) -> dict[str, Any] | None:
        return self.terminate_nodes([node_id])

    def terminate_nodes(self, node_ids: list[str]) -> dict[str, Any] | None:
        """Destroy nodes in one bulk request; nodes already gone count as done. They are hidden at once."""
        self.teardown.terminate(node_ids)
        return None

    def cleanup_cluster_resources(self) -> None:
        """After ``ray down``: destroy every instance still carrying the cluster's label (ghosts of failed rentals
        included), then delete the overlay. Bounded; raises if something is left."""
        self.teardown.cleanup()

    # --- config hooks (laptop side) --------------------------------------------------------------------------------

    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        return bootstrap_config(cluster_config)

    @staticmethod
    def fillout_available_node_types_resources(cluster_config: dict[str, Any]) -> dict[str, Any]:
        return fill_node_resources(cluster_config)

    def prepare_for_head_node(self, cluster_config: dict[str, Any]) -> dict[str, Any]:
        """The head's config (see :func:`~skyward_ray.provider.bootstrap.prepare_head_config`).

        Ray calls this on the laptop at every ``ray up``, also when ``bootstrap_config``'s result came from Ray's
        config cache. The staged key file is written again here, before the file mounts are synced, so the head gets
        the key this laptop uses now: a cached config must not ship the key of an earlier run (a rotated key, a
        restarted emulator), which would leave the head's autoscaler unable to rent."""
        stage_api_key(self._access.api_key(), self.cluster_name)
        return prepare_head_config(cluster_config)
