"""What one node costs on one offer, per allocation kind: the one place that knows the bid rule."""

from __future__ import annotations

from dataclasses import dataclass

from skyward_ray.placement.options import Allocation, PlacementOptions
from skyward_ray.vast.models import Offer


@dataclass(frozen=True, slots=True)
class NodePrice:
    per_hour: float
    is_bid: bool  # send ``price=per_hour`` with the rental (an interruptible instance)


def bid_price(offer: Offer, options: PlacementOptions) -> float | None:
    """``min_bid * bid_multiplier`` capped at ``max_bid``; None when the offer takes no bid we may make (its
    ``min_bid`` is missing or above ``max_bid``)."""
    min_bid = offer.min_bid
    if min_bid is None or min_bid < 0:
        return None
    cap = options.max_bid
    if cap is not None and min_bid > cap:
        return None
    bid = min_bid * options.bid_multiplier
    return min(bid, cap) if cap is not None else bid


def on_demand_price(offer: Offer) -> float | None:
    """``dph_total`` when it is an on-demand price, else None. An on-demand search asks ``allocated_storage =
    disk_gb``, so the price includes our disk; a ``type: bid`` search's offer has ``min_bid`` plus storage there and
    is marked ``is_bid``."""
    return None if offer.is_bid else offer.dph_total


def node_price(offer: Offer, allocation: Allocation, options: PlacementOptions) -> NodePrice | None:
    """The price of renting this offer for one node under ``allocation``, or None if that allocation cannot:
    on-demand pays :func:`on_demand_price`, spot bids :func:`bid_price`, spot-if-available bids where it can."""
    if allocation is not Allocation.ON_DEMAND:
        bid = bid_price(offer, options)
        if bid is not None:
            return NodePrice(bid, True)
        if allocation is Allocation.SPOT:
            return None
    on_demand = on_demand_price(offer)
    return NodePrice(on_demand, False) if on_demand is not None else None
