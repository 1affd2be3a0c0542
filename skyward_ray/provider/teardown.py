"""Destroying the cluster's instances: Ray's terminate calls (one bulk request, one by one when it fails) and the sweep
after ``ray down`` that destroys every instance still carrying the cluster's label, then deletes the overlay."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from skyward_ray.errors import SkywardError
from skyward_ray.provider.config import VastProviderConfig
from skyward_ray.provider.records import NodeRecord, ProviderState
from skyward_ray.provider.sites import OVERLAY_POLL_S, SiteChooser, overlay_refused
from skyward_ray.provider.tags import is_cluster_label
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import VastError
from skyward_ray.vast.models import Instance

log = logging.getLogger(__name__)


class Teardown:
    """Terminating nodes for Ray, and cleaning up after ``ray down``."""

    def __init__(self, state: ProviderState, config: VastProviderConfig, cluster_name: str, *,
                 client: Callable[[], VastClient], node: Callable[[str], NodeRecord | None],
                 list_account: Callable[[], list[Instance]], sites: SiteChooser, clock: Callable[[], float]) -> None:
        self._state = state
        self._config = config
        self._cluster_name = cluster_name
        self._client = client
        self._node = node
        self._list_account = list_account
        self._sites = sites
        self._clock = clock

    def terminate(self, node_ids: list[str]) -> None:
        """Destroy nodes in one bulk request; nodes already gone count as done. They are hidden at once."""
        to_destroy = self._mark_terminated(node_ids)
        if not to_destroy:
            return
        try:
            client = self._client()
            if len(to_destroy) == 1:
                client.destroy_instance(to_destroy[0])
            else:
                client.destroy_instances(to_destroy)
        except VastError as exc:
            if len(to_destroy) == 1:
                log.error("destroying Vast instance %s failed (retried at the next refresh): %s", to_destroy[0], exc)
                self._state.destroy_ended([str(to_destroy[0])], ok=False)
                return
            log.warning("bulk destroy of %s failed (%s): destroying one by one", to_destroy, exc)
            self._destroy_one_by_one(client, to_destroy)
            return
        except BaseException:
            self._state.destroy_ended([str(i) for i in to_destroy], ok=False)
            raise
        self._state.destroy_ended([str(i) for i in to_destroy], ok=True)

    def _mark_terminated(self, node_ids: list[str]) -> list[int]:
        """Hide the nodes and return the ids whose destroy is to be sent now (none in flight or done already)."""
        now = self._clock()
        to_destroy: list[int] = []
        for node_id in dict.fromkeys(node_ids):
            node = self._node(node_id)
            if node is None:
                continue  # not ours, or already gone
            with self._state.lock:
                node.terminated = True
                self._state.dirty.discard(node_id)
                if node.destroying or node.destroyed:
                    continue  # a destroy is in flight or done: the refresh sends it again if needed
                node.destroying = True
                node.destroy_sent_at = now
            to_destroy.append(int(node_id))
        return to_destroy

    def _destroy_one_by_one(self, client: VastClient, instance_ids: list[int]) -> None:
        for instance_id in instance_ids:
            try:
                client.destroy_instance(instance_id)
            except VastError as one_exc:
                log.error("destroying Vast instance %s failed (retried at the next refresh): %s", instance_id,
                          one_exc)
                self._state.destroy_ended([str(instance_id)], ok=False)
            else:
                self._state.destroy_ended([str(instance_id)], ok=True)

    def cleanup(self) -> None:
        """Destroy every instance still carrying the cluster's label (ghosts of failed rentals included), then delete
        the overlay. Bounded; raises if something is left."""
        leftovers = self._sweep_instances()
        try:
            overlay = self._sites.find_overlay()
        except VastError as exc:
            if not overlay_refused(exc):
                raise
            overlay = None  # an account without overlays has none to delete
            log.info("no overlay to delete (Vast refused listing overlays: %s)", exc)
        if overlay is not None:
            log.info("deleting overlay %s", overlay.name)
            self._client().delete_overlay(name=overlay.name)
        with self._state.lock:
            self._state.site = None
            self._state.nodes.clear()
            self._state.dirty.clear()
        if leftovers:
            raise SkywardError(f"Vast instances {leftovers} of cluster {self._cluster_name!r} could not be "
                               "destroyed; destroy them in the Vast console")

    def _sweep_instances(self) -> list[int]:
        """Destroy the cluster's labelled instances until none is listed or the deadline passes; the ones left."""
        deadline = self._clock() + max(120.0, self._config.overlay_timeout)
        while True:
            leftovers = [i.id for i in self._list_account() if is_cluster_label(i.label, self._cluster_name)]
            if not leftovers or self._clock() >= deadline:
                return leftovers
            log.info("destroying %d leftover instance(s) of cluster %s: %s", len(leftovers), self._cluster_name,
                     leftovers)
            client = self._client()
            try:
                client.destroy_instances(leftovers)
            except VastError:
                for instance_id in leftovers:
                    with contextlib.suppress(VastError):
                        client.destroy_instance(instance_id)
            time.sleep(OVERLAY_POLL_S)
