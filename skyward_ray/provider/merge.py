"""Merges one list of the account's instances into the node records (lock held): adopts the cluster's rows, keeps
the last good facts of a row that did not parse, recognises ghosts of lost rentals, forgets destroyed nodes, and asks
the health verdicts what each node's state calls for."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from skyward_ray.provider.health import Health
from skyward_ray.provider.records import Action, NodeRecord, ProviderState
from skyward_ray.provider.tags import TAG_RENTAL, decode_label, is_cluster_label
from skyward_ray.vast.models import Instance

log = logging.getLogger(__name__)

MISSING_GRACE_S = 60.0  # a rented node absent from lists this long is checked with one GET
# Fields a node's verdict (failed, interrupted, stuck loading) is drawn from.
STATE_FIELDS = frozenset({"actual_status", "intended_status", "cur_state", "next_state", "status_msg", "is_bid"})


class SnapshotMerge:
    """One list's merge into the shared records; every method runs with the state lock held."""

    def __init__(self, state: ProviderState, health: Health, cluster_name: str) -> None:
        self._state = state
        self._health = health
        self._cluster_name = cluster_name

    def apply(self, instances: Iterable[Instance], started: float, now: float) -> list[Action]:
        """Merge a list begun at ``started`` and decide what each node's state calls for."""
        state = self._state
        actions: list[Action] = []
        listed: set[str] = set()
        for instance in instances:
            if not is_cluster_label(instance.label, self._cluster_name):
                continue
            decoded = decode_label(instance.label)
            label_tags = decoded[1] if decoded else {}
            nonce = label_tags.get(TAG_RENTAL)
            if nonce in state.ghost_nonces:
                listed.add(str(instance.id))
                actions.extend(self._ghost(instance, label_tags, now))
            elif nonce not in state.inflight:  # an in-flight one: its rental thread registers it with its price
                listed.add(str(instance.id))
                actions.extend(self._row(instance, label_tags, started, now))
        for nonce, failed_at in list(state.unsettled_ghosts.items()):
            if started >= failed_at:  # this list shows the ghost if it exists: the reservation has done its job
                del state.unsettled_ghosts[nonce]
                state.inflight.pop(nonce, None)
        return actions + self._unlisted(listed, started, now)

    def _ghost(self, instance: Instance, label_tags: dict[str, str], now: float) -> list[Action]:
        """A rental we were never told about: billed until destroyed, so it is kept as a terminated node (counted
        against max_hourly_cost, its destroy retried at every refresh until one succeeds)."""
        node_id = str(instance.id)
        node = self._state.nodes.get(node_id)
        if node is None:
            node = self._state.nodes[node_id] = NodeRecord(node_id, label_tags, instance, first_seen=now,
                                                           status_since=now, machine_id=instance.machine_id,
                                                           terminated=True)
            log.warning("Vast instance %s is the ghost of a rental whose answer was lost: destroying it", node_id)
        node.instance = instance
        return self._health.judge(node, now)

    def _row(self, instance: Instance, label_tags: dict[str, str], started: float, now: float) -> list[Action]:
        """Adopt or update one listed node of the cluster."""
        state = self._state
        node_id = str(instance.id)
        state.looked_up.discard(node_id)
        partial = is_partial_row(instance)
        failed = unparsed_fields(instance)
        if (partial or failed) and node_id not in state.odd_rows:
            state.odd_rows.add(node_id)
            log.warning("Vast instance %s of cluster %s: %s did not parse; %s", node_id, self._cluster_name,
                        "its row" if partial else ", ".join(sorted(failed)),
                        "kept as a node from its label (terminating it still destroys it)" if partial else
                        "the last values seen are kept for those")
        node = state.nodes.get(node_id)
        if node is None:
            node = state.nodes[node_id] = NodeRecord(node_id, label_tags, instance, first_seen=now, status_since=now,
                                                     machine_id=instance.machine_id)
        else:
            # A row that did not parse (whole or in part) keeps the facts of the last one that did.
            node.instance = patched(node.instance, instance, failed, partial=partial)
            node.machine_id = node.machine_id or instance.machine_id
            if state.label_is_newer(node_id, started):
                state.set_tags(node, label_tags, now)
        if not partial and not failed & STATE_FIELDS:
            node.state_known = True
        if node.state_known or node.terminated:
            return self._health.judge(node, now)  # no facts, no verdict (a terminated node's destroy is retried)
        return []

    def _unlisted(self, listed: set[str], started: float, now: float) -> list[Action]:
        """Forget the nodes the list no longer shows; give a rented one long missing its one GET."""
        state = self._state
        actions: list[Action] = []
        for node_id, node in list(state.nodes.items()):
            if node_id in listed:
                continue
            if node.first_seen > started:
                continue  # rented (or looked up) after this list began: it cannot be in it yet
            if node.terminated or node.instance is not None:
                state.forget(node_id)  # destroyed: by us, by Ray, or by someone else
            elif now - node.first_seen > MISSING_GRACE_S and node_id not in state.looked_up:
                state.looked_up.add(node_id)
                actions.append(Action("lookup", node_id))
        return actions


def unparsed_fields(instance: Instance) -> set[str]:
    """The fields of a row the client had to leave out (they did not parse); empty for a whole row."""
    return {str(problem).split(" ", 1)[0] for problem in getattr(instance, "unparsed_fields", ())}


def patched(previous: Instance | None, row: Instance, failed: set[str], *, partial: bool) -> Instance:
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
