"""The provider driven the way Ray 2.60's autoscaler v2 drives it, for the chaos tests.

``MiniAutoscaler``: a reconcile thread lists ``non_terminated_nodes({})`` and reads ``node_tags``/``is_running`` per
node; launches go to a launcher pool (``create_node_with_resources_and_labels``, ``count=1``, a fresh launch-request id
each); terminations to an adapter thread (``terminate_nodes``); installs to installer threads (``internal_ip``,
``is_terminated``, four ``set_node_tags``). Its state is in memory only, as v2's instance manager: ``restart()``
drops it and builds a new provider, which must rebuild everything from Vast. ``ray_up`` brings up a head as ``ray up``
does; ``CountingTransport`` counts every status the clients see, so a report can say how many API errors the provider
absorbed.
"""

from __future__ import annotations

import logging
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
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_RUNTIME_CONFIG,
)

from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.vast.client import VastClient
from support.ray_launch_tags import head_tags, worker_tags

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


@dataclass
class Cluster:
    """The names and node configs both sides agree on."""

    name: str
    head_config: dict[str, Any]
    worker_config: dict[str, Any]
    worker_type: str = "gpu"
    head_type: str = "head"

    def head_tags(self) -> dict[str, str]:
        return head_tags(self.name, self.head_type)

    def worker_tags(self, request_id: str) -> dict[str, str]:
        return worker_tags(self.name, request_id, self.worker_type)


def spot_cluster(name: str) -> Cluster:
    """An on-demand RTX 4090 head with spot RTX 4090 workers, the cluster the chaos tests run."""
    return Cluster(name=name, head_config={"accelerator": "RTX 4090"},
                   worker_config={"accelerator": "RTX 4090", "allocation": "spot"})


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
    """``ray up`` for a new head as Ray's ``commands.py`` does it: create, poll ``non_terminated_nodes(head tags)``,
    then the updater's four status writes. A failed create is retried as a user re-running ``ray up`` would."""
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
    """What the mini autoscaler did, for the report."""

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
