"""Verdicts on listed nodes: destroy a failed, stuck or unreachable node and avoid its machine for a while; replace
or re-bid an outbid worker; send a terminated node's destroy again. Decided with the state lock held, as
:class:`~skyward_ray.provider.records.Action` s that a background pool carries out."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ray.autoscaler.tags import NODE_KIND_HEAD, STATUS_WAITING_FOR_SSH, TAG_RAY_NODE_STATUS

from skyward_ray.provider.config import InterruptedPolicy, VastProviderConfig
from skyward_ray.provider.records import Action, NodeRecord, ProviderState
from skyward_ray.vast.models import NodeState

log = logging.getLogger(__name__)

DESTROY_RETRY_S = 30.0  # a terminated node still listed after this long is destroyed again


class Health:
    """Node health decisions and the machines they avoid; every method runs with the state lock held."""

    def __init__(self, state: ProviderState, config: VastProviderConfig, clock: Callable[[], float]) -> None:
        self._state = state
        self._config = config
        self._clock = clock

    def judge(self, node: NodeRecord, now: float) -> list[Action]:
        """What a listed node's state calls for. Marks the node terminated when it is to be destroyed."""
        if node.terminated:
            return self._destroy_again(node, now)
        instance = node.instance
        assert instance is not None
        if instance.ready and node.running_since is None:
            node.running_since = now
        if instance.state is NodeState.INTERRUPTED:
            return self._on_interrupted(node, now)
        reason = self._fault(node, now)
        if reason is None:
            return []
        if node.machine_id is not None:
            self._state.avoided_until[node.machine_id] = now + self._config.avoid_machine_s
        log.warning("Vast instance %s (machine %s) %s: destroying it and avoiding its machine for %g s",
                    node.node_id, node.machine_id, reason, self._config.avoid_machine_s)
        return self.terminate(node, now)

    def _destroy_again(self, node: NodeRecord, now: float) -> list[Action]:
        if node.destroying:
            return []
        if node.destroyed and node.destroy_sent_at is not None and now - node.destroy_sent_at <= DESTROY_RETRY_S:
            return []  # Vast accepted the destroy; the list may lag behind it a little
        # The last destroy failed (or Vast still lists it long after accepting one): again, at every refresh, so an
        # instance Ray terminated never stays billed because one call failed.
        node.destroying = True
        node.destroy_sent_at = now
        return [Action("destroy", node.node_id)]

    def _fault(self, node: NodeRecord, now: float) -> str | None:
        """Why the node's machine has failed it (failed, stuck loading, unreachable over SSH), or None."""
        instance = node.instance
        assert instance is not None
        config = self._config
        if instance.state is NodeState.FAILED:
            return f"failed ({instance.actual_status}: {instance.status_msg or 'no message'})"
        if instance.state is NodeState.PENDING and now - node.first_seen > config.loading_timeout_s:
            return f"still {instance.actual_status or 'provisioning'} after {config.loading_timeout_s:g} s"
        if (node.tags.get(TAG_RAY_NODE_STATUS) == STATUS_WAITING_FOR_SSH
                and now - node.status_since > config.ssh_timeout_s):
            return f"unreachable over SSH for {config.ssh_timeout_s:g} s"
        return None

    def _on_interrupted(self, node: NodeRecord, now: float) -> list[Action]:
        instance = node.instance
        assert instance is not None
        config = self._config
        if config.interrupted_policy is InterruptedPolicy.REBID and config.max_bid is not None:
            current = node.price_per_hour or instance.dph_total or 0.0
            market = (instance.min_bid or current) * config.bid_multiplier
            new_bid = min(max(market, current * config.bid_multiplier), config.max_bid)
            if new_bid > current + 1e-9:
                node.price_per_hour = new_bid
                node.rebids += 1
                log.warning("Vast instance %s was outbid at $%.4f/h: raising its bid to $%.4f/h", node.node_id,
                            current, new_bid)
                return [Action("rebid", node.node_id, new_bid)]
            if node.rebids and current >= config.max_bid - 1e-9:
                log.warning("Vast instance %s is outbid at max_bid $%.4f/h: replacing it", node.node_id, current)
            elif node.rebids:
                return []  # our raised bid has not taken effect yet
        if node.kind == NODE_KIND_HEAD:
            log.error("the head (Vast instance %s) was outbid; it is kept (destroying it would end the cluster): "
                      "use allocation on-demand for the head, or interrupted_policy rebid", node.node_id)
            return []
        log.warning("Vast instance %s was outbid: destroying it so the autoscaler replaces it", node.node_id)
        return self.terminate(node, now)

    def terminate(self, node: NodeRecord, now: float) -> list[Action]:
        """Mark the node terminated and decide its destroy."""
        node.terminated = True
        node.destroying = True
        node.destroy_sent_at = now
        self._state.dirty.discard(node.node_id)
        return [Action("destroy", node.node_id)]

    def excluded_machines(self) -> frozenset[int]:
        """The configured exclusions plus the machines still avoided after a failure."""
        now = self._clock()
        for machine_id, until in list(self._state.avoided_until.items()):
            if now >= until:
                del self._state.avoided_until[machine_id]
                log.info("machine %s is no longer avoided (avoid_machine_s=%g elapsed)", machine_id,
                         self._config.avoid_machine_s)
        return frozenset(self._config.excluded_machines) | frozenset(self._state.avoided_until)
