"""What listing the cluster costs at 25, 100 and 500 nodes under Vast's documented rate limits, and whether the
autoscaler's tick ever waits on it.

For each N, the emulator (records-only hosts, documented limits on) holds N running instances of one cluster, and a
provider is driven the way Ray's autoscaler drives it, one tick per ``TICK_S``: ``non_terminated_nodes({})``, then
``node_tags``, ``is_running`` and ``internal_ip`` per node (v2's reconcile plus v1's load metrics). Measured, for
each way of listing (``unpaged``: the legacy ``GET /api/v0/instances/``, the provider's default; ``paged``:
``GET /api/v1/instances/``, 25 rows a page, one page per second):

* ``refresh_s``: one full refresh (list + merge), median of ``REFRESHES``, each begun after the list endpoint's
  interval has passed (the paged list's own pages still go one per second: that is its cost);
* ``list_calls``: API calls one refresh makes;
* ``requests_per_min``: every API request the provider made during ``WINDOW_S`` of ticks, per minute, and
  ``rate_limited_429``: how many of them Vast's limits refused (goal: 0);
* ``longest_tick_s``: the longest a tick took (goal: never a list's time; the list runs behind the tick).

Setting up 500 instances through the public API would take 500 x 4.5 s, so the setup switches the emulator's limits
off through its admin API (``PUT /_emulator/rate_limits``) and rents with a client whose own pacing is scaled down;
every measurement runs with the documented limits back on and the provider's client at the documented pace.

Runs alone (``python benchmarks/bench_provider_api.py``), against the emulator started as its own process on
loopback (in-process, its work would share this process's GIL with the ticks being timed). The last line is ONE
JSON object.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from skyward_ray.emulator.process import EmulatorProcess, ReadyLine, serve_command
from skyward_ray.emulator.testing import wait_until
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.provider.tags import encode_label
from skyward_ray.vast.client import VastClient

# the bench market, Vast's documented rate limits, no hosts
BENCH_EMULATOR = serve_command(scenario="bench", seed=1, boot_delay_s=0, rate_limits="documented")
NODE_COUNTS = (25, 100, 500)
SOURCES = ("unpaged", "paged")
TICK_S = 1.0  # Ray ticks every 5 s; a faster tick only makes a wait more likely to show
WINDOW_S = 45.0  # long enough for two paged refreshes of 500 nodes (about 20 s each)
REFRESHES = 3
SETTLE_S = 2.0  # > the 1.5 s the provider keeps between two lists (the endpoints allow 1 s)
CACHE_TTL_S = 4.0  # the provider's default
CLUSTER = "bench"
WORKER_TAGS = {"ray-node-type": "worker", "ray-user-node-type": "gpu", "ray-node-status": "up-to-date",
               "ray-launch-config": "1" * 40, "ray-runtime-config": "2" * 40}
SETUP_RATE_SCALE = 0.001  # the setup client's own pacing while the emulator's limits are off


def _admin(emu: ReadyLine, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{emu.admin_url}/{path}", json=body, timeout=60)
    response.raise_for_status()
    return response.json()


def _rate_limits(emu: ReadyLine, mode: str) -> None:
    _admin(emu, "PUT", "rate_limits/", {"mode": mode, "reset": True})


def _provider_config(emu: ReadyLine, key_file: Path, source: str) -> dict[str, Any]:
    return {"type": "external", "module": "skyward_ray.provider.VastNodeProvider", "api_url": emu.url,
            "api_key_file": str(key_file), "ssh_proxy": False, "cache_ttl_s": CACHE_TTL_S, "instance_list": source}


def _rent_directly(emu: ReadyLine, count: int) -> None:
    """``count`` more running instances labelled as this cluster's workers (the setup, not the measurement)."""
    if count <= 0:
        return
    _rate_limits(emu, "off")
    try:
        with VastClient(api_key=emu.api_key, base_url=emu.url, rate_scale=SETUP_RATE_SCALE) as client:
            offers = client.search_offers({"num_gpus": {"eq": 1}, "rentable": {"eq": True}, "rented": {"eq": False},
                                           "order": [["dph_total", "asc"]], "limit": 5000})
            if len(offers) < count:
                raise SystemExit(f"the bench market has {len(offers)} free single-GPU offers, {count} needed")
            label = encode_label(CLUSTER, WORKER_TAGS)

            def rent(offer_id: int) -> int:
                return client.create_instance(offer_id, image="bench", disk_gb=10, label=label).new_contract

            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(rent, [offer.id for offer in offers[:count]]))
    finally:
        _rate_limits(emu, "documented")


def _requests(emu: ReadyLine) -> tuple[dict[str, int], int]:
    """API requests per endpoint since the last reset, and how many of them were refused with a 429."""
    counters = _admin(emu, "GET", "counters/")
    statuses = counters.get("statuses", {})
    refused = sum(int(by_status.get("429", 0)) for by_status in statuses.values())
    return counters["requests"], refused


def _tick(provider: VastNodeProvider) -> int:
    nodes = provider.non_terminated_nodes({})
    for node_id in nodes:
        provider.node_tags(node_id)
        provider.is_running(node_id)
        provider.internal_ip(node_id)
    return len(nodes)


def measure(emu: ReadyLine, key_file: Path, count: int, source: str) -> dict[str, Any]:
    provider = VastNodeProvider(_provider_config(emu, key_file, source), CLUSTER)
    try:
        started = time.perf_counter()
        seen = _tick(provider)  # the first list: the one call a process makes in the caller's thread
        first_s = time.perf_counter() - started
        assert seen == count, f"the provider sees {seen} of {count} nodes"

        durations: list[float] = []
        _admin(emu, "DELETE", "counters/")
        for _ in range(REFRESHES):
            time.sleep(SETTLE_S)  # the list endpoint's interval has passed: the figure is the list, not the pacer
            began = time.perf_counter()
            provider.refresh(force=True)
            durations.append(time.perf_counter() - began)
        requests, _ = _requests(emu)
        list_calls = sum(requests.values()) / REFRESHES

        time.sleep(CACHE_TTL_S)  # a clean window: the snapshot is due at the first tick
        _admin(emu, "DELETE", "counters/")
        ticks: list[float] = []
        stop = time.monotonic() + WINDOW_S
        window_start = time.monotonic()
        while time.monotonic() < stop:
            began = time.perf_counter()
            seen = _tick(provider)
            ticks.append(time.perf_counter() - began)
            assert seen == count, f"the provider sees {seen} of {count} nodes"
            time.sleep(max(0.0, TICK_S - ticks[-1]))
        window_s = time.monotonic() - window_start
        requests, refused = _requests(emu)
    finally:
        provider.close()
    total = sum(requests.values())
    result = {
        "refresh_s": round(statistics.median(durations), 3),
        "list_calls": round(list_calls, 1),
        "first_list_s": round(first_s, 3),
        "requests_per_min": round(total / window_s * 60, 1),
        "rate_limited_429": refused,
        "longest_tick_s": round(max(ticks), 4),
        "median_tick_s": round(statistics.median(ticks), 4),
        "ticks": len(ticks),
        "by_endpoint": requests,
    }
    print(f"N={count:3d} {source:7s}: refresh {result['refresh_s']:6.2f} s ({result['list_calls']:.0f} calls), "
          f"{result['requests_per_min']:5.1f} req/min, 429s {refused}, longest tick {result['longest_tick_s']:.4f} s "
          f"over {len(ticks)} ticks", flush=True)
    return result


def main() -> int:
    results: dict[str, dict[str, Any]] = {}
    with EmulatorProcess(BENCH_EMULATOR) as emu, tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "vast_api_key"
        key_file.write_text(emu.api_key)
        key_file.chmod(0o600)
        rented = 0
        for count in NODE_COUNTS:
            _rent_directly(emu, count - rented)
            rented = count
            with VastClient(api_key=emu.api_key, base_url=emu.url) as client:
                wait_until(lambda n=count, c=client: sum(i.actual_status == "running"
                                                         for i in c.list_instances_v0()) >= n,
                           timeout_s=120, interval_s=1.5, what=f"{count} instances running")
            results[str(count)] = {source: measure(emu, key_file, count, source) for source in SOURCES}
    longest = max(r["longest_tick_s"] for by_source in results.values() for r in by_source.values())
    summary = {
        "rate_limits": "documented",
        "tick_s": TICK_S,
        "window_s": WINDOW_S,
        "cache_ttl_s": CACHE_TTL_S,
        "chosen": "unpaged",
        "refresh_s": {n: {s: r["refresh_s"] for s, r in by.items()} for n, by in results.items()},
        "list_calls": {n: {s: r["list_calls"] for s, r in by.items()} for n, by in results.items()},
        "requests_per_min": {n: {s: r["requests_per_min"] for s, r in by.items()} for n, by in results.items()},
        "rate_limited_429": sum(r["rate_limited_429"] for by in results.values() for r in by.values()),
        "longest_tick_s": {n: {s: r["longest_tick_s"] for s, r in by.items()} for n, by in results.items()},
        "first_list_s": {n: {s: r["first_list_s"] for s, r in by.items()} for n, by in results.items()},
        "tick_never_waits": longest < min(r["refresh_s"] for by in results.values() for r in by.values()
                                          if r["list_calls"] > 1),
        "paged_pages_500": math.ceil(500 / 25),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
