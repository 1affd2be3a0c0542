"""What an outbid costs a Ray Train run on bids: recomputed steps, time to a replacement worker, wall-time overhead.

Everything is real except the cloud: ``ray up cluster_configs/emulator-train.yaml`` (an on-demand head, 2 bid workers
on one physical cluster and overlay) on the netns emulator under Vast's documented rate limits, moto's S3 server as
the bucket, ``examples/train_on_bids.py`` as the job (a ``TorchTrainer``, Gloo over the overlay, a checkpoint every
``--checkpoint-every`` steps). One uninterrupted run, then one run whose rank-1 worker is outbid a few steps after a
checkpoint (through the emulator's admin API).

* ``steps``, ``checkpoint_every``: the run's shape.
* ``recomputed_steps``: steps executed beyond ``steps`` in the interrupted run (the ones after its last checkpoint
  before the outbid); at most ``checkpoint_every``.
* ``replace_s``: from the outbid to the replacement worker joining the Ray cluster (the provider sees the outbid,
  destroys the instance, the autoscaler rents another on the same physical cluster, it boots, joins the overlay and
  starts Ray). Contains the emulator's ``--boot-delay`` once; real Vast adds its image pull.
* ``overhead_ratio``: the interrupted run's wall time over the uninterrupted one's (same steps, same cluster).
* ``weights_equal``: the final weights of the two runs are bit-for-bit equal.

Needs root (namespaces). Runs alone: ``python benchmarks/bench_train_outbid.py [--steps N] [--checkpoint-every K]``.
The last line is ONE JSON object.
"""

from __future__ import annotations

import argparse
import json
import secrets
import string
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_e2e import free_subnet
from support.outbid_training import train, train_cluster, wait_for_workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=0.5)
    parser.add_argument("--boot-delay", type=float, default=2.0)
    args = parser.parse_args()

    prefix = "b" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp, \
            train_cluster(Path(tmp), prefix=prefix, public_subnet=free_subnet(), name=f"bench-train-{prefix}",
                          boot_delay_s=args.boot_delay) as tc:
        tc.cluster.up().check()
        workers_s = wait_for_workers(tc)
        shape = {"steps": args.steps, "checkpoint_every": args.checkpoint_every, "step_seconds": args.step_seconds}
        reference = train(tc, "reference", **shape)
        interrupted = train(tc, "outbid", outbids=1, **shape)
        for run in (reference, interrupted):
            if run.returncode != 0 or not run.done:
                raise SystemExit(f"run {run.name} failed: {run.output_tail}")
        outbid_t = interrupted.outbids[0]["t"]
        joins = interrupted.joins_after(outbid_t)
        result = {
            "steps": args.steps,
            "checkpoint_every": args.checkpoint_every,
            "recomputed_steps": interrupted.done["recomputed_steps"],
            "replace_s": round(joins[0]["t"] - outbid_t, 1) if joins else None,
            "overhead_ratio": round(interrupted.done["train_s"] / reference.done["train_s"], 2),
            "uninterrupted_s": round(reference.done["train_s"], 1),
            "interrupted_s": round(interrupted.done["train_s"], 1),
            "weights_equal": interrupted.done["weights_sha256"] == reference.done["weights_sha256"],
            "outbid_at_step": interrupted.outbids[0]["step"],
            "resumed_from_step": interrupted.done["attempts"][1]["start"],
            "workers_ready_after_up_s": round(workers_s, 1),
            "boot_delay_s": args.boot_delay,
            "step_seconds": args.step_seconds,
        }
        tc.cluster.down().check()
    result["total_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
