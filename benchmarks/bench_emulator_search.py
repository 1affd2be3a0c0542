"""Search latency of the emulator over HTTP on the 10,000+ offer ``bench`` market (goal: median < 100 ms).

The emulator runs as its own process (``skyward-ray emulator serve --scenario bench``) so the client's work does not
share its interpreter; the client sends the searches real clients send (the SDK's defaults, a placement-style
filtered bid search, a physical-cluster search, a wide 500-offer page) and times each round trip.
Ends with ONE JSON line of its figures.

    .venv/bin/python benchmarks/bench_emulator_search.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import httpx

from skyward_ray.emulator.process import EmulatorProcess, serve_command

QUERIES: dict[str, dict[str, Any]] = {
    "sdk_defaults": {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True},
                     "rented": {"eq": False}, "order": [["score", "desc"]], "type": "on-demand",
                     "allocated_storage": 5.0},
    "placement_bid": {"gpu_name": {"in": ["RTX 4090"]}, "num_gpus": {"gte": 1}, "reliability2": {"gte": 0.95},
                      "geolocation": {"in": ["US", "CA"]}, "verified": {"eq": True}, "rentable": {"eq": True},
                      "order": [["dph_total", "asc"]], "type": "bid", "allocated_storage": 100, "limit": 64},
    "clusters": {"cluster_id": {"neq": None}, "gpu_name": {"in": ["H100 SXM", "A100 SXM4", "RTX 4090"]},
                 "num_gpus": {"eq": "1"}, "order": [["dph_total", "asc"]], "limit": 200},
    "wide_page": {"rentable": {"eq": True}, "dph_total": {"lt": 3}, "order": [["dph_total", "asc"]], "limit": 500},
}
GOAL_MEDIAN_MS = 100.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed searches per query (default 40)")
    args = parser.parse_args()
    # Rate limits off: this times the server's search, and Vast's 10 searches a minute per address would refuse
    # all but the first rounds with 429s.
    emulator = EmulatorProcess(serve_command(scenario="bench", seed=0, rate_limits="off"), start_timeout_s=120,
                               stop_timeout_s=30)
    with emulator as ready, httpx.Client(base_url=ready.url, headers={"Authorization": f"Bearer {ready.api_key}"},
                                         timeout=60) as client:
        offers = client.get("/_emulator/state/").json()["market"]["offers"]
        for query in QUERIES.values():  # warm-up: connection, caches
            client.post("/api/v0/bundles/", json=query).raise_for_status()
        timings: dict[str, list[float]] = {name: [] for name in QUERIES}
        returned: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, query in QUERIES.items():
                started = time.perf_counter()
                response = client.post("/api/v0/bundles/", json=query)
                elapsed = (time.perf_counter() - started) * 1000
                response.raise_for_status()
                returned[name] = len(response.json()["offers"])
                timings[name].append(elapsed)
    every = [t for series in timings.values() for t in series]
    figures = {
        "bench": "emulator_search",
        "offers": offers,
        "requests": len(every),
        "median_ms": round(statistics.median(every), 2),
        "p95_ms": round(statistics.quantiles(every, n=20)[-1], 2),
        "per_query_median_ms": {name: round(statistics.median(series), 2) for name, series in timings.items()},
        "per_query_offers_returned": returned,
        "goal_median_ms": GOAL_MEDIAN_MS,
        "goal_met": statistics.median(every) < GOAL_MEDIAN_MS and offers >= 10_000,
    }
    for name, series in timings.items():
        print(f"{name:14s} median {statistics.median(series):7.2f} ms  max {max(series):7.2f} ms  "
              f"({returned[name]} offers)", file=sys.stderr)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
