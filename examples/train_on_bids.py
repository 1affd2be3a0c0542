"""Ray Train on Vast bids: a multi-node ``TorchTrainer`` that survives an outbid and ends where it would have ended.

Run it on a cluster from ``ray up`` (bid workers on one physical cluster, joined by an overlay)::

    ray up cluster_configs/vast-train.yaml -y            # or emulator-train.yaml on the local emulator
    ray submit cluster_configs/vast-train.yaml examples/train_on_bids.py \\
        --storage 's3://my-bucket/ray-train?endpoint_override=https://s3.example.com'

One Train worker per worker node (``STRICT_SPREAD``; the head is kept out of training because its config gives it no
CPU), Gloo on CPU (NCCL with ``--gpu``); the overlay interface comes from ``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME``,
which the node's Ray start exports. Every ``--checkpoint-every`` steps rank 0 writes the model and optimizer state
to ``--storage`` through Ray Train's ``storage_path``. When a worker is outbid, Ray Train's controller sees the
worker group fail, the autoscaler rents a replacement on the same physical cluster and overlay, and Train restarts
every worker from the latest checkpoint (``FailureConfig(max_failures=...)`` bounds the restarts).

The run is deterministic: the model starts from ``--seed``, and the batch of step ``s`` is drawn from a generator
seeded with ``(seed, s)`` and split by rank, so a restarted run recomputes exactly the steps after its checkpoint and
ends with the same weights, bit for bit, as an uninterrupted run on the same number of workers (a checkpoint holds
the exact float32 tensors and the optimizer's momentum; gradients are averaged over the same ranks in the same order).

Credentials for the bucket are not in the URI (Ray prints it): give every node ``~/.aws/credentials`` (the cluster
config's ``file_mounts``) or the usual AWS environment variables. With ``--json`` the script prints its progress and
result as ``E2E-JSON {...}`` lines (what the tests and benchmarks read): ``begin`` per worker and attempt, ``step``
as the run advances, ``node`` when a Ray node joins or leaves, and ``done`` with the final weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Replacing a node (outbid -> rented, booted, Ray joined) takes longer than Ray Train's default 60 s wait for a new
# worker group; a longer wait restarts once instead of timing out and re-queueing the group every minute.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900")
# The controller takes reports (and so registers checkpoints) when it polls its workers; polling more often than the
# default 2 s shortens each checkpoint's wait in wait_for_checkpoint_taken below.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

FEATURES = 8
GLOBAL_BATCH = 32
JSON_MARK = "E2E-JSON "


def emit(enabled: bool, payload: dict[str, Any]) -> None:
    if enabled:
        print(JSON_MARK + json.dumps(payload), flush=True)


@ray.remote(num_cpus=0)
class Progress:
    """Every attempt's start and every step each rank finished, on the head (it outlives any worker)."""

    def __init__(self) -> None:
        self.begins: list[dict[str, Any]] = []
        self.steps: dict[tuple[int, int], int] = {}  # (attempt, rank) -> last step

    def begin(self, info: dict[str, Any]) -> int:
        attempt = sum(1 for b in self.begins if b["rank"] == info["rank"])
        self.begins.append({**info, "attempt": attempt})
        return attempt

    def step(self, attempt: int, rank: int, step: int) -> None:
        self.steps[(attempt, rank)] = max(step, self.steps.get((attempt, rank), 0))

    def snapshot(self) -> dict[str, Any]:
        return {"begins": list(self.begins),
                "steps": [{"attempt": a, "rank": r, "step": s} for (a, r), s in sorted(self.steps.items())]}


def batch(seed: int, step: int, rank: int, world: int) -> tuple[Any, Any]:
    """Step ``step``'s global batch (the same on every rank, whatever the attempt), this rank's share of it."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x = torch.randn(GLOBAL_BATCH, FEATURES, generator=generator)
    true_w = torch.arange(1, FEATURES + 1, dtype=torch.float32) / FEATURES
    y = x @ true_w + 0.5 + 0.01 * torch.randn(GLOBAL_BATCH, generator=generator)
    return x[rank::world], y[rank::world]


def train_loop(config: dict[str, Any]) -> None:
    """One Train worker: restore the latest checkpoint if any, then the steps after it."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    from skyward_ray.sky.integrations.train import wait_for_checkpoint_taken

    device = get_device()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    progress = config["progress"]

    torch.manual_seed(config["seed"])
    model = torch.nn.Linear(FEATURES, 1)
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "state.pt", weights_only=True, map_location="cpu")
        model.load_state_dict(state["model"])
    ddp = prepare_model(model)  # moves the model to this worker's device, wraps it in DDP
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])  # its momentum moves to the parameters' device
    start = int(state["step"]) if state is not None else 0
    attempt = ray.get(progress.begin.remote({
        "rank": rank, "start": start, "instance": os.environ.get("CONTAINER_ID"), "hostname": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(), "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
        "nccl_ifname": os.environ.get("NCCL_SOCKET_IFNAME"), "t": time.time()}))

    for step in range(start + 1, config["steps"] + 1):
        x, y = (t.to(device) for t in batch(config["seed"], step, rank, world))
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(x).squeeze(-1), y)
        loss.backward()
        optimizer.step()
        progress.step.remote(attempt, rank, step)
        time.sleep(config["step_seconds"])  # stands for the real work of a step
        if step % config["checkpoint_every"] == 0 or step == config["steps"]:
            metrics = {"step": step, "loss": float(loss)}
            if rank == 0:
                with tempfile.TemporaryDirectory() as directory:
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
                               Path(directory) / "state.pt")
                    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))
            else:
                ray.train.report(metrics, checkpoint=None)
            # A checkpoint is restorable once the controller has taken every rank's report of it: an outbid right
            # after the report would otherwise cost two intervals of steps, not one.
            wait_for_checkpoint_taken()


class NodeWatch:
    """Ray nodes joining and leaving, with wall times (one clock for every emulated node of this machine)."""

    def __init__(self, json_out: bool) -> None:
        self.json_out = json_out
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._alive: dict[str, str] = self._nodes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _nodes() -> dict[str, str]:
        return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            now = self._nodes()
            for node_id, ip in now.items():
                if node_id not in self._alive:
                    self._record("join", node_id, ip)
            for node_id, ip in self._alive.items():
                if node_id not in now:
                    self._record("leave", node_id, ip)
            self._alive = now

    def _record(self, event: str, node_id: str, ip: str) -> None:
        entry = {"phase": "node", "event": event, "node_id": node_id, "node_ip": ip, "t": time.time()}
        self.events.append(entry)
        emit(self.json_out, entry)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def watch_progress(progress: Any, json_out: bool, stop: threading.Event) -> None:
    """Print each attempt's start and its highest step as they change."""
    seen_begins, last_step = 0, {}
    while not stop.wait(0.5):
        try:
            snap = ray.get(progress.snapshot.remote(), timeout=10)
        except Exception:  # a slow head: try again next tick
            continue
        for begin in snap["begins"][seen_begins:]:
            emit(json_out, {"phase": "begin", **begin})
        seen_begins = len(snap["begins"])
        for row in snap["steps"]:
            if last_step.get(row["attempt"], 0) < row["step"]:
                last_step[row["attempt"]] = row["step"]
                emit(json_out, {"phase": "step", "attempt": row["attempt"], "step": row["step"], "t": time.time()})


def accounting(snapshot: dict[str, Any], steps: int) -> dict[str, Any]:
    """Per attempt: where it started (its restored step) and the highest step any rank finished; the steps run more
    than once are everything executed beyond ``steps``."""
    attempts: dict[int, dict[str, Any]] = {}
    for begin in snapshot["begins"]:
        entry = attempts.setdefault(begin["attempt"], {"attempt": begin["attempt"], "start": begin["start"],
                                                       "reached": begin["start"], "instances": {}})
        entry["instances"][str(begin["rank"])] = begin["instance"]
    for row in snapshot["steps"]:
        if row["attempt"] in attempts:
            entry = attempts[row["attempt"]]
            entry["reached"] = max(entry["reached"], row["step"])
    ordered = [attempts[a] for a in sorted(attempts)]
    executed = sum(a["reached"] - a["start"] for a in ordered)
    return {"attempts": ordered, "executed_steps": executed, "recomputed_steps": executed - steps}


def final_weights(checkpoint: Any) -> dict[str, Any]:
    import torch

    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / "state.pt", weights_only=True, map_location="cpu")
    weight, bias = state["model"]["weight"].contiguous(), state["model"]["bias"].contiguous()
    digest = hashlib.sha256(weight.numpy().tobytes() + bias.numpy().tobytes()).hexdigest()
    return {"step": int(state["step"]), "weight": weight.flatten().tolist(), "bias": bias.tolist(),
            "weights_sha256": digest}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", default=os.environ.get("SKYWARD_TRAIN_STORAGE"),
                        help="Ray Train storage_path: s3://bucket/prefix[?endpoint_override=...] "
                             "(default: $SKYWARD_TRAIN_STORAGE)")
    parser.add_argument("--name", default="train-on-bids", help="run name: the folder under --storage")
    parser.add_argument("--workers", type=int, default=2, help="Train workers, one per worker node")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=10, help="K: a checkpoint every K steps")
    parser.add_argument("--step-seconds", type=float, default=0.5, help="simulated compute per step")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-failures", type=int, default=4, help="restarts Ray Train may make (outbids)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL")
    parser.add_argument("--placement", default="STRICT_SPREAD", choices=("STRICT_SPREAD", "SPREAD", "PACK"),
                        help="Train workers' placement (STRICT_SPREAD: one per node)")
    parser.add_argument("--on-bids", choices=("auto", "yes", "no"), default="auto",
                        help="whether workers are bids, for the storage check (auto: the head's cluster config)")
    parser.add_argument("--json", action="store_true", help="print progress and result as E2E-JSON lines")
    args = parser.parse_args(argv)
    for name in ("workers", "steps", "checkpoint_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: {getattr(args, name)} is not allowed; allowed: 1 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from skyward_ray.errors import ConfigError
    from skyward_ray.sky.integrations.train import require_shared_storage

    scaling = ScalingConfig(num_workers=args.workers, use_gpu=args.gpu, resources_per_worker={"CPU": 1},
                            placement_strategy=args.placement)
    run_config = RunConfig(name=args.name, storage_path=args.storage,
                           failure_config=FailureConfig(max_failures=args.max_failures),
                           checkpoint_config=CheckpointConfig(num_to_keep=2))
    on_bids = {"auto": None, "yes": True, "no": False}[args.on_bids]
    try:
        require_shared_storage(run_config, scaling, on_bids=on_bids)
    except ConfigError as exc:
        print(f"Error: {exc}", flush=True)
        return 2

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
    head = ray.get_runtime_context().get_node_id()
    progress = Progress.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
    watch = NodeWatch(args.json)
    stop = threading.Event()
    watcher = threading.Thread(target=watch_progress, args=(progress, args.json, stop), daemon=True)
    watcher.start()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"progress": progress, "seed": args.seed, "lr": args.lr, "steps": args.steps,
                           "checkpoint_every": args.checkpoint_every, "step_seconds": args.step_seconds},
        torch_config=TorchConfig(backend="nccl" if args.gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
    )
    started = time.time()
    try:
        result = trainer.fit()
    finally:
        stop.set()
        watcher.join(timeout=15)
        watch.stop()
    train_s = time.time() - started
    summary = accounting(ray.get(progress.snapshot.remote()), args.steps)
    weights = final_weights(result.checkpoint)
    done = {"phase": "done", "steps": args.steps, "checkpoint_every": args.checkpoint_every, "workers": args.workers,
            "train_s": train_s, "started": started, "checkpoint_path": result.checkpoint.path,
            "nodes": watch.events, **summary, **weights}
    emit(args.json, done)
    if not args.json:
        print(f"trained {args.steps} steps in {train_s:.1f} s over {len(summary['attempts'])} attempt(s); "
              f"{summary['recomputed_steps']} step(s) recomputed; weights sha256 {weights['weights_sha256'][:16]}; "
              f"last checkpoint {result.checkpoint.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
