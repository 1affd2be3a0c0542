"""The ``sky`` API's cost over raw Ray: 2,000 tiny calls through ``sky.gather(...) >> sky`` against the same work
through ``ray.remote`` + ``ray.get``, on one local Ray node (127.0.0.2, dashboard off, private temp dir).

Rounds alternate (raw, sky, raw with sky's task options, ...) so drift on a busy machine hits all; ratios are of the
medians. ``ratio`` is sky against plain ``ray.remote`` (goal <= 1.10). ``ratio_same_options`` compares against raw
tasks given the options sky's calls carry (node affinity, ``max_retries=0``), isolating the shim's own cost from the
effect of those options. The last line printed is one JSON object.

    .venv/bin/python benchmarks/bench_sky_overhead.py [--calls 2000] [--rounds 5] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import skyward_ray as sky


def tiny(x: int) -> int:
    return x + 1


sky_tiny = sky.compute(tiny)
raw_tiny = ray.remote(tiny)


def run_raw(calls: int) -> float:
    started = time.perf_counter()
    values = ray.get([raw_tiny.remote(i) for i in range(calls)])
    elapsed = time.perf_counter() - started
    assert values == [i + 1 for i in range(calls)]
    return elapsed


def run_raw_same_options(calls: int, pinned: object) -> float:
    started = time.perf_counter()
    values = ray.get([pinned.remote(i) for i in range(calls)])  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    assert values == [i + 1 for i in range(calls)]
    return elapsed


def run_sky(calls: int) -> float:
    started = time.perf_counter()
    values = sky.gather(sky_tiny(i) for i in range(calls)) >> sky
    elapsed = time.perf_counter() - started
    assert values == [i + 1 for i in range(calls)]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the one node (worker processes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with sky.ComputePool(nodes=1, launcher=sky.LocalLauncher(cpus_per_node=args.cpus)) as pool:
        pinned = raw_tiny.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(pool.nodes[0].node_id, soft=False), max_retries=0
        )
        run_raw(200)  # warm every path: worker processes, function export, the pool's per-node task options
        run_sky(200)
        run_raw_same_options(200, pinned)
        raw_times, sky_times, same_times = [], [], []
        for _ in range(args.rounds):
            raw_times.append(run_raw(args.calls))
            sky_times.append(run_sky(args.calls))
            same_times.append(run_raw_same_options(args.calls, pinned))
    raw_s, sky_s, same_s = (statistics.median(t) for t in (raw_times, sky_times, same_times))
    print(json.dumps({
        "benchmark": "sky_overhead",
        "calls": args.calls,
        "rounds": args.rounds,
        "raw_s": round(raw_s, 4),
        "sky_s": round(sky_s, 4),
        "raw_us_per_call": round(raw_s / args.calls * 1e6, 1),
        "sky_us_per_call": round(sky_s / args.calls * 1e6, 1),
        "raw_same_options_s": round(same_s, 4),
        "ratio": round(sky_s / raw_s, 4),
        "ratio_same_options": round(sky_s / same_s, 4),
        "goal_ratio": 1.10,
    }))


if __name__ == "__main__":
    main()
