"""Nodes' overlay addresses as the provider sees them: Vast serves none, so each is read on the node at the first SSH
contact and kept in its tags; until then the SSH runner searches the subnet's free addresses for it."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Iterable

from skyward_ray.provider.overlay_ip import interface_addresses
from skyward_ray.provider.records import NodeRecord, ProviderState
from skyward_ray.provider.tags import TAG_OVERLAY_IP, TAG_OVERLAY_SUBNET

CLAIM_TTL_S = 120.0  # an overlay address met on an instance this process does not know is skipped this long
OVERLAY_SEARCH_MAX = 1022  # addresses of an overlay subnet searched for a node (Vast's overlays are /24s)


def overlay_ip(node: NodeRecord) -> str | None:
    """The overlay address from the API (``local_ipaddrs``), else the one learned on the node (lock held)."""
    subnet = node.tags.get(TAG_OVERLAY_SUBNET)
    if not subnet:
        return None
    listed = node.instance.overlay_ip(subnet) if node.instance is not None else None
    return listed or node.tags.get(TAG_OVERLAY_IP)


class OverlayAddresses:
    """Learned overlay addresses and the search list for unknown ones, on the shared node records."""

    def __init__(self, state: ProviderState, clock: Callable[[], float]) -> None:
        self._state = state
        self._clock = clock

    def unknown_subnet(self, node_id: str) -> str | None:
        """The node's overlay subnet when its overlay address is still unknown (the SSH runner then looks)."""
        with self._state.lock:
            node = self._state.nodes.get(node_id)
            if node is None or node.terminated or overlay_ip(node) is not None:
                return None
            return node.tags.get(TAG_OVERLAY_SUBNET)

    def learn(self, node_id: str, addresses: Iterable[str]) -> tuple[str | None, bool]:
        """Record the node's address among ``addresses`` (read on the node) in its tags, marked for writing. Returns
        the address (None when none is in the subnet) and whether it is new. An address read on an instance this
        process does not know yet is remembered as taken, so an overlay search skips it."""
        texts = list(addresses)
        state = self._state
        with state.lock:
            state.overlay_claims.update(dict.fromkeys(texts, (node_id, self._clock())))
            node = state.nodes.get(node_id)
            subnet = node.tags.get(TAG_OVERLAY_SUBNET) if node is not None else None
            if node is None or not subnet:
                return None, False
            network = ipaddress.ip_network(subnet, strict=False)
            for text in texts:
                try:
                    address = ipaddress.ip_address(text)
                except ValueError:
                    continue
                if address in network:
                    if node.tags.get(TAG_OVERLAY_IP) == str(address):
                        return str(address), False  # known already: nothing to write
                    node.tags[TAG_OVERLAY_IP] = str(address)
                    state.dirty.add(node_id)
                    return str(address), True
        return None, False

    def search(self, node_id: str) -> list[str]:
        """Where on the overlay a node whose overlay address is unknown may answer: every address of its subnet that
        neither this process nor a known node holds. Empty when the address is known, or when this process is not on
        the overlay (the laptop reads it over the public endpoint instead)."""
        with self._state.lock:
            node = self._state.nodes.get(node_id)
            if node is None or node.terminated or overlay_ip(node) is not None:
                return []
            subnet = node.tags.get(TAG_OVERLAY_SUBNET)
            if not subnet:
                return []
            taken = self._taken(node)
        try:
            network = ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            return []
        local = {str(iface.ip) for _, iface in interface_addresses()}
        if not any(ipaddress.ip_address(address) in network for address in local):
            return []  # not on this overlay: nothing there is reachable from here
        hosts = itertools.islice(network.hosts(), OVERLAY_SEARCH_MAX)
        return [str(address) for address in hosts if str(address) not in taken and str(address) not in local]

    def _taken(self, node: NodeRecord) -> set[str]:
        """Addresses held by live nodes, or claimed lately by an instance this process does not know (one rented by
        another process); lock held. A destroyed node's address may be handed out again, so it is searched."""
        now = self._clock()
        taken = set()
        for address, (claimer, at) in self._state.overlay_claims.items():
            holder = self._state.nodes.get(claimer)
            if (holder is not None and not holder.terminated) or (holder is None and now - at < CLAIM_TTL_S):
                taken.add(address)
        for other in self._state.nodes.values():
            if other is not node and not other.terminated:
                address = overlay_ip(other)
                if address:
                    taken.add(address)
        return taken
