"""How much Vast API the provider costs, measured by the emulator's own request counters.

1. **Requests per autoscaler tick** at 1, 10, 100 and 500 running nodes. A tick is what Ray's autoscaler does every
   5 s: ``non_terminated_nodes({})``, then ``node_tags`` and ``is_running`` per node (v2's reconcile) plus
   ``internal_ip`` per node (v1's load metrics). The provider's clock advances 5 s per tick, so every tick refreshes
   its snapshot exactly as in production. Goal: the list pages alone, ``ceil(N / 25)``, nothing per node.
2. **Renting 16 nodes** with 200 ms of latency injected on every API call: one ``create_node`` call renting
   concurrently (``rent_concurrency`` 16) against one at a time (``rent_concurrency`` 1). Goal: at least 6x faster.

Runs alone (``python benchmarks/bench_provider_api.py``), against the emulator (records-only hosts) started as its
own process on loopback, as the real API is remote: in-process, its search work would share this process's GIL with
the client being timed. The last line is ONE JSON object with ``requests_per_tick`` (by N) and ``rent16_speedup``.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from skyward_ray.emulator.testing import wait_until
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.provider.tags import encode_label
from skyward_ray.vast.client import VastClient

NODE_COUNTS = (1, 10, 100, 500)
TICKS = 5
TICK_S = 5.0
RENT_NODES = 16
LATENCY_MS = 200.0
CLUSTER = "bench"
WORKER_TAGS = {"ray-node-type": "worker", "ray-user-node-type": "gpu", "ray-node-status": "up-to-date",
               "ray-launch-config": "1" * 40, "ray-runtime-config": "2" * 40}


@dataclass(frozen=True)
class Emulator:
    url: str
    api_key: str
    admin_url: str


@contextlib.contextmanager
def emulator_process() -> Iterator[Emulator]:
    """``skyward-ray emulator serve`` as a child process; ended by its PID whatever happens."""
    cmd = [sys.executable, "-m", "skyward_ray.cli", "emulator", "serve", "--scenario", "bench", "--seed", "1",
           "--boot-delay", "0", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # one JSON line once it listens (or EOF if it died)
        if not line.strip().startswith("{"):
            raise SystemExit(f"the emulator did not start (exit code {proc.poll()})")
        ready = json.loads(line)
        yield Emulator(ready["url"], ready["api_key"], ready["admin_url"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class TickClock:
    """The provider's clock: moves only when a tick says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _provider_config(emu: Emulator, key_file: Path, **extra: Any) -> dict[str, Any]:
    return {"type": "external", "module": "skyward_ray.provider.VastNodeProvider", "api_url": emu.url,
            "api_key_file": str(key_file), "ssh_proxy": False, "min_reliability": 0.0, "verified_only": False,
            "min_cuda": None, **extra}


def _counters(emu: Emulator) -> dict[str, int]:
    return httpx.get(f"{emu.admin_url}/counters/", timeout=30).json()["requests"]


def _reset_counters(emu: Emulator) -> None:
    httpx.delete(f"{emu.admin_url}/counters/", timeout=30).raise_for_status()


def _rent_directly(client: VastClient, count: int) -> list[int]:
    """``count`` running instances labelled as this cluster's workers, rented without the provider (the setup of the
    measurement, not part of it)."""
    offers = client.search_offers({"num_gpus": {"eq": 1}, "rentable": {"eq": True}, "rented": {"eq": False},
                                   "order": [["dph_total", "asc"]], "limit": 5000})
    if len(offers) < count:
        raise SystemExit(f"the bench market has {len(offers)} free single-GPU offers, {count} needed")
    label = encode_label(CLUSTER, WORKER_TAGS)

    def rent(offer_id: int) -> int:
        return client.create_instance(offer_id, image="bench", disk_gb=10, label=label).new_contract

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(rent, [offer.id for offer in offers[:count]]))


def requests_per_tick(emu: Emulator, client: VastClient, key_file: Path) -> dict[str, float]:
    results: dict[str, float] = {}
    rented: list[int] = []
    for count in NODE_COUNTS:
        rented += _rent_directly(client, count - len(rented))
        wait_until(lambda n=count: sum(1 for i in client.list_instances() if i.actual_status == "running") >= n,
                   timeout_s=120, interval_s=0.5, what=f"{count} instances running")
        clock = TickClock()
        provider = VastNodeProvider(_provider_config(emu, key_file), CLUSTER, clock=clock)
        try:
            _tick(provider, clock)  # warm-up: the first list
            _reset_counters(emu)
            for _ in range(TICKS):
                seen = _tick(provider, clock)
                assert seen == count, f"the provider sees {seen} of {count} nodes"
            requests = _counters(emu)
        finally:
            provider.close()
        per_tick = sum(requests.values()) / TICKS
        results[str(count)] = per_tick
        print(f"N={count:4d}: {per_tick:5.2f} requests per tick (list pages expected: {math.ceil(count / 25)}); "
              f"by endpoint: {json.dumps({k: v / TICKS for k, v in requests.items()})}", flush=True)
    return results


def _tick(provider: VastNodeProvider, clock: TickClock) -> int:
    clock.now += TICK_S
    nodes = provider.non_terminated_nodes({})
    for node_id in nodes:
        provider.node_tags(node_id)
        provider.is_running(node_id)
        provider.internal_ip(node_id)
    return len(nodes)


def rent16(emu: Emulator, client: VastClient, key_file: Path, concurrency: int) -> float:
    """One ``create_node`` call for 16 workers (search, plan, rent), timed end to end; the nodes are then destroyed."""
    provider = VastNodeProvider(_provider_config(emu, key_file, use_overlay=False, rent_concurrency=concurrency),
                                f"{CLUSTER}-rent-{concurrency}")
    httpx.put(f"{emu.admin_url}/faults/", json={"latency_ms": LATENCY_MS}, timeout=30).raise_for_status()
    try:
        started = time.perf_counter()
        created = provider.create_node_with_resources_and_labels(
            {"accelerator": "RTX 4090", "allocation": "spot-if-available"},
            {"ray-node-type": "worker", "ray-user-node-type": "gpu"}, RENT_NODES, {"GPU": 1}, {})
        elapsed = time.perf_counter() - started
    finally:
        httpx.put(f"{emu.admin_url}/faults/", json={"latency_ms": 0.0}, timeout=30).raise_for_status()
        provider.close()
    if created is None or len(created) != RENT_NODES:
        raise SystemExit(f"rented {0 if created is None else len(created)} of {RENT_NODES} nodes")
    client.destroy_instances([int(node_id) for node_id in created])
    print(f"rent {RENT_NODES} nodes, concurrency {concurrency:2d}: {elapsed:.2f} s", flush=True)
    return elapsed


def main() -> int:
    with emulator_process() as emu, tempfile.TemporaryDirectory() as tmp, \
            VastClient(api_key=emu.api_key, base_url=emu.url) as client:
        key_file = Path(tmp) / "vast_api_key"
        key_file.write_text(emu.api_key)
        key_file.chmod(0o600)
        rent16(emu, client, key_file, concurrency=RENT_NODES)  # warm-up: first-call costs on both sides
        serial = min(rent16(emu, client, key_file, concurrency=1) for _ in range(3))
        concurrent = min(rent16(emu, client, key_file, concurrency=RENT_NODES) for _ in range(3))
        per_tick = requests_per_tick(emu, client, key_file)
    expected = {str(n): math.ceil(n / 25) for n in NODE_COUNTS}
    result = {
        "requests_per_tick": per_tick,
        "list_pages_per_tick": expected,
        "only_list_pages": all(per_tick[k] == expected[k] for k in expected),
        "rent16_serial_s": round(serial, 3),
        "rent16_concurrent_s": round(concurrent, 3),
        "rent16_speedup": round(serial / concurrent, 2),
        "latency_ms": LATENCY_MS,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
