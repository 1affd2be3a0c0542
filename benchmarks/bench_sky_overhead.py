"""The ``sky`` API's cost over raw Ray: 2,000 tiny calls through ``sky.gather(...) >> sky`` against the same work
through ``ray.remote`` + ``ray.get``, on one local Ray node (127.0.0.2, dashboard off, private temp dir).

Rounds alternate between the two (raw first, then sky, then raw...) so drift on a busy machine hits both; the ratio
is of the medians. Goal: ratio <= 1.10. The last line printed is one JSON object.

    .venv/bin/python benchmarks/bench_sky_overhead.py [--calls 2000] [--rounds 5] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import ray

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

    with sky.ComputePool(nodes=1, launcher=sky.LocalLauncher(cpus_per_node=args.cpus)):
        run_raw(200)  # warm both paths: worker processes, function export, the pool's per-node task options
        run_sky(200)
        raw_times, sky_times = [], []
        for _ in range(args.rounds):
            raw_times.append(run_raw(args.calls))
            sky_times.append(run_sky(args.calls))
    raw_s, sky_s = statistics.median(raw_times), statistics.median(sky_times)
    print(json.dumps({
        "benchmark": "sky_overhead",
        "calls": args.calls,
        "rounds": args.rounds,
        "raw_s": round(raw_s, 4),
        "sky_s": round(sky_s, 4),
        "raw_us_per_call": round(raw_s / args.calls * 1e6, 1),
        "sky_us_per_call": round(sky_s / args.calls * 1e6, 1),
        "ratio": round(sky_s / raw_s, 4),
        "goal_ratio": 1.10,
    }))


if __name__ == "__main__":
    main()
