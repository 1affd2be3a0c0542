"""The exact search behind :func:`~skyward_ray.placement.planner.plan`: the cheapest nodes, on one physical cluster
when asked, within each machine's free GPUs. Costs are integers so ties are exact, and the same offers always give
the same plan whatever their order.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from skyward_ray.placement.filters import OfferFilter
from skyward_ray.placement.options import Allocation, PlacementOptions
from skyward_ray.placement.pricing import NodePrice, node_price
from skyward_ray.placement.request import PlacementRequest, Scope
from skyward_ray.vast.models import Offer

MICRO = 1_000_000
# A node's cost key is ``price in micro-$/h * REL_SCALE - reliability in millionths``: summed over nodes, it orders
# plans by total price, then by summed reliability; remaining ties go to the lower cluster, machine and offer id.
REL_SCALE = 10**10  # > MAX_NODES * MICRO, so summed reliability never outweighs one micro-dollar


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def machine_slots(free_gpus: int, gpus_per_node: int) -> int:
    """How many nodes of ``gpus_per_node`` GPUs one machine with ``free_gpus`` free GPUs can take, alone.

    A machine with F free GPUs shows one offer per count in {1, 2, 4, 8, ...} up to F, plus F itself (inferred from
    Vast; the emulator does the same), so F is the largest ``num_gpus`` among its offers, and k nodes of g GPUs rent
    the same g-GPU offer k times. With g a power of two that works in any order while the nodes' GPUs add up to at
    most F; any other g is offered only while F == g, so such a node must be alone on its machine.
    """
    if is_power_of_two(gpus_per_node):
        return free_gpus // gpus_per_node
    return 1 if free_gpus >= gpus_per_node else 0


def micro(value: float) -> int:
    return round(value * MICRO)


def majority_country(offers: Iterable[Offer]) -> str | None:
    """The most common country among offers (ties: alphabetical), naming where a cluster is."""
    counts = Counter(offer.country_code for offer in offers if offer.country_code)
    return min(counts, key=lambda code: (-counts[code], code)) if counts else None


def budget_micro(options: PlacementOptions, already_committed_per_hour: float) -> int | None:
    """What ``max_hourly_cost`` leaves for this request, in micro-$/h (None: no cap)."""
    if options.max_hourly_cost is None:
        return None
    return micro(options.max_hourly_cost - already_committed_per_hour)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One offer usable for one group, with its price."""

    offer: Offer
    price: NodePrice
    price_micro: int
    key: int  # price_micro * REL_SCALE - reliability in millionths

    @property
    def order(self) -> tuple[int, int]:
        return self.key, self.offer.id


def make_candidate(offer: Offer, price: NodePrice) -> Candidate:
    price_micro = micro(price.per_hour)
    reliability = min(max(offer.effective_reliability, 0.0), 1.0)
    return Candidate(offer, price, price_micro, price_micro * REL_SCALE - micro(reliability))


@dataclass
class Market:
    """The offers one request can use: per group, the best candidate per machine; and every machine's free GPUs."""

    filters: list[OfferFilter]
    counts: tuple[int, ...]
    gpus: tuple[int, ...]
    free_gpus: dict[int, int]
    candidates: list[dict[int, Candidate]]  # per group: machine_id -> candidate
    scope: Scope

    @property
    def total_nodes(self) -> int:
        return sum(self.counts)


_SharedCheck = tuple[int, Callable[[Offer], bool], list[tuple[Allocation, dict[int, Candidate]]]]


def collect(
    request: PlacementRequest,
    options: PlacementOptions,
    offers: Iterable[Offer],
    *,
    budget_micro: int | None = None,
) -> Market:
    """One pass over the offers: re-check each against each group's filters, price it, and note free GPUs."""
    filters = OfferFilter.for_request(request, options)
    free_gpus: dict[int, int] = {}
    candidates: list[dict[int, Candidate]] = [{} for _ in filters]
    # Groups with the same accelerator and size (a head and its workers) pass or fail the same offers: check once.
    shared: dict[tuple[frozenset[str], int], _SharedCheck] = {}
    for index, (offer_filter, group) in enumerate(zip(filters, request.groups, strict=True)):
        entry = shared.setdefault(
            (offer_filter.gpu.keys, offer_filter.gpus), (offer_filter.gpus, offer_filter.accepts, [])
        )
        entry[2].append((group.allocation, candidates[index]))
    checks = list(shared.values())
    free_of = free_gpus.get
    for offer in offers:
        machine = offer.machine_id
        size = offer.num_gpus
        if size > free_of(machine, 0):
            free_gpus[machine] = size
        for gpus, accepts, members in checks:
            if size != gpus or not accepts(offer):
                continue
            for allocation, per_machine in members:
                price = node_price(offer, allocation, options)
                if price is None:
                    continue
                candidate = make_candidate(offer, price)
                if budget_micro is not None and candidate.price_micro > budget_micro:
                    continue
                current = per_machine.get(machine)
                if current is None or candidate.order < current.order:
                    per_machine[machine] = candidate
    return Market(
        filters=filters,
        counts=tuple(group.count for group in request.groups),
        gpus=tuple(group.gpus_per_node for group in request.groups),
        free_gpus=free_gpus,
        candidates=candidates,
        scope=request.scope(options),
    )


@dataclass(frozen=True)
class Pick:
    group: int
    candidate: Candidate
    nodes: int


@dataclass(frozen=True)
class Solution:
    cluster_id: int | None
    key: int
    price_micro: int
    picks: tuple[Pick, ...]

    @property
    def per_hour(self) -> float:
        return sum(pick.candidate.price.per_hour * pick.nodes for pick in self.picks)

    @property
    def offers(self) -> list[Offer]:
        return [pick.candidate.offer for pick in self.picks]

    @property
    def order(self) -> tuple[int, int]:
        return self.key, -1 if self.cluster_id is None else self.cluster_id


@dataclass
class Bucket:
    """The candidates of one physical cluster (or of the whole market when nodes may go anywhere)."""

    cluster_id: int | None
    candidates: list[list[Candidate]] = field(default_factory=list)  # per group


def buckets(market: Market) -> list[Bucket]:
    by_cluster: dict[int | None, Bucket] = {}
    groups = len(market.counts)
    for index, per_machine in enumerate(market.candidates):
        for candidate in per_machine.values():
            cluster = None if market.scope is Scope.FREE else candidate.offer.cluster_id
            bucket = by_cluster.get(cluster)
            if bucket is None:
                bucket = by_cluster[cluster] = Bucket(cluster, [[] for _ in range(groups)])
            bucket.candidates[index].append(candidate)
    return list(by_cluster.values())


def _order(candidate: Candidate) -> tuple[int, int]:
    return candidate.key, candidate.offer.id


def greedy(
    candidates: Sequence[Candidate], need: int, gpus: int, free_gpus: dict[int, int]
) -> list[tuple[Candidate, int]] | None:
    """The cheapest ``need`` slots of one group, optimal for a group alone: each machine is identical slots at one
    cost (each candidate machine has at least one slot, so ``need`` machines always suffice)."""
    picks: list[tuple[Candidate, int]] = []
    left = need
    for candidate in heapq.nsmallest(need, candidates, key=_order):
        nodes = min(machine_slots(free_gpus[candidate.offer.machine_id], gpus), left)
        if nodes > 0:
            picks.append((candidate, nodes))
            left -= nodes
        if left == 0:
            return picks
    return None


def capacity(candidates: Sequence[Candidate], gpus: int, free_gpus: dict[int, int]) -> int:
    """How many nodes of one group these machines could take, the group alone."""
    return sum(machine_slots(free_gpus[candidate.offer.machine_id], gpus) for candidate in candidates)


def _allocations(
    offered: list[Candidate | None], free: int, gpus: tuple[int, ...], counts: tuple[int, ...]
) -> list[tuple[tuple[int, ...], int]]:
    """Every non-empty way to put nodes of several groups on one machine (``offered``: each group's candidate on it,
    or None), with its cost."""
    ranges = [
        range(1) if candidate is None else range(min(machine_slots(free, gpus[index]), counts[index]) + 1)
        for index, candidate in enumerate(offered)
    ]
    result = []
    for vector in itertools.product(*ranges):
        total = sum(vector)
        if total == 0:
            continue
        if total > 1 and any(nodes and not is_power_of_two(gpus[index]) for index, nodes in enumerate(vector)):
            continue  # a node of a non-power-of-two size must be alone on its machine
        if sum(nodes * gpus[index] for index, nodes in enumerate(vector)) > free:
            continue
        cost = sum(nodes * candidate.key for nodes, candidate in zip(vector, offered, strict=True) if candidate)
        result.append((vector, cost))
    return result


def exact(bucket: Bucket, market: Market) -> list[Pick] | None:
    """The cheapest joint placement of several groups on this bucket's machines: a dynamic program over machines
    whose state is the nodes still needed per group. Only each group's N cheapest machines can matter (N = all nodes
    in the request): a plan using a worse one leaves one of those N empty, which takes that node for no more cost."""
    counts, gpus, total = market.counts, market.gpus, market.total_nodes
    per_machine: dict[int, list[Candidate | None]] = {}
    for index, candidates in enumerate(bucket.candidates):
        for candidate in heapq.nsmallest(total, candidates, key=_order):
            slots = per_machine.setdefault(candidate.offer.machine_id, [None] * len(counts))
            slots[index] = candidate
    # state: nodes still needed per group -> (cost, picks so far)
    states: dict[tuple[int, ...], tuple[int, tuple[tuple[int, tuple[int, ...]], ...]]] = {counts: (0, ())}
    for machine in sorted(per_machine):
        choices = _allocations(per_machine[machine], market.free_gpus[machine], gpus, counts)
        updated = dict(states)
        for state, (cost, picks) in states.items():
            for vector, extra in choices:
                if any(nodes > need for nodes, need in zip(vector, state, strict=True)):
                    continue
                next_state = tuple(need - nodes for need, nodes in zip(state, vector, strict=True))
                next_cost = cost + extra
                current = updated.get(next_state)
                if current is None or next_cost < current[0]:
                    updated[next_state] = (next_cost, (*picks, (machine, vector)))
        states = updated
    done = states.get(tuple(0 for _ in counts))
    if done is None:
        return None
    return [
        Pick(index, candidate, nodes)
        for machine, vector in done[1]
        for index, (nodes, candidate) in enumerate(zip(vector, per_machine[machine], strict=True))
        if nodes and candidate is not None
    ]


def _solution(cluster_id: int | None, picks: list[Pick]) -> Solution:
    return Solution(
        cluster_id=cluster_id,
        key=sum(pick.candidate.key * pick.nodes for pick in picks),
        price_micro=sum(pick.candidate.price_micro * pick.nodes for pick in picks),
        picks=tuple(sorted(picks, key=lambda pick: (pick.group, pick.candidate.key, pick.candidate.offer.id))),
    )


def solve(market: Market, *, keep: int = 1, budget_micro: int | None = None) -> list[Solution]:
    """The ``keep`` best plans, one per cluster (or one plan when nodes may go anywhere), cheapest first. Clusters
    are visited by a lower bound (each group priced alone); the search stops once the bound exceeds the last plan
    worth keeping."""
    if market.scope is Scope.FREE:
        keep = 1
    bounded = []
    for bucket in buckets(market):
        alone = []
        for index, candidates in enumerate(bucket.candidates):
            picks = greedy(candidates, market.counts[index], market.gpus[index], market.free_gpus)
            if picks is None:
                break
            alone.append([Pick(index, candidate, nodes) for candidate, nodes in picks])
        else:
            bound = sum(pick.candidate.key * pick.nodes for picks in alone for pick in picks)
            bounded.append((bound, -1 if bucket.cluster_id is None else bucket.cluster_id, bucket, alone))
    bounded.sort(key=lambda item: (item[0], item[1]))
    kept: list[Solution] = []
    for bound, _, bucket, alone in bounded:
        if len(kept) >= keep and bound > kept[keep - 1].key:
            break
        if budget_micro is not None and -(-bound // REL_SCALE) > budget_micro:
            break  # every later cluster costs at least this bound's price
        if len(alone) == 1:
            picks: list[Pick] | None = alone[0]
        else:
            picks = exact(bucket, market)
        if picks is None:
            continue
        solution = _solution(bucket.cluster_id, picks)
        if budget_micro is not None and solution.price_micro > budget_micro:
            continue
        kept.append(solution)
        kept.sort(key=lambda item: item.order)
        del kept[keep:]
    return kept


def best_solution(
    request: PlacementRequest, options: PlacementOptions, offers: Iterable[Offer], already_committed_per_hour: float
) -> Solution | None:
    """The cheapest plan within what ``max_hourly_cost`` leaves, or None: whether (and how) a request places."""
    budget = budget_micro(options, already_committed_per_hour)
    solutions = solve(collect(request, options, offers, budget_micro=budget), keep=1, budget_micro=budget)
    return solutions[0] if solutions else None
