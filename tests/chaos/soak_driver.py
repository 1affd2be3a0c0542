"""The soak's moving parts: Ray v2's call pattern against a provider, the chaos it runs in, and what it measures.

``MiniAutoscaler`` calls ``VastNodeProvider`` the way Ray 2.60's autoscaler v2 does (reference ray-node-provider.md
1.3/1.4/6): a reconcile thread lists ``non_terminated_nodes({})`` and reads ``node_tags``/``is_running`` per node;
launches go to a launcher pool (``create_node_with_resources_and_labels``, ``count=1``, a fresh launch-request id
each); terminations to an adapter thread (``terminate_nodes``); installs to installer threads (``internal_ip``,
``is_terminated``, four ``set_node_tags``). Its state is in memory only, as v2's instance manager: ``restart()``
drops it and builds a new provider, which must rebuild everything from Vast.

``CountingTransport`` counts every status the client sees (the 429s, 5xx and lost answers come from the emulator's
faults), so the report can say how many API errors the provider absorbed.
``ChaosActor`` outbids and fails workers through the emulator's admin API; ``Sampler`` reads the emulator's state
(the ledger) for the cluster's $/h.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import (
    STATUS_SETTING_UP,
    STATUS_SYNCING_FILES,
    STATUS_UNINITIALIZED,
    STATUS_UP_TO_DATE,
    STATUS_UPDATE_FAILED,
    STATUS_WAITING_FOR_SSH,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_RUNTIME_CONFIG,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.provider.tags import decode_label, is_cluster_label
from skyward_ray.vast.client import VastClient

log = logging.getLogger("skyward_ray.soak")

class CountingTransport(httpx.BaseTransport):
    """A real HTTP transport that counts every status the client sees, errors it then absorbs included."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self._lock = threading.Lock()
        self.statuses: Counter[int] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        with self._lock:
            self.statuses[response.status_code] += 1
        return response

    def close(self) -> None:
        self._inner.close()


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


@dataclass
class Cluster:
    """The names and node configs both sides agree on."""

    name: str
    head_config: dict[str, Any]
    worker_config: dict[str, Any]
    worker_type: str = "gpu"
    head_type: str = "head"

    def head_tags(self) -> dict[str, str]:
        return {TAG_RAY_NODE_KIND: "head", TAG_RAY_USER_NODE_TYPE: self.head_type,
                TAG_RAY_NODE_STATUS: STATUS_UNINITIALIZED, TAG_RAY_LAUNCH_CONFIG: "1" * 40,
                TAG_RAY_NODE_NAME: f"ray-{self.name}-head"}

    def worker_tags(self, request_id: str) -> dict[str, str]:
        return {TAG_RAY_NODE_KIND: "worker", TAG_RAY_USER_NODE_TYPE: self.worker_type,
                TAG_RAY_NODE_STATUS: STATUS_UNINITIALIZED, TAG_RAY_LAUNCH_CONFIG: "2" * 40,
                TAG_RAY_LAUNCH_REQUEST: request_id, TAG_RAY_NODE_NAME: f"ray-{self.name}-worker"}


class ProviderFactory:
    """Makes providers whose clients go through a :class:`CountingTransport`; closes all of them at the end."""

    def __init__(self, config: dict[str, Any], cluster: Cluster, api_key: str) -> None:
        self.config = config
        self.cluster = cluster
        self._api_key = api_key
        self.transports: list[CountingTransport] = []
        self.clients: list[VastClient] = []
        self.providers: list[VastNodeProvider] = []

    def new(self) -> VastNodeProvider:
        transport = CountingTransport()
        client = VastClient(api_key=self._api_key, base_url=self.config["api_url"], transport=transport,
                            min_interval_s=self.config.get("api_min_interval_s", 0.0))
        provider = VastNodeProvider(self.config, self.cluster.name, client=client)
        self.transports.append(transport)
        self.clients.append(client)
        self.providers.append(provider)
        return provider

    def statuses(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for transport in self.transports:
            total.update(transport.statuses)
        return total

    def close(self) -> None:
        for provider in self.providers:
            provider.close()
        for client in self.clients:
            client.close()


def ray_up(provider: VastNodeProvider, cluster: Cluster, *, attempts: int = 5, timeout_s: float = 60.0) -> str:
    """``ray up`` for a new head (commands.py 3.2): create, poll ``non_terminated_nodes(head tags)``, then the
    updater's four status writes. A failed create is retried as a user re-running ``ray up`` would."""
    tags = cluster.head_tags()
    deadline = time.monotonic() + timeout_s
    for _ in range(attempts):
        heads = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: "head"})
        if not heads:
            try:
                provider.create_node(cluster.head_config, dict(tags), 1)
            except NodeLaunchException as exc:
                log.warning("ray up: head launch failed (%s); running ray up again", exc.description)
                continue
        while time.monotonic() < deadline:
            heads = provider.non_terminated_nodes(tags)
            if len(heads) == 1 and provider.is_running(heads[0]):
                head = heads[0]
                for status in (STATUS_WAITING_FOR_SSH, STATUS_SYNCING_FILES, STATUS_SETTING_UP, STATUS_UP_TO_DATE):
                    provider.set_node_tags(head, {TAG_RAY_NODE_STATUS: status})
                if not provider.flush_tags():
                    provider.flush_tags()
                return head
            if not heads:
                break  # the head failed and was destroyed: ray up again
            time.sleep(0.1)
    raise AssertionError(f"ray up did not bring up one running head in {attempts} attempts / {timeout_s} s")


@dataclass
class Tick:
    """What one reconcile saw."""

    at: float
    workers: int  # non-terminated worker nodes
    ready: int  # of those: running and up-to-date
    head: bool
    inflight: int


@dataclass
class AutoscalerStats:
    launches: int = 0
    launched_nodes: int = 0
    launch_failures: Counter[str] = field(default_factory=Counter)
    failure_messages: Counter[str] = field(default_factory=Counter)
    terminations: int = 0
    installs: int = 0
    install_failures: int = 0
    reconciles: int = 0
    reconcile_errors: int = 0
    slowest_reconcile_s: float = 0.0


class MiniAutoscaler:
    """Ray v2's provider call pattern with a settable worker target. Thread-safe; ``stop()`` joins everything."""

    def __init__(self, make_provider: Callable[[], VastNodeProvider], cluster: Cluster, *,
                 interval_s: float = 0.25, launchers: int = 4, installers: int = 4,
                 install_step_s: float = 0.05, eth0: Callable[[str], str | None] | None = None) -> None:
        self._make_provider = make_provider
        self._eth0 = eth0
        self.cluster = cluster
        self.interval_s = interval_s
        self._launchers = launchers
        self._install_step_s = install_step_s
        self._lock = threading.Lock()
        self._paused = threading.Event()
        self._stop = threading.Event()
        self.stats = AutoscalerStats()
        self.ticks: list[Tick] = []
        self.launched_ids: set[str] = set()  # node ids create calls returned (any generation)
        self._target = 0
        self._all_futures: list[Future[Any]] = []
        self._pools: list[ThreadPoolExecutor] = []
        self._installer_pool = self._pool(installers, "ray-installer")
        self._adapter = self._pool(1, "NodeProviderAdapter")
        self._new_generation()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)

    # --- generations (one per monitor process) ---------------------------------------------------------------------

    def _pool(self, workers: int, name: str) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._pools.append(pool)
        return pool

    def _new_generation(self) -> None:
        self.provider = self._make_provider()
        self._launcher_pool = self._pool(self._launchers, "NodeLauncherPool")
        self._inflight = 0
        self._installing: set[str] = set()
        self._terminating: set[str] = set()
        self._generation = getattr(self, "_generation", 0) + 1

    def restart(self) -> tuple[VastNodeProvider, VastNodeProvider, float]:
        """The monitor process restarts. Installs in flight end first (the restart waits for them, so tag checks
        are exact); the old provider's atexit flush runs; then the process is gone: queued launches never start,
        its client refuses every further request (a launch mid-search fails, a rental already sent completes on
        the market unseen); a new provider starts from Vast alone.

        Returns (old, new, the $/h the old process had reserved for rentals in flight when it died): those may
        land without the new process knowing, which no provider can prevent."""
        self._paused.set()
        with self._lock:
            installing = [f for f in self._all_futures if getattr(f, "kind", "") == "install" and not f.done()]
        wait(installing, timeout=60)
        with self._lock:
            old = self.provider
            old_pool = self._launcher_pool
            self._new_generation()
            new = self.provider
        old_pool.shutdown(wait=False, cancel_futures=True)
        # The atexit flush: waits for a label write the flusher has in flight and retries a failed one, so closing
        # the client below cuts off launches only, never the last tags.
        assert old.flush_pending(timeout_s=30), f"old tags never reached Vast: {old.unflushed_node_ids()}"
        old.client.close()
        with old._lock:  # private, read once: what the dead process had on the wire
            inflight = sum(old.state.inflight.values())
        old.close()
        self._paused.clear()
        return old, new, inflight

    # --- control ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def target(self) -> int:
        with self._lock:
            return self._target

    def set_target(self, workers: int) -> None:
        with self._lock:
            self._target = workers

    def stop(self, timeout_s: float = 120.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._lock:  # wait() never sees a future cancelled by shutdown(cancel_futures=True) as done
            futures = [f for f in self._all_futures if not f.cancelled()]
        _, pending = wait(futures, timeout=timeout_s)
        if pending:
            frames = sys._current_frames()
            stacks = "\n".join(f"--- {thread.name}\n" + "".join(traceback.format_stack(frames[thread.ident]))
                               for thread in threading.enumerate() if thread.ident in frames)
            raise AssertionError(f"{len(pending)} provider calls ({[getattr(f, 'kind', '?') for f in pending]}) still "
                                 f"running {timeout_s} s after the autoscaler stopped:\n{stacks}")
        for pool in self._pools:
            pool.shutdown(wait=True)

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    def latest(self) -> Tick | None:
        with self._lock:
            return self.ticks[-1] if self.ticks else None

    # --- the reconcile loop ----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._paused.is_set():
                continue
            started = time.monotonic()
            try:
                self._reconcile()
            except Exception:  # v2 logs reconcile errors and carries on (v2/autoscaler.py:230)
                log.exception("reconcile failed")
                with self._lock:
                    self.stats.reconcile_errors += 1
            with self._lock:
                self.stats.reconciles += 1
                self.stats.slowest_reconcile_s = max(self.stats.slowest_reconcile_s, time.monotonic() - started)

    def _reconcile(self) -> None:
        with self._lock:
            provider, generation = self.provider, self._generation
        nodes = provider.non_terminated_nodes({})
        views = {node_id: (provider.node_tags(node_id), provider.is_running(node_id)) for node_id in nodes}
        workers = {n: v for n, v in views.items() if v[0].get(TAG_RAY_NODE_KIND) == "worker"}
        head = any(v[0].get(TAG_RAY_NODE_KIND) == "head" for v in views.values())
        ready = [n for n, (tags, running) in workers.items()
                 if running and tags.get(TAG_RAY_NODE_STATUS) == STATUS_UP_TO_DATE]
        with self._lock:
            if generation != self._generation:
                return
            self.ticks.append(Tick(time.monotonic(), len(workers), len(ready), head, self._inflight))
            for node_id, (tags, running) in workers.items():
                if running and tags.get(TAG_RAY_NODE_STATUS) == STATUS_UNINITIALIZED and \
                        node_id not in self._installing:
                    self._installing.add(node_id)
                    self._submit(self._installer_pool, "install", self._install, provider, node_id, generation)
            live = [n for n in workers if n not in self._terminating]
            missing = self._target - len(live) - self._inflight
            for _ in range(max(0, missing)):
                self._inflight += 1
                self._submit(self._launcher_pool, "launch", self._launch, provider, generation)
            excess = len(live) + self._inflight - self._target
            if excess > 0 and live:
                # Like v2's scheduler: nodes not yet serving go first, then the newest.
                order = sorted(live, key=lambda n: (n in ready, int(n)))
                victims = order[: min(excess, len(live))]
                self._terminating.update(victims)
                self._submit(self._adapter, "terminate", self._terminate, provider, victims)

    def _submit(self, pool: ThreadPoolExecutor, kind: str, fn: Callable[..., Any], *args: Any) -> None:
        future = pool.submit(fn, *args)
        future.kind = kind  # type: ignore[attr-defined]
        self._all_futures.append(future)

    def _launch(self, provider: VastNodeProvider, generation: int) -> None:
        request_id = str(uuid.uuid4())
        try:
            created = provider.create_node_with_resources_and_labels(
                self.cluster.worker_config, self.cluster.worker_tags(request_id), 1, {"GPU": 1}, {})
            with self._lock:
                self.stats.launches += 1
                self.launched_ids.update(created or {})
                self.stats.launched_nodes += len(created or {})
        except RuntimeError:
            if generation == self._generation:
                raise
            log.info("a launch of the restarted monitor died with it")  # its client was closed
        except NodeLaunchException as exc:
            with self._lock:
                self.stats.launches += 1
                budget = "max_hourly_cost" in (exc.description or "")
                self.stats.launch_failures["budget" if budget else exc.category] += 1
                self.stats.failure_messages[(exc.description or "")[:300]] += 1
            log.info("launch failed (%s): %s", exc.category, exc.description)
            time.sleep(0.5)  # v2 backs off before the next request (ALLOCATION_FAILED)
        finally:
            with self._lock:
                if generation == self._generation:
                    self._inflight -= 1

    def _terminate(self, provider: VastNodeProvider, node_ids: list[str]) -> None:
        try:
            provider.terminate_nodes(node_ids)
        finally:
            with self._lock:
                self.stats.terminations += len(node_ids)

    def _install(self, provider: VastNodeProvider, node_id: str, generation: int) -> None:
        """The v2 RayInstaller's provider calls: SSH target from internal_ip, then the updater's status tags.

        A node on an overlay first has its overlay address learned "on the node", as the SSH runner does at first
        contact (Vast's API does not serve it): ``eth0`` says what the node's eth0 holds."""
        try:
            if provider.is_terminated(node_id):
                return
            if self._eth0 is not None and provider.unknown_overlay_subnet(node_id):
                address = self._eth0(node_id)
                if address:
                    provider.learn_node_addresses(node_id, [address])
            if provider.internal_ip(node_id) is None:
                provider.set_node_tags(node_id, {TAG_RAY_NODE_STATUS: STATUS_UPDATE_FAILED})
                with self._lock:
                    self.stats.install_failures += 1
                self._submit(self._adapter, "terminate", self._terminate, provider, [node_id])
                return
            for status in (STATUS_WAITING_FOR_SSH, STATUS_SYNCING_FILES, STATUS_SETTING_UP):
                provider.set_node_tags(node_id, {TAG_RAY_NODE_STATUS: status})
                time.sleep(self._install_step_s)
            provider.set_node_tags(node_id, {TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
                                             TAG_RAY_RUNTIME_CONFIG: "3" * 40})
            with self._lock:
                self.stats.installs += 1
        finally:
            with self._lock:
                if generation == self._generation:
                    self._installing.discard(node_id)


def admin(url: str, method: str, path: str, **kwargs: Any) -> Any:
    """One call to the emulator's admin API (``/_emulator/...``); raises on a non-2xx answer."""
    response = httpx.request(method, f"{url}/_emulator/{path.lstrip('/')}", timeout=30, **kwargs)
    response.raise_for_status()
    return response.json()


@dataclass
class Sample:
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
