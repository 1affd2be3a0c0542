"""Chaos against a running emulator, through its admin API: ``ChaosActor`` outbids and fails workers, ``Sampler`` reads
the emulator's state (the ledger) for the cluster's $/h, and ``FailNext`` makes chosen requests fail before they reach
the server."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from ray.autoscaler.tags import TAG_RAY_NODE_KIND

from skyward_ray.provider.tags import decode_label, is_cluster_label

log = logging.getLogger("skyward_ray.soak")


class FailNext(httpx.BaseTransport):
    """Forwards every request, except the next ``count`` matching ``method path`` after :meth:`arm`: those get
    ``status`` (Vast's JSON 500 body, or a gateway page) without reaching the server."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self._lock = threading.Lock()
        self._armed: tuple[str, str, int] | None = None
        self._left = 0
        self.fired = 0

    def arm(self, method: str, path: str, status: int, count: int = 1) -> None:
        with self._lock:
            self._armed, self._left = (method, path, status), count

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            armed = self._armed
            hit = armed is not None and self._left > 0 and (request.method, request.url.path) == armed[:2]
            if hit:
                self._left -= 1
                self.fired += 1
        if hit and armed is not None:
            if armed[2] == 500:
                return httpx.Response(500, json={"success": False, "error": "server_error",
                                                 "msg": "Internal Server Error"}, request=request)
            return httpx.Response(armed[2], text="<html>bad gateway</html>", request=request)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def admin(url: str, method: str, path: str, **kwargs: Any) -> Any:
    """One call to the emulator's admin API (``/_emulator/...``); raises on a non-2xx answer."""
    response = httpx.request(method, f"{url}/_emulator/{path.lstrip('/')}", timeout=30, **kwargs)
    response.raise_for_status()
    return response.json()


@dataclass
class Sample:
    """One reading of the emulator's ledger for the cluster."""

    at: float
    billed_dph: float  # what the emulator bills this second: our instances that are running, at their ledger price
    committed_dph: float  # every instance of ours not destroyed and not stopped/failed (loading ones included)
    instances: int
    rows: list[dict[str, Any]] = field(default_factory=list)


def overlay_address(url: str, sampler: Sampler) -> Callable[[str], str | None]:
    """What a node's eth0 holds on its overlay, from the emulator's state (the latest sample, else a fresh dump)."""

    def lookup(node_id: str) -> str | None:
        for dump in (sampler.latest_dump(), None):
            dump = dump if dump is not None else admin(url, "GET", "state/")
            for overlay in dump.get("overlays", []):
                address = overlay.get("members", {}).get(str(node_id))
                if address:
                    return str(address)
        return None

    return lookup


class Sampler:
    """Reads ``/_emulator/state`` periodically: the cluster's $/h from the ledger, and the latest dump for others."""

    def __init__(self, url: str, cluster_name: str, interval_s: float = 0.25) -> None:
        self._url = url
        self._cluster = cluster_name
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.samples: list[Sample] = []
        self.dump: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._loop, name="ledger-sampler", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def latest_dump(self) -> dict[str, Any]:
        with self._lock:
            return self.dump

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.sample()
            except httpx.HTTPError:
                log.exception("sampling the emulator failed")

    def sample(self) -> Sample:
        dump = admin(self._url, "GET", "state/")
        prices = {e["instance_id"]: e["price"] for e in dump["ledger"] if is_cluster_label(e["label"], self._cluster)
                  and e["destroyed_at"] is None}
        billed = committed = 0.0
        count = 0
        rows = []
        for row in dump["instances"]:
            price = prices.get(row["id"])
            if price is None:
                continue
            count += 1
            rows.append({"id": row["id"], "status": row["actual_status"], "intended": row["intended_status"],
                         "price": price, "bid": row["is_bid"], "label": row["label"][-30:]})
            if row["actual_status"] == "running":
                billed += price
            if row["intended_status"] == "running" and row["actual_status"] in (None, "loading", "running"):
                committed += price
        sample = Sample(time.monotonic(), billed, committed, count, rows)
        with self._lock:
            self.dump = dump
            self.samples.append(sample)
        return sample


@dataclass
class ChaosCounts:
    """What the chaos actor did."""

    outbids: int = 0
    offline: int = 0
    exited: int = 0


class ChaosActor:
    """Outbids and fails running workers through the admin API, with a seeded RNG.

    Each tick outbids a random running bid worker with probability ``outbid_p``. Each worker seen running for the
    first time is doomed with probability ``failure_p``: a few seconds later its host goes offline (at most
    ``max_offline`` machines: the emulator never brings one back) or its container exits. Host failures avoid the
    head's machine: ``offline`` takes every instance of a machine down, and a lost head ends the cluster (that is
    ``ray up`` again, not autoscaling)."""

    def __init__(self, url: str, sampler: Sampler, cluster_name: str, head_id: str, *, seed: int,
                 interval_s: float = 1.0, outbid_p: float = 0.15, failure_p: float = 0.05,
                 max_offline: int = 1) -> None:
        self._url = url
        self._sampler = sampler
        self._cluster = cluster_name
        self._head = int(head_id)
        self._rng = random.Random(f"soak-chaos:{seed}")
        self._interval_s = interval_s
        self._outbid_p = outbid_p
        self._failure_p = failure_p
        self._max_offline = max_offline
        self._seen: set[int] = set()
        self._doomed: dict[int, float] = {}  # instance id -> when its host fails
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.counts = ChaosCounts()
        self._thread = threading.Thread(target=self._loop, name="chaos", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _running_workers(self) -> tuple[list[dict[str, Any]], int | None]:
        dump = self._sampler.latest_dump()
        ours = [row for row in dump.get("instances", []) if is_cluster_label(row.get("label"), self._cluster)]
        head_machine = next((row["machine_id"] for row in ours if row["id"] == self._head), None)
        workers = [row for row in ours if row["actual_status"] == "running" and row["id"] != self._head
                   and (decode_label(row["label"]) or ("", {}))[1].get(TAG_RAY_NODE_KIND) == "worker"]
        return workers, head_machine

    def outbid_one(self) -> bool:
        """Outbid one random running bid worker now."""
        workers, _ = self._running_workers()
        bids = [row for row in workers if row.get("is_bid")]
        if not bids:
            return False
        victim = self._rng.choice(bids)
        try:
            admin(self._url, "POST", f"instances/{victim['id']}/outbid/", json={})
        except httpx.HTTPStatusError:
            return False  # destroyed meanwhile
        with self._lock:
            self.counts.outbids += 1
        return True

    def fail_one(self, instance_id: int | None = None) -> bool:
        """Fail the host of ``instance_id`` (or of a random running worker) now, unless it is the head's."""
        workers, head_machine = self._running_workers()
        candidates = [row for row in workers if row["machine_id"] != head_machine
                      and (instance_id is None or row["id"] == instance_id)]
        if not candidates:
            return False
        victim = self._rng.choice(candidates)
        with self._lock:
            kind = "offline" if self.counts.offline < self._max_offline else "exited"
        try:
            admin(self._url, "POST", f"instances/{victim['id']}/fail/", json={"kind": kind})
        except httpx.HTTPStatusError:
            return False
        with self._lock:
            if kind == "offline":
                self.counts.offline += 1
            else:
                self.counts.exited += 1
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._tick()
            except httpx.HTTPError:
                log.exception("chaos action failed")

    def _tick(self) -> None:
        now = time.monotonic()
        workers, _ = self._running_workers()
        for row in workers:
            if row["id"] not in self._seen:
                self._seen.add(row["id"])
                if self._rng.random() < self._failure_p:
                    self._doomed[row["id"]] = now + self._rng.uniform(1.0, 5.0)
        for instance_id, when in list(self._doomed.items()):
            if when <= now:
                del self._doomed[instance_id]
                self.fail_one(instance_id)
        if self._rng.random() < self._outbid_p:
            self.outbid_one()
