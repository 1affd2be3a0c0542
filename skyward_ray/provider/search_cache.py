"""Offer searches shared by every launch of one provider, within Vast's budget of 10 searches per minute: answers are
reused for ``search_ttl_s`` (and while launches planned on them still rent), concurrent identical searches coalesce,
and our own rentals and gone offers are subtracted from every cached answer at once."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from skyward_ray.vast.models import Offer

DEFAULT_SEARCH_TTL_S = 30.0
MAX_AGE_TTLS = 3.0  # an answer still in use by a scale-up's rentals is kept at most this many TTLs


def cache_key(query: dict[str, Any]) -> str:
    """The query as a key: canonical JSON without ``machine_id`` and ``limit`` (see the module docstring)."""
    return json.dumps({k: v for k, v in query.items() if k not in ("machine_id", "limit")}, sort_keys=True,
                      default=str)


@dataclass
class _Entry:
    fetched_at: float  # when the search was sent (the answer is at least this fresh)
    limit: int | None
    offers: list[Offer]
    dirty: bool = False
    renting: set[str] = field(default_factory=set)  # nonces of rentals planned on this answer, not yet ended

    @property
    def complete(self) -> bool:
        """Fewer rows than the limit: the whole match, so it serves any larger limit too."""
        return self.limit is None or len(self.offers) < self.limit


@dataclass(frozen=True)
class _Taken:
    """GPUs a plan took on a machine (reserved until the rental ends)."""

    machine_id: int
    gpus: int
    at: float


@dataclass
class SearchStats:
    """What the cache saved: searches sent, answers served from memory, waits on a search already in flight."""

    searches: int = 0
    hits: int = 0
    coalesced: int = 0
    refreshed: int = 0  # searches repeated because a dirty answer could not place a launch
    keys: set[str] = field(default_factory=set)


class OfferCache:
    """Search answers per query, shared for ``ttl_s``; thread-safe (one short lock, never held during a search).

    A scale-up reaches the provider as several ``create_node`` calls (Ray's v2 autoscaler launches batches of at most
    5 nodes, two at a time; a ``spot-if-available`` group needs an on-demand and a bid search), so:

    * an answer serves every launch for ``ttl_s``, and up to ``MAX_AGE_TTLS`` times that while launches planned on it
      are still renting (a 16-node scale-up takes about 70 s at Vast's create pace). The key is the query without
      ``machine_id`` (avoided machines change after every failure; the planner rechecks them) and without ``limit``
      (an answer fetched with a larger limit serves a smaller one);
    * launches that want the same query at the same time wait for one request;
    * a node planned on a machine takes its GPUs off that machine in every answer at once, so two launches never plan
      the same GPU twice; an offer Vast says is gone removes its machine. An answer changed this way is *dirty*: a
      plan that fails on it may search again (:meth:`is_dirty`), while a clean answer that fails is not repeated."""

    def __init__(self, search: Callable[[dict[str, Any]], list[Offer]], *, ttl_s: float = DEFAULT_SEARCH_TTL_S,
                 clock: Callable[[], float]) -> None:
        self._search = search
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, Future[_Entry]] = {}
        self._taken: dict[str, _Taken] = {}  # rental nonce -> GPUs reserved, not yet rented or released
        self._rented: list[_Taken] = []  # rentals that ended in an instance (an answer begun before may lack them)
        self.stats = SearchStats()

    # --- searching -------------------------------------------------------------------------------------------------

    def offers(self, queries: list[dict[str, Any]], *, fresh: bool = False) -> dict[int, Offer]:
        """Every query's offers merged by id (first row per id wins: callers order on-demand queries first).

        Cached answers younger than the TTL are used unless ``fresh``; missing ones are searched concurrently."""
        keyed = [(cache_key(query), query) for query in queries]
        answers: dict[str, list[Offer]] = {}
        to_fetch: list[tuple[str, dict[str, Any]]] = []
        to_await: list[tuple[str, Future[_Entry]]] = []
        mine: dict[str, Future[_Entry]] = {}
        with self._lock:
            now = self._clock()
            for key, query in keyed:
                if key in answers or key in mine:
                    continue
                entry = None if fresh else self._usable(key, query, now)
                if entry is not None:
                    answers[key] = list(entry.offers)
                    self.stats.hits += 1
                elif (pending := self._inflight.get(key)) is not None and not fresh:
                    to_await.append((key, pending))
                    self.stats.coalesced += 1
                else:
                    future: Future[_Entry] = Future()
                    self._inflight[key] = mine[key] = future
                    to_fetch.append((key, query))
        if to_fetch:
            self._fetch_all(to_fetch, mine)
        for key, future in [*to_await, *mine.items()]:
            answers[key] = list(future.result().offers)  # re-raises the search's error
        merged: dict[int, Offer] = {}
        for key, _query in keyed:
            for offer in answers[key]:
                merged.setdefault(offer.id, offer)
        return merged

    def current(self, queries: list[dict[str, Any]], fallback: dict[int, Offer]) -> dict[int, Offer]:
        """The cached answers to ``queries`` as they are now, i.e. with the GPUs that plans made since
        :meth:`offers` returned taken off; ``fallback`` when one of them is no longer cached. Call it in the same
        locked step that plans and :meth:`take`\\ s, so two launches never plan the same GPU."""
        with self._lock:
            entries = [self._entries.get(cache_key(query)) for query in queries]
            if any(entry is None for entry in entries):
                return fallback
            merged: dict[int, Offer] = {}
            for entry in entries:
                assert entry is not None
                for offer in entry.offers:
                    merged.setdefault(offer.id, offer)
            return merged

    def _alive(self, entry: _Entry, now: float) -> bool:
        """Within the TTL, or still in use by a scale-up's rentals (up to ``MAX_AGE_TTLS`` TTLs)."""
        age = now - entry.fetched_at
        return age < self._ttl_s or (bool(entry.renting) and age < MAX_AGE_TTLS * self._ttl_s)

    def _usable(self, key: str, query: dict[str, Any], now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or not self._alive(entry, now):
            return None
        limit = query.get("limit")
        if entry.complete or limit is None or (entry.limit is not None and entry.limit >= limit):
            return entry
        return None

    def _fetch_all(self, to_fetch: list[tuple[str, dict[str, Any]]], futures: dict[str, Future[_Entry]]) -> None:
        if len(to_fetch) == 1:
            self._fetch(*to_fetch[0], futures[to_fetch[0][0]])
            return
        with ThreadPoolExecutor(max_workers=len(to_fetch), thread_name_prefix="skyward-search") as pool:
            for key, query in to_fetch:
                pool.submit(self._fetch, key, query, futures[key])

    def _fetch(self, key: str, query: dict[str, Any], future: Future[_Entry]) -> None:
        started = self._clock()
        try:
            found = self._search(query)
        except BaseException as exc:
            with self._lock:
                self._inflight.pop(key, None)
            future.set_exception(exc)
            return
        with self._lock:
            self.stats.searches += 1
            self.stats.keys.add(key)
            entry = _Entry(started, query.get("limit"), list(found))
            # Rentals this answer may not show yet: those still in flight, and those that landed after it was asked.
            late = [t for t in self._rented if t.at >= started]
            for taken in [*self._taken.values(), *late]:
                entry.offers = _take(entry.offers, taken.machine_id, taken.gpus)
            self._entries[key] = entry
            self._inflight.pop(key, None)
            self._prune(started)
        future.set_result(entry)

    def _prune(self, now: float) -> None:
        """Forget what can no longer matter (lock held): expired answers and rentals older than any answer."""
        for key in [k for k, e in self._entries.items() if not self._alive(e, now)]:
            del self._entries[key]
        oldest = min((e.fetched_at for e in self._entries.values()), default=now)
        self._rented = [t for t in self._rented if t.at >= oldest]

    def is_dirty(self, queries: Iterable[dict[str, Any]]) -> bool:
        """Whether a cached answer to one of ``queries`` was changed by our rentals or by an offer found gone."""
        with self._lock:
            return any(entry.dirty for query in queries if (entry := self._entries.get(cache_key(query))))

    def note_refresh(self) -> None:
        with self._lock:
            self.stats.refreshed += 1

    # --- what our rentals do to the answers ------------------------------------------------------------------------

    def take(self, nonce: str, machine_id: int, gpus: int, queries: Iterable[dict[str, Any]] = ()) -> None:
        """A plan on the answers to ``queries`` reserved ``gpus`` GPUs on ``machine_id`` for rental ``nonce``: no
        later plan sees them, and those answers stay in use until the rental ends."""
        with self._lock:
            taken = _Taken(machine_id, gpus, self._clock())
            self._taken[nonce] = taken
            for query in queries:
                if (used := self._entries.get(cache_key(query))) is not None:
                    used.renting.add(nonce)
            for entry in self._entries.values():
                before = len(entry.offers)
                entry.offers = _take(entry.offers, machine_id, gpus)
                entry.dirty = entry.dirty or len(entry.offers) != before

    def rented(self, nonce: str) -> None:
        """Rental ``nonce`` made an instance: answers asked from now on show it, older ones already do."""
        with self._lock:
            taken = self._taken.pop(nonce, None)
            if taken is not None:
                self._rented.append(_Taken(taken.machine_id, taken.gpus, self._clock()))
            self._ended(nonce)

    def released(self, nonce: str) -> None:
        """Rental ``nonce`` ended without an instance. Its GPUs stay off the cached answers (we cannot tell what
        else changed on that machine); a fresh search shows them again."""
        with self._lock:
            self._taken.pop(nonce, None)
            self._ended(nonce)

    def _ended(self, nonce: str) -> None:
        for entry in self._entries.values():
            entry.renting.discard(nonce)

    def gone(self, machine_id: int) -> None:
        """Vast said an offer on ``machine_id`` is gone: someone else rented there; drop the machine everywhere."""
        with self._lock:
            for entry in self._entries.values():
                before = len(entry.offers)
                entry.offers = [offer for offer in entry.offers if offer.machine_id != machine_id]
                entry.dirty = entry.dirty or len(entry.offers) != before


def _take(offers: list[Offer], machine_id: int, gpus: int) -> list[Offer]:
    """``offers`` after ``gpus`` GPUs of ``machine_id`` were rented: its free count F (the largest ``num_gpus`` among
    its offers) drops by ``gpus``, so offers larger than what is left go."""
    sizes = [offer.num_gpus for offer in offers if offer.machine_id == machine_id]
    if not sizes:
        return offers
    left = max(sizes) - gpus
    return [offer for offer in offers if offer.machine_id != machine_id or offer.num_gpus <= left]
