"""Renting a launch's nodes: choose the site, plan, then rent the plan's offers through the client's pacer in rounds
(an offer taken by someone else sends the missing nodes to a new plan). Every accepted rental is a node at once; a
rental is never repeated after a 5xx or a timeout (its nonce marks a possible ghost)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from click import ClickException
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_NODE_KIND,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray.errors import ConfigError, SkywardError
from skyward_ray.placement import NodeGroup, NoPlacementError
from skyward_ray.provider.config import VastNodeConfig, VastProviderConfig
from skyward_ray.provider.overlay_ip import SUBNET_ENV
from skyward_ray.provider.progress import RentalProgress
from skyward_ray.provider.records import NodeRecord, ProviderState, Rental, Site
from skyward_ray.provider.reservations import Reservations
from skyward_ray.provider.search_cache import OfferCache
from skyward_ray.provider.sites import SiteChooser, VastLaunchError, overlay_refused, overlays_unavailable_message
from skyward_ray.provider.tags import (
    MAX_CREATE_LABEL_LENGTH,
    TAG_OVERLAY_SUBNET,
    TAG_PHYSICAL_CLUSTER,
    TAG_RENTAL,
    encode_label,
)
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import OfferGoneError, VastError
from skyward_ray.vast.models import CreatedInstance, overlay_env_key, port_env_key

log = logging.getLogger(__name__)

# Environment each rented instance gets (never a secret: Vast shows env in its console).
CLUSTER_ENV = "SKYWARD_CLUSTER"
API_URL_ENV = "SKYWARD_VAST_URL"
INSTANCE_TIMEOUT_ENV = "SKYWARD_INSTANCE_TIMEOUT"
# Vast's SSH login attaches tmux unless this file exists; Ray's non-interactive SSH commands need a plain shell.
BASE_ONSTART = "touch ~/.no_auto_tmux"
RENT_ROUNDS = 3  # searches per launch when offers keep being taken by others


class NodeLaunchError(NodeLaunchException, ClickException):
    """What ``create_node`` raises: a NodeLaunchException for Ray's autoscalers (category + description), and a
    ClickException because ``ray up`` (a click app) lets the head's ``create_node`` errors escape: click then prints
    ``Error: <message>`` in one line instead of a traceback."""


@dataclass
class RentOutcome:
    created: list[str] = field(default_factory=list)
    gone: int = 0
    errors: list[str] = field(default_factory=list)


class Renter:
    """One provider's launches, from Ray's ``create_node`` arguments to Vast's ``PUT /asks``."""

    def __init__(self, state: ProviderState, config: VastProviderConfig, cluster_name: str, *,
                 client: Callable[[], VastClient], sites: SiteChooser, reservations: Reservations,
                 offer_cache: OfferCache, clock: Callable[[], float]) -> None:
        self._state = state
        self._config = config
        self._cluster_name = cluster_name
        self._client = client
        self._sites = sites
        self._reservations = reservations
        self._offers = offer_cache
        self._clock = clock

    def launch(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        """Rent ``count`` nodes of one type; returns ``{node_id: {}}`` of those rented. Raises
        :class:`NodeLaunchError` (with a category Ray's autoscaler reports) when none could be rented."""
        if count <= 0:
            return {}
        kind = tags.get(TAG_RAY_NODE_KIND, NODE_KIND_WORKER)
        group_name = tags.get(TAG_RAY_USER_NODE_TYPE) or kind
        try:
            node = VastNodeConfig.from_config(node_config, section="node_config")
            site, reserved = self._site(node, kind, group_name)
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

    def _site(self, node: VastNodeConfig, kind: str, group_name: str) -> tuple[Site, list[Rental] | None]:
        """Where this launch rents, with the head's rental already reserved by the site's joint plan."""
        if kind != NODE_KIND_HEAD:
            return self._sites.worker_site(), None
        try:
            return self._sites.head_site(node, group_name)
        except VastError as exc:
            if not overlay_refused(exc):
                raise
            raise NodeLaunchError("overlay-unavailable", overlays_unavailable_message(exc), None) from None

    def _rent(self, node: VastNodeConfig, kind: str, group_name: str, tags: Mapping[str, str], count: int,
              site: Site, reserved: list[Rental] | None) -> RentOutcome:
        """Rent ``count`` nodes: plan, rent through the pacer, and plan again while offers were taken by others."""
        outcome = RentOutcome()
        progress = RentalProgress(self._client, group_name, count)
        group = NodeGroup(name=group_name, accelerator=node.accelerator, gpus_per_node=node.gpus, count=1,
                          allocation=node.allocation_for(kind), include_variants=node.include_variants)
        rentals = reserved
        for _round in range(RENT_ROUNDS):
            missing = count - len(outcome.created)
            if missing <= 0:
                break
            if rentals is None:
                _, rentals = self._reservations.plan([group.model_copy(update={"count": missing})], group_name,
                                                     pinned_cluster=site.cluster_id,
                                                     physical_cluster=site.cluster_id is not None)
            round_outcome = self._rent_round(node, tags, rentals, site, progress)
            outcome.created += round_outcome.created
            outcome.errors += round_outcome.errors
            outcome.gone += round_outcome.gone
            rentals = None
            if not round_outcome.gone:
                break  # only offers taken by others are worth a new plan
        return outcome

    def _rent_round(self, node: VastNodeConfig, tags: Mapping[str, str], rentals: list[Rental], site: Site,
                    progress: RentalProgress) -> RentOutcome:
        """Rent ``rentals`` at once: each queues on the client's pacer, which starts them one create interval apart
        in the order they asked (no burst for Vast to refuse), so the batch takes (n - 1) x 4.5 s."""
        outcome = RentOutcome()
        progress.starting(len(rentals))
        workers = max(min(len(rentals), self._config.rent_concurrency), 1)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skyward-rent") as pool:
            futures = [pool.submit(self.rent_one, node, tags, rental, site, progress) for rental in rentals]
            for future in futures:
                result = future.result()
                if isinstance(result, str):
                    outcome.created.append(result)
                elif isinstance(result, OfferGoneError):
                    outcome.gone += 1
                else:
                    outcome.errors.append(str(result))
        return outcome

    def rent_one(self, node: VastNodeConfig, tags: Mapping[str, str], rental: Rental, site: Site,
                 progress: RentalProgress | None = None) -> str | Exception:
        """One ``PUT /asks``; returns the new node id, or the error. Never retried here (the client retries a 429,
        which Vast refused before doing anything)."""
        node_tags = {**tags, TAG_RAY_CLUSTER_NAME: self._cluster_name, TAG_RENTAL: rental.nonce}
        if site.cluster_id is not None:
            node_tags[TAG_PHYSICAL_CLUSTER] = str(site.cluster_id)
        if site.subnet:
            node_tags[TAG_OVERLAY_SUBNET] = site.subnet
        try:
            created = self._create_instance(node, node_tags, rental, site)
        except VastError as exc:
            return self._create_failed(rental, exc)
        except BaseException:
            self._reservations.release([rental])
            raise
        node_id = self._register(created, node_tags, rental)
        if progress is not None:
            progress.accepted()
        if self._config.ssh_public_key:
            try:
                self._client().attach_ssh_key(created.new_contract, self._config.ssh_public_key)
            except VastError as exc:
                log.warning("attaching the SSH key to Vast instance %s failed (the account key may do): %s",
                            node_id, exc)
        return node_id

    def _create_instance(self, node: VastNodeConfig, node_tags: dict[str, str], rental: Rental,
                         site: Site) -> CreatedInstance:
        assignment = rental.assignment
        kind = node_tags.get(TAG_RAY_NODE_KIND, NODE_KIND_WORKER)
        return self._client().create_instance(
            assignment.offer_id,
            image=rental.image,
            disk_gb=self._config.disk_gb,
            label=encode_label(self._cluster_name, node_tags, limit=MAX_CREATE_LABEL_LENGTH),
            env=self._instance_env(node, kind, site),
            onstart=BASE_ONSTART + (f"\n{node.onstart}" if node.onstart else ""),
            price=assignment.bid_price,
        )

    def _create_failed(self, rental: Rental, exc: VastError) -> Exception:
        """Settle a refused or lost rental; destroy what a failed create still named. Returns the error to report."""
        offer_id = rental.assignment.offer_id
        if isinstance(exc, OfferGoneError):
            self._offers.gone(rental.assignment.machine_id)
        self._reservations.failed(rental, exc)
        if exc.new_contract is not None:
            destroy_quietly(self._client(), exc.new_contract, f"failed rental of offer {offer_id}")
        if isinstance(exc, OfferGoneError):
            return exc
        return VastLaunchError(f"offer {offer_id}: {exc}")

    def _register(self, created: CreatedInstance, node_tags: dict[str, str], rental: Rental) -> str:
        """Make an accepted rental a node at once (with the price it pays) and settle its reservation."""
        assignment = rental.assignment
        node_id = str(created.new_contract)
        now = self._clock()
        with self._state.lock:
            self._state.nodes[node_id] = NodeRecord(node_id, node_tags, None, first_seen=now, status_since=now,
                                                    machine_id=assignment.machine_id,
                                                    price_per_hour=assignment.price_per_hour)
            self._state.inflight.pop(rental.nonce, None)
        self._offers.rented(rental.nonce)
        log.info("rented Vast instance %s: offer %s on machine %s, $%.4f/h%s", node_id, assignment.offer_id,
                 assignment.machine_id, assignment.price_per_hour, " (bid)" if assignment.is_bid else "")
        return node_id

    def _instance_env(self, node: VastNodeConfig, kind: str, site: Site) -> dict[str, str]:
        env = {**node.env, CLUSTER_ENV: self._cluster_name, API_URL_ENV: self._client().base_url}
        if kind != NODE_KIND_HEAD:
            env[INSTANCE_TIMEOUT_ENV] = str(self._config.instance_timeout)
        if site.overlay_name and site.subnet:
            env[overlay_env_key(site.overlay_name)] = "1"
            env[SUBNET_ENV] = site.subnet
        for port in node.ports:
            env[port_env_key(port)] = "1"
        return env


def destroy_quietly(client: VastClient, instance_id: int, why: str) -> None:
    """Destroy an instance left by a failure, logging (not raising) a failed destroy: the label sweep retries."""
    try:
        client.destroy_instance(instance_id)
        log.warning("destroyed Vast instance %s left by a %s", instance_id, why)
    except VastError as exc:
        log.error("could not destroy Vast instance %s left by a %s (the label sweep retries): %s", instance_id,
                  why, exc)
