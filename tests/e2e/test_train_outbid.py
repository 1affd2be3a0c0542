"""Ray Train on bids, for real: a ``TorchTrainer`` on a ``ray up`` cluster loses workers to outbids and still ends
with the weights an uninterrupted run ends with.

One cluster for the module (``cluster_configs/emulator-train.yaml`` on the netns emulator under Vast's documented
rate limits: an on-demand head, 2 bid workers on one physical cluster and overlay), moto's S3 server on the
emulator's bridge address as the bucket, and ``examples/train_on_bids.py`` as the job (Gloo over the overlay, a
checkpoint every K steps through Ray Train's ``storage_path``). In file order: the storage check refuses a run
without storage; an uninterrupted reference run; one outbid; two outbids of different workers; ``ray down`` leaving
nothing (instances, overlay, namespaces, the S3 server).

Why the weights match bit for bit (asserted with equality, no tolerance): the model starts from a fixed seed, the
batch of step s is drawn from a generator seeded with (seed, s) and split by rank, a checkpoint holds the exact
float32 tensors and the optimizer's momentum, and the world size (2) and rank order are the same in every attempt,
so each step after a restore performs the same float operations in the same order as the uninterrupted run.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from support.emulated_ray_cluster import netns_pids, pid_alive
from support.outbid_training import EXAMPLE, WORKERS, TrainCluster, TrainRun, train, train_cluster, wait_for_workers

from skyward_ray.provider.tags import decode_label

if TYPE_CHECKING:
    from support.netns_host import NetnsKit

pytestmark = pytest.mark.timeout(1500)

STEPS = 40
K = 10  # checkpoint every K steps


class Module:
    def __init__(self, tc: TrainCluster) -> None:
        self.tc = tc
        self.reference: TrainRun | None = None
        self.pids: set[int] = set()

    def remember_pids(self) -> None:
        for pids in netns_pids(self.tc.prefix).values():
            self.pids.update(pids)


@pytest.fixture(scope="module")
def mod(netns_host: None, netns_kit: NetnsKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Module]:
    prefix = netns_kit.unique_prefix()
    workdir = tmp_path_factory.mktemp("train")
    with train_cluster(workdir, prefix=prefix, public_subnet=netns_kit.free_public_subnet(),
                       name=f"e2e-train-{prefix}") as tc:
        up = tc.cluster.up()
        up.check()
        print(f"\nray up: {up.seconds:.1f} s; workers joined {wait_for_workers(tc):.1f} s later (logs {workdir})")
        module = Module(tc)
        module.remember_pids()
        yield module
        s3_pid = tc.s3.pid
    assert not tc.emulator.swept, f"the emulator left {tc.emulator.swept} after it stopped (swept now)"
    assert not netns_kit.leftovers(prefix)
    assert s3_pid is not None and not pid_alive(s3_pid), "the S3 server process is gone"


def weights(run: TrainRun) -> tuple[str, list[float], list[float]]:
    return run.done["weights_sha256"], run.done["weight"], run.done["bias"]


def check_run(mod: Module, run: TrainRun) -> None:
    """What every run must show: finished, on the overlay, with its checkpoints in the bucket."""
    assert run.returncode == 0, run.output_tail
    assert run.done["steps"] == STEPS and run.done["step"] == STEPS, run.done
    subnet = ipaddress.ip_network(mod.tc.overlay()["internal_subnet"])
    for begin in (e for e in run.events if e["phase"] == "begin"):
        assert ipaddress.ip_address(begin["node_ip"]) in subnet, f"a Train worker off the overlay: {begin}"
        assert begin["gloo_ifname"] == begin["nccl_ifname"] == "eth0", "Gloo/NCCL pointed at the overlay interface"
    attempts = run.done["attempts"]
    for attempt in attempts:
        assert len(set(attempt["instances"].values())) == WORKERS, f"one Train worker per node: {attempt}"
    keys = mod.tc.s3.keys(f"runs/{run.name}/")
    assert any(k.endswith("/state.pt") for k in keys), f"checkpoints go to the bucket: {keys[:10]}"
    assert run.done["checkpoint_path"].startswith(f"ckpt/runs/{run.name}/")


def check_replacements(mod: Module, run: TrainRun) -> None:
    """Each outbid worker was destroyed and replaced on the same physical cluster and overlay, and the restored
    attempt ran on the replacement; it resumed from the checkpoint before the outbid."""
    overlay = mod.tc.overlay()
    live = mod.tc.live()
    ledger = {e["instance_id"]: e for e in mod.tc.emulator.state()["ledger"]}
    attempts = run.done["attempts"]
    assert len(attempts) == len(run.outbids) + 1, f"one restart per outbid: {attempts}"
    for index, outbid in enumerate(run.outbids):
        victim = outbid["instance"]
        assert victim not in live and ledger[victim]["destroyed_at"] is not None, "the outbid instance is destroyed"
        before, after = attempts[index], attempts[index + 1]
        new = set(after["instances"].values()) - set(before["instances"].values())
        assert str(victim) in before["instances"].values() and str(victim) not in after["instances"].values()
        assert len(new) == 1, f"one replacement worker: {before} -> {after}"
        (replacement,) = new
        row = live.get(int(replacement)) or next(
            (r for r in mod.tc.emulator.state()["instances"] if r["id"] == int(replacement)), None)
        assert row is not None
        assert row["cluster_id"] == overlay["cluster_id"], "the replacement is on the same physical cluster"
        assert row["is_bid"], "the replacement is a bid too"
        kind = decode_label(row.get("label"))
        assert kind and kind[1].get("ray-node-type") == "worker"
        lost = before["reached"] - after["start"]
        print(f"\noutbid {index + 1}: instance {victim} at step {outbid['step']}; resumed from step "
              f"{after['start']} ({lost} step(s) recomputed); replacement {replacement}")
        assert after["start"] % K == 0 and after["start"] <= before["reached"]
        assert lost <= K, f"at most one checkpoint interval recomputed, got {lost}"
        joins = run.joins_after(outbid["t"])
        assert joins, "the replacement joined the Ray cluster during the run"
        print(f"outbid {index + 1} -> new worker joined Ray: {joins[0]['t'] - outbid['t']:.1f} s")
    assert set(overlay["members"]) == {str(i) for i in live}, "every live instance is on the one overlay"


def test_no_storage_for_a_multi_node_run_on_bids_is_one_line(mod: Module) -> None:
    refused = mod.tc.cluster.submit("--steps", "2", script=EXAMPLE, timeout_s=180)
    lines = [line for line in refused.output.replace("\r", "\n").splitlines() if "RunConfig.storage_path" in line]
    assert len(lines) == 1, refused.tail()
    assert lines[0].startswith("Error: RunConfig.storage_path: not set"), lines[0]
    assert 'storage_path="s3://' in lines[0] and "bid" in lines[0]
    assert "Traceback" not in refused.output
    assert refused.returncode != 0
    assert not mod.tc.s3.keys("runs/"), "nothing was written"


def test_uninterrupted_reference_run(mod: Module) -> None:
    run = train(mod.tc, "reference", steps=STEPS, checkpoint_every=K)
    check_run(mod, run)
    assert len(run.done["attempts"]) == 1 and run.done["recomputed_steps"] == 0, run.done["attempts"]
    mod.remember_pids()
    mod.reference = run
    print(f"\nuninterrupted: {run.done['train_s']:.1f} s for {STEPS} steps")


def _interrupted(mod: Module, name: str, outbids: int, past_checkpoint: list[int]) -> TrainRun:
    assert mod.reference is not None, "needs the reference run"
    run = train(mod.tc, name, outbids=outbids, steps=STEPS, checkpoint_every=K, past_checkpoint=past_checkpoint)
    mod.remember_pids()
    check_run(mod, run)
    check_replacements(mod, run)
    assert weights(run) == weights(mod.reference), "the final weights equal the uninterrupted run's, bit for bit"
    assert 0 <= run.done["recomputed_steps"] <= K * outbids
    print(f"{outbids} outbid(s): {run.done['train_s']:.1f} s "
          f"(x{run.done['train_s'] / mod.reference.done['train_s']:.2f} the uninterrupted run)")
    return run


def test_one_outbid_restores_from_the_latest_checkpoint(mod: Module) -> None:
    _interrupted(mod, "one-outbid", 1, past_checkpoint=[2])


def test_two_outbids_of_different_workers(mod: Module) -> None:
    # The second outbid comes late in its interval: nearly K steps are lost, never more.
    run = _interrupted(mod, "two-outbids", 2, past_checkpoint=[2, K - 3])
    first, second = (o["instance"] for o in run.outbids)
    assert first != second, "two different workers"


def test_ray_down_leaves_nothing(mod: Module) -> None:
    mod.remember_pids()
    down = mod.tc.cluster.down()
    down.check()
    state = mod.tc.emulator.state()
    assert state["instances"] == [] and state["overlays"] == [], (state["instances"], state["overlays"])
    assert all(e["destroyed_at"] is not None for e in state["ledger"]), "every rental ended"
    assert netns_pids(mod.tc.prefix) == {}
    assert not [pid for pid in sorted(mod.pids) if pid_alive(pid)]
