"""``ray up skyward_ray/demo/emulator.yaml`` for real: Ray's own CLI, our provider, the netns emulator, one cluster.

The module shares ONE cluster (a module-scoped fixture): ``ray up`` once, then the tests in file order, each building
on the last, as a user's session does: the head and the CLI commands; ``ray up`` again; GPU demand renting workers on
the overlay; a worker outbid mid-job and replaced; idle workers removed; ``ray down`` leaving nothing. The emulator
runs as a child process with its own prefix, subnet and port (:mod:`support.emulated_ray_cluster`), and is stopped
and swept whatever happens.

The config is a copy of ``skyward_ray/demo/emulator.yaml`` changed only where a test must: the API URL of this
emulator, a cluster name and SSH key of its own, and a short ``idle_timeout_minutes``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support.emulated_ray_cluster import RayCluster, emulated_cluster, json_lines, netns_pids, pid_alive, poll

from skyward_ray.provider.tags import TAG_OVERLAY_IP, decode_label

if TYPE_CHECKING:
    from support.netns_host import NetnsKit

pytestmark = pytest.mark.timeout(600)

IDLE_TIMEOUT_MIN = 0.25  # the test copy's idle_timeout_minutes: 15 s
GPU_NODES = 3  # demand: 3 one-GPU actors -> the head (1 GPU) + 2 rented workers
TASK_S = 25.0  # each task of the outbid job holds its GPU this long
HEAD, WORKER = "head", "worker"


class Run:
    """What the tests learn as they go, for the ones after them (shared with the module's cluster)."""

    def __init__(self, cluster: RayCluster, prefix: str, up_seconds: float) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.up_seconds = up_seconds
        self.head_id: int | None = None
        self.pids: set[int] = set()  # every process seen in the run's namespaces
        self.job_results: list[dict[str, Any]] = []

    @property
    def emulator(self) -> Any:
        return self.cluster.emulator

    def remember_pids(self) -> None:
        for pids in netns_pids(self.prefix).values():
            self.pids.update(pids)

    def instances(self) -> dict[int, dict[str, Any]]:
        """Live instances by id, each with its decoded Ray node kind."""
        rows = {}
        for row in self.emulator.live_instances():
            decoded = decode_label(row.get("label"))
            row["kind"] = decoded[1].get("ray-node-type") if decoded else None
            rows[int(row["id"])] = row
        return rows


@pytest.fixture(scope="module")
def run(netns_host: None, netns_kit: NetnsKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    prefix = netns_kit.unique_prefix()
    workdir = tmp_path_factory.mktemp("rayup")
    with emulated_cluster(workdir, prefix=prefix, public_subnet=netns_kit.free_public_subnet(),
                          name=f"e2e-{prefix}", idle_timeout_minutes=IDLE_TIMEOUT_MIN) as cluster:
        up = cluster.up()
        up.check()
        print(f"\nray up: {up.seconds:.1f} s (logs: {cluster.logs})")
        yield Run(cluster, prefix, up.seconds)
    assert not cluster.emulator.swept, f"the emulator left {cluster.emulator.swept} after it stopped (swept now)"
    assert not netns_kit.leftovers(prefix)


def overlay_of(state: dict[str, Any]) -> dict[str, Any]:
    overlays = state["overlays"]
    assert len(overlays) == 1, f"expected one overlay, found {overlays}"
    return overlays[0]


def test_ray_up_brings_up_the_head_on_an_overlay(run: Run) -> None:
    assert run.emulator.enforced_limits == "documented", "ray up lives within Vast's documented limits"
    instances = run.instances()
    assert len(instances) == 1, f"ray up should rent the head only: {list(instances)}"
    (head_id, head), = instances.items()
    run.head_id = head_id
    assert head["kind"] == HEAD and head["actual_status"] == "running"
    assert not head["is_bid"], "the head is on-demand"
    overlay = overlay_of(run.emulator.state())
    assert overlay["cluster_id"] == head["cluster_id"] is not None
    assert str(head_id) in overlay["members"]
    run.remember_pids()

    head_ip = run.cluster.ray("get-head-ip", timeout_s=60).check()
    assert head["public_ipaddr"] in head_ip.output.split()


def test_exec_submit_attach_and_rsync_reach_the_head(run: Run, tmp_path: Path) -> None:
    head_id = run.head_id
    assert head_id is not None, "needs the head from the ray up test"
    overlay = ipaddress.ip_network(overlay_of(run.emulator.state())["internal_subnet"])

    shown = run.cluster.exec('echo "E2E-JSON {\\"instance\\": \\"$CONTAINER_ID\\", \\"ray\\": \\"$(command -v ray)\\"}"'
                             "; ray status").check()
    (where,) = json_lines(shown.output)
    assert where["instance"] == str(head_id)
    assert where["ray"].startswith("/"), "the login shell finds ray (pitfall 12)"
    assert "1 head" in shown.output, shown.tail()

    token = secrets.token_hex(8)
    upload = tmp_path / "upload.txt"
    upload.write_text(token)
    run.cluster.ray("rsync-up", str(upload), "~/e2e-upload.txt", timeout_s=120).check()
    assert token in run.cluster.exec("cat ~/e2e-upload.txt").check().output

    probe = run.cluster.submit("probe", "an-argument").check()
    (report,) = json_lines(probe.output)
    assert report["instance"] == str(head_id) and report["argv"] == ["an-argument"]
    assert ipaddress.ip_address(report["node_ip"]) in overlay, "Ray runs on the overlay address"
    assert report["resources"].get("GPU") == 1, "the head's offer has one GPU, and Ray sees it"

    # ray attach opens a login shell on the head; a script on its stdin stands for the user typing.
    attach = run.cluster.ray("attach", stdin="echo E2E-ATTACH-$CONTAINER_ID\nexit\n", timeout_s=60).check()
    assert f"E2E-ATTACH-{head_id}" in attach.output, attach.tail()


def test_ray_up_again_keeps_the_head_and_restarts_ray(run: Run) -> None:
    """A second ``ray up`` (Ray's config cache on, as a user's re-run) rents nothing new and restarts Ray on the same
    head (pitfall 14); the next test shows that the restarted autoscaler still rents."""
    before = run.instances()
    again = run.cluster.ray("up", "-y", timeout_s=300).check()
    print(f"\nray up again: {again.seconds:.1f} s")
    assert run.instances().keys() == before.keys() == {run.head_id}
    assert "Ray runtime started" in again.output, again.tail()
    status = run.cluster.exec("ray status").check()
    assert "1 head" in status.output, status.tail()


def test_gpu_demand_rents_workers_that_join_over_the_overlay(run: Run) -> None:
    started = time.monotonic()
    held = run.cluster.submit("hold", str(GPU_NODES), timeout_s=420).check()
    held_at = time.time()
    print(f"\ndemand for {GPU_NODES} GPUs -> {GPU_NODES - 1} workers running Ray: {time.monotonic() - started:.1f} s")
    (report,) = json_lines(held.output)
    holders = report["holders"]
    run.remember_pids()

    state = run.emulator.state()
    instances = run.instances()
    overlay = overlay_of(state)
    subnet = ipaddress.ip_network(overlay["internal_subnet"])
    assert {h["instance"] for h in holders} == {str(i) for i in instances}, "one GPU actor per rented instance"
    kinds = sorted(row["kind"] for row in instances.values())
    assert kinds == [HEAD] + [WORKER] * (GPU_NODES - 1)
    assert {row["cluster_id"] for row in instances.values()} == {overlay["cluster_id"]}, "one physical cluster"
    assert set(overlay["members"]) == {str(i) for i in instances}, "every instance joined the one overlay"
    for holder in holders:
        assert holder["node_ip"] == overlay["members"][holder["instance"]], "Ray's node IP is the overlay address"
        assert ipaddress.ip_address(holder["node_ip"]) in subnet
        assert holder["nccl_ifname"] == "eth0", "NCCL/Gloo are pointed at the overlay interface"

    # The overlay address came from the node: the API lists host-side addresses only, the label carries what was read
    # on the node at first contact, and no worker waited overlay_timeout for an address the API never serves.
    overlay_timeout = run.cluster.config["provider"].get("overlay_timeout", 120)
    created = {e["instance_id"]: e["created_at"] for e in state["ledger"]}
    for instance_id, row in instances.items():
        member = overlay["members"][str(instance_id)]
        assert member not in str(row.get("local_ipaddrs") or ""), f"the API showed {instance_id}'s overlay address"
        decoded = decode_label(row.get("label"))
        assert decoded is not None and decoded[1].get(TAG_OVERLAY_IP) == member, (instance_id, row.get("label"))
        if row["kind"] == WORKER:
            ready_s = held_at - created[instance_id]
            print(f"worker {instance_id}: rented -> Ray on {member}: at most {ready_s:.1f} s")
            assert ready_s < overlay_timeout, f"worker {instance_id} took {ready_s:.1f} s (overlay_timeout wait?)"

    nodes = json_lines(run.cluster.python_on_head(
        "import json, ray; ray.init(address='auto', log_to_driver=False); "
        "print('E2E-JSON ' + json.dumps([n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']]))").check().output)
    assert sorted(nodes[0]) == sorted(overlay["members"].values()), "every live Ray node is on the overlay"

    # Between instances: their public addresses do not reach each other (Vast's NAT), the overlay does.
    targets = []
    for instance_id, row in instances.items():
        if row["kind"] == WORKER:
            host_port = int(row["ports"]["22/tcp"][0]["HostPort"])
            targets.append({"id": instance_id, "public": [row["public_ipaddr"], host_port],
                            "overlay": [overlay["members"][str(instance_id)], 22]})
    probe = (
        "import json, socket\n"
        "def ok(host, port):\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=3).close()\n"
        "        return True\n"
        "    except OSError:\n"
        "        return False\n"
        f"targets = {json.dumps(targets)}\n"
        "print('E2E-JSON ' + json.dumps([{'id': t['id'], 'public': ok(*t['public']), 'overlay': ok(*t['overlay'])}"
        " for t in targets]))\n"
    )
    (reach,) = json_lines(run.cluster.python_on_head(probe).check().output)
    assert len(reach) == GPU_NODES - 1
    for result in reach:
        assert result == {"id": result["id"], "public": False, "overlay": True}, reach

    # The account's API key: a 0600 file on the head only; never on a worker, in an env, a label or an onstart.
    ssh = ("ssh -i ~/ray_bootstrap_key.pem -o BatchMode=yes -o StrictHostKeyChecking=no "
           "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
    workers = " ".join(t["overlay"][0] for t in targets)
    keys = run.cluster.exec(
        "echo E2E-KEY-HEAD $(stat -c %a ~/.skyward/vast_api_key); "
        f"for ip in {workers}; do echo E2E-KEY-WORKER $ip $({ssh} root@$ip "
        "'test -e ~/.skyward/vast_api_key && echo present || echo absent'); done").check().output
    assert re.search(r"^E2E-KEY-HEAD 600\r?$", keys, re.M), keys
    on_workers = re.findall(r"^E2E-KEY-WORKER \S+ (\w+)\r?$", keys, re.M)
    assert on_workers == ["absent"] * (GPU_NODES - 1), keys
    assert state["account_key_leaks"] == 0


def test_outbid_worker_is_replaced_and_the_job_completes(run: Run) -> None:
    before = run.instances()
    job = run.cluster.submit_background("spread", str(GPU_NODES), str(TASK_S))
    try:
        started = job.wait_for_json(300, "every task of the job to start")
        assert started["phase"] == "started"
        on_workers = [s for s in started["starts"] if before.get(int(s["instance"]), {}).get("kind") == WORKER]
        assert on_workers, f"no task started on a worker: {started}"
        victim = int(on_workers[0]["instance"])
        assert before[victim]["is_bid"], "workers rent interruptible offers (spot-if-available), so can be outbid"
        run.emulator.outbid(victim)
        outbid_at = time.monotonic()

        done = job.wait_for_json(420, "the job to finish after the outbid")
        finished = job.wait(60)
    finally:
        job.kill()
    assert finished.returncode == 0, finished.tail()
    print(f"\noutbid -> job done on a replacement: {time.monotonic() - outbid_at:.1f} s")
    run.remember_pids()

    assert done["sum_ok"], done
    final = {int(r["instance"]) for r in done["results"]}
    assert victim not in final, "the outbid worker's task was retried elsewhere"
    replacements = final - set(before)
    assert len(replacements) == 1, f"one new worker replaced the outbid one: {final} vs {set(before)}"
    retried = [s for s in done["starts"] if s["task"] == on_workers[0]["task"]]
    assert [int(s["instance"]) for s in retried][-1] in replacements, retried

    state = run.emulator.state()
    live = run.instances()
    assert victim not in live, "the provider destroyed the outbid instance"
    (ledger,) = [e for e in state["ledger"] if e["instance_id"] == victim]
    assert ledger["destroyed_at"] is not None
    overlay = overlay_of(state)
    for new in replacements:
        assert live[new]["cluster_id"] == overlay["cluster_id"] and str(new) in overlay["members"]
    run.job_results = done["results"]


def test_idle_workers_are_removed_after_idle_timeout(run: Run) -> None:
    assert run.job_results, "needs the workers of the outbid test"
    idle_s = IDLE_TIMEOUT_MIN * 60
    workers = {int(r["instance"]) for r in run.job_results if int(r["instance"]) != run.head_id}
    assert workers
    # A node holding a bundle of the job's placement group is in use until the job removes it, after its last task.
    idle_since = max(r["ended"] for r in run.job_results)

    poll(lambda: not workers & set(run.instances()), timeout_s=idle_s + 120, interval_s=2,
         what=f"idle workers {sorted(workers)} to be removed")
    ledger = {e["instance_id"]: e for e in run.emulator.state()["ledger"]}
    for instance_id in sorted(workers):
        idle_for = ledger[instance_id]["destroyed_at"] - idle_since
        print(f"\nworker {instance_id}: destroyed {idle_for:.1f} s after the job ended (idle timeout {idle_s:.0f} s)")
        assert idle_s - 1 <= idle_for <= idle_s + 90, f"worker {instance_id} removed {idle_for:.1f} s after going idle"
    assert set(run.instances()) == {run.head_id}, "the head stays"


def test_ray_down_leaves_no_instance_overlay_namespace_or_process(run: Run) -> None:
    run.remember_pids()
    assert run.pids, "the run's namespaces had processes"
    down = run.cluster.down()
    down.check()
    print(f"\nray down: {down.seconds:.1f} s")

    state = run.emulator.state()
    assert state["instances"] == [] and state["overlays"] == [], (state["instances"], state["overlays"])
    assert all(e["destroyed_at"] is not None for e in state["ledger"]), "every rental ended"
    assert netns_pids(run.prefix) == {}, "no namespace of the run is left"
    left = [pid for pid in sorted(run.pids) if pid_alive(pid)]
    assert not left, f"processes of the run still alive: {left}"
    # The laptop side: Ray's SSH masters for this cluster end by themselves (ControlPersist) once idle.
    poll(lambda: not run.cluster.ssh_master_pids(), timeout_s=30, interval_s=1,
         what="the cluster's SSH master connections to end")

    statuses = run.emulator.counters()["statuses"]
    refused = {endpoint: by_status["429"] for endpoint, by_status in statuses.items() if by_status.get("429")}
    print(f"\n429s under the documented limits, by endpoint: {refused}")
    listing = {endpoint: n for endpoint, n in refused.items() if endpoint.startswith("GET /api/")}
    assert not listing, f"reading the cluster earned 429s: {listing}"

