"""Renting 16 workers under Vast's documented rate limits: our provider against a naive client, on the emulator.

Vast accepts one create (``PUT /api/v0/asks/{id}/``) per 4.5 s per identity (key + client address) and refuses one
that comes sooner with a 429 and a 12 s penalty; searches are limited to 10 per minute per address. So 16 rentals
cannot take less than ``floor_s`` = 15 x 4.5 = 67.5 s from the first accepted to the sixteenth.

1. **provider**: a scale-up from 0 to 16 workers as Ray's autoscaler v2 asks for it. Ray's own
   ``NodeProviderAdapter`` (the class the v2 monitor wraps every v1 provider in) gets ``launch({"gpu": 16})`` and
   calls ``create_node_with_resources_and_labels`` in batches of 5 on two launcher threads; our provider searches
   (shared across the batches), plans and rents through the client's pacer.
2. **naive**: what the provider did before: 16 creates at once, each retried after a sub-second jitter on a 429,
   giving up 60 s after its first attempt, as the old client's retry deadline did. It sends the same create body as
   our client over plain httpx, so no pacer of ours is involved.

Figures (from the emulator's own counters and ledger, so nothing is self-reported):
``rentals_s`` first create accepted to sixteenth accepted (the ledger's creation times); ``floor_s``; ``ratio``
(goal <= 1.1); ``rate_limited_429`` 429s the emulator answered (goal 0 for the provider); ``searches``
(``POST /api/v0/bundles/``; goal <= 2 per scale-up round: a spot-if-available group needs one on-demand and one bid
search, and every batch of the scale-up plans on their answers, which stay in use while the scale-up rents);
``launch_batches`` (Ray's calls).

The emulator runs as its own process (records-only hosts: no namespaces, no root) with ``--rate-limits documented``.
Runs alone: ``python benchmarks/bench_rate_limits.py``; about 2.5 minutes. The last line is ONE JSON object.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from ray.autoscaler.v2.instance_manager.node_provider import NodeProviderAdapter

from skyward_ray.emulator.process import EmulatorProcess, ReadyLine, serve_command
from skyward_ray.emulator.testing import AdapterConfigReader, wait_until
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.provider.tags import encode_label, is_cluster_label
from skyward_ray.vast.client import CREATE_INSTANCE, VastClient

# the bench market, Vast's documented rate limits, no hosts
BENCH_EMULATOR = serve_command(scenario="bench", seed=1, boot_delay_s=0, rate_limits="documented")
WORKERS = 16
CREATE_INTERVAL_S = 4.5
FLOOR_S = (WORKERS - 1) * CREATE_INTERVAL_S
GOAL_RATIO = 1.1
NAIVE_DEADLINE_S = 60.0
WORKER_TYPE = "gpu"
NODE_CONFIG = {"accelerator": "RTX 4090", "allocation": "spot-if-available"}
SEARCH = "POST /api/v0/bundles/"
CREATE = str(CREATE_INSTANCE)


def admin(emu: ReadyLine, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(method, f"{emu.admin_url}/{path}", timeout=60, **kwargs)
    response.raise_for_status()
    return response.json()


def statuses(emu: ReadyLine) -> tuple[dict[str, int], int]:
    """(requests per endpoint, 429s over every endpoint) since the last reset."""
    counters = admin(emu, "GET", "counters/")
    refused = sum(int(by_status.get("429", 0)) for by_status in counters["statuses"].values())
    return counters["requests"], refused


def accepted_span(emu: ReadyLine, cluster: str) -> tuple[int, float | None]:
    """(rentals of ``cluster`` in the ledger, seconds from the first to the last one's creation)."""
    times = sorted(entry["created_at"] for entry in admin(emu, "GET", "state/")["ledger"]
                   if is_cluster_label(entry["label"], cluster))
    return len(times), (times[-1] - times[0]) if len(times) > 1 else None


def destroy_cluster(client: VastClient, cluster: str) -> None:
    ids = [i.id for i in client.list_instances() if is_cluster_label(i.label, cluster)]
    if ids:
        client.destroy_instances(ids)


def provider_run(emu: ReadyLine, client: VastClient, key_file: Path) -> dict[str, Any]:
    cluster = "rate-provider"
    config = {"type": "external", "module": "skyward_ray.provider.VastNodeProvider", "api_url": emu.url,
              "api_key_file": str(key_file), "ssh_proxy": False, "use_overlay": False, "min_reliability": 0.0,
              "verified_only": False, "min_cuda": None}
    provider = VastNodeProvider(config, cluster)
    adapter = NodeProviderAdapter(provider, AdapterConfigReader(cluster, NODE_CONFIG))  # type: ignore[arg-type]
    progress: list[str] = []

    class Progress(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "node(s)" in record.getMessage():
                progress.append(record.getMessage())

    handler = Progress(level=logging.INFO)
    provider_log = logging.getLogger("skyward_ray.provider")
    provider_log.addHandler(handler)
    provider_log.setLevel(logging.INFO)
    admin(emu, "DELETE", "counters/")
    started = time.monotonic()
    try:
        adapter.launch({WORKER_TYPE: WORKERS}, request_id=str(uuid.uuid4()))
        wait_until(lambda: len(provider.non_terminated_nodes({"ray-node-type": "worker"})) >= WORKERS,
                   timeout_s=300, interval_s=0.5, what=f"{WORKERS} workers rented")
        wall = time.monotonic() - started
        errors = adapter.poll_errors()
    finally:
        provider_log.removeHandler(handler)
    requests, refused = statuses(emu)
    rented, span = accepted_span(emu, cluster)
    destroy_cluster(client, cluster)
    provider.close()
    for line in progress[:3] + progress[-2:]:
        print(f"  provider: {line}", flush=True)
    return {
        "rentals": rented,
        "rentals_s": round(span, 2) if span is not None else None,
        "ratio": round(span / FLOOR_S, 3) if span is not None else None,
        "wall_s": round(wall, 2),
        "rate_limited_429": refused,
        "create_requests": requests.get(CREATE, 0),
        "searches": requests.get(SEARCH, 0),
        "launch_batches": -(-WORKERS // 5),
        "launch_errors": len(errors),
        "progress_lines": len(progress),
    }


def naive_run(emu: ReadyLine, client: VastClient) -> dict[str, Any]:
    """16 creates at once, each retried after a sub-second jitter on a 429 (plain httpx: no pacing at all)."""
    cluster = "rate-naive"
    label = encode_label(cluster, {"ray-node-type": "worker", "ray-user-node-type": WORKER_TYPE})
    naive = httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {emu.api_key}"}, timeout=60,
                         limits=httpx.Limits(max_connections=WORKERS))
    rng = random.Random(1)
    rng_lock = threading.Lock()
    admin(emu, "DELETE", "counters/")
    offers = client.search_offers({"gpu_name": {"eq": "RTX 4090"}, "num_gpus": {"eq": 1}, "rentable": {"eq": True},
                                  "rented": {"eq": False}, "type": "on-demand", "order": [["dph_total", "asc"]],
                                  "limit": 200})
    machines: dict[int, int] = {}
    for offer in offers:
        machines.setdefault(offer.machine_id, offer.id)
    targets = list(machines.values())[:WORKERS]
    if len(targets) < WORKERS:
        raise SystemExit(f"the bench market has {len(targets)} free RTX 4090 machines, {WORKERS} needed")

    body = {"client_id": "me", "image": "bench", "env": {}, "price": None, "disk": 10, "label": label,
            "extra": None, "onstart": None, "runtype": "ssh_direc ssh_proxy"}

    def rent(offer_id: int) -> bool:
        deadline = time.monotonic() + NAIVE_DEADLINE_S
        while True:
            response = naive.put(f"/api/v0/asks/{offer_id}/", json=body)
            if response.status_code < 400:
                return True
            if response.status_code != 429 or time.monotonic() >= deadline:
                return False
            with rng_lock:
                pause = rng.uniform(0.0, 1.0)
            time.sleep(pause)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        done = list(pool.map(rent, targets))
    wall = time.monotonic() - started
    requests, refused = statuses(emu)
    rented, span = accepted_span(emu, cluster)
    destroy_cluster(client, cluster)
    naive.close()
    return {
        "rentals": rented,
        "gave_up": done.count(False),
        "rentals_s": round(span, 2) if span is not None and rented == WORKERS else None,
        "wall_s": round(wall, 2),
        "rate_limited_429": refused,
        "create_requests": requests.get(CREATE, 0),
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with EmulatorProcess(BENCH_EMULATOR) as emu, \
            tempfile.TemporaryDirectory() as tmp, VastClient(api_key=emu.api_key, base_url=emu.url) as client:
        key_file = Path(tmp) / "vast_api_key"
        key_file.write_text(emu.api_key)
        key_file.chmod(0o600)
        limits = admin(emu, "GET", "faults/").get("rate_limit", {})
        print(f"emulator rate limits: {json.dumps(limits)[:200]}", flush=True)
        ours = provider_run(emu, client, key_file)
        print(f"provider: {json.dumps(ours)}", flush=True)
        time.sleep(CREATE_INTERVAL_S)  # the runs share one identity: the naive one starts on a fresh interval
        naive = naive_run(emu, client)
        print(f"naive: {json.dumps(naive)}", flush=True)
    result = {
        "workers": WORKERS,
        "floor_s": FLOOR_S,
        "rentals_s": ours["rentals_s"],
        "ratio": ours["ratio"],
        "ratio_goal": GOAL_RATIO,
        "rate_limited_429": ours["rate_limited_429"],
        "searches": ours["searches"],
        "searches_goal_per_round": 2,
        "launch_batches": ours["launch_batches"],
        "searches_per_batch": round(ours["searches"] / ours["launch_batches"], 2),
        "provider": ours,
        "naive": naive,
        "meets_goals": bool(ours["ratio"] is not None and ours["ratio"] <= GOAL_RATIO
                            and ours["rate_limited_429"] == 0
                            and ours["searches"] <= 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
