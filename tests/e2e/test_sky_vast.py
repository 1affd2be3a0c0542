"""The ``sky`` API launching its own pools on the netns Vast emulator: Ray's launcher SDK, our provider, Ray Client
through an SSH tunnel to the head, and teardown that leaves nothing.

One emulator for the module (in-process, its own name prefix and public subnet, seed 1: a market where every
example finds its offers), then:

* a two-node pool in this process (one launch): a torch Gloo all-reduce over the overlay through
  ``sky.integrations.torch()``, ``@`` in rank order, ``gather`` concurrent across the nodes, the plain ``ray.remote``
  example attached to the same cluster; then the block raises, and the tests check that nothing is left;
* every example in examples/ as the script a user runs, with only ``VAST_URL`` and ``VAST_API_KEY`` set, each
  launching and removing its own pool.

The emulated hosts run this machine's Python environment (the "image" is not pulled), so the packages the examples'
images ask for must be installed here for the nodes' ``pip install`` to have nothing to do: a namespace has no route
to a package index.
"""

from __future__ import annotations

import ast
import importlib.util
import ipaddress
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import ray

import skyward_ray as sky
from skyward_ray.emulator.netns import NetnsRuntime, clean_leftovers
from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.provider.tags import decode_label
from skyward_ray.sky.launcher import LaunchError
from skyward_ray.sky.ssh_tunnel import ssh_control_dir
from skyward_ray.sky.vast_launcher import VastLauncher

if TYPE_CHECKING:
    from support.netns_host import NetnsKit

pytestmark = pytest.mark.timeout(480)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SEED = 1  # the default scenario with this seed has offers for every example (A100 on-demand at 0.99 in the US too)
TASK_S = 3.0
# What the examples' images ask for beyond the project's own requirements (see the module docstring).
EXAMPLE_PACKAGES = ("numpy", "scipy", "transformers")


# ---------------------------------------------------------------------------------------------------------------------
# The emulator


@dataclass
class Emulated:
    server: EmulatorServer
    prefix: str

    @property
    def env(self) -> dict[str, str]:
        return {"VAST_URL": self.server.url, "VAST_API_KEY": self.server.api_key}

    def state(self) -> dict[str, Any]:
        return self.server.market.dump()

    def live_instances(self) -> list[dict[str, Any]]:
        return [row for row in self.state()["instances"] if row.get("actual_status") not in ("destroyed", "exited")]

    def namespaces(self) -> list[str]:
        """Instance namespaces of this emulator the kernel still has."""
        run_netns = Path("/run/netns")
        return sorted(e.name for e in run_netns.iterdir() if e.name.startswith(f"{self.prefix}-i")) \
            if run_netns.is_dir() else []

    def nothing_left(self) -> dict[str, Any]:
        """What a removed pool must not leave: live instances, overlays, namespaces (empty lists when clean)."""
        state = self.state()
        return {
            "instances": [r["id"] for r in state["instances"] if r.get("actual_status") not in ("destroyed", "exited")],
            "overlays": [o["name"] for o in state["overlays"]],
            "namespaces": self.namespaces(),
        }


@pytest.fixture(scope="module")
def emulator(netns_host: None, netns_kit: NetnsKit) -> Iterator[Emulated]:
    prefix = netns_kit.unique_prefix()
    runtime = NetnsRuntime(prefix=prefix, public_subnet=netns_kit.free_public_subnet())
    server = EmulatorServer(scenario="default", seed=SEED, boot_delay_s=1.0, runtime=runtime)
    try:
        server.start()
        yield Emulated(server, prefix)
    finally:
        server.stop()  # destroys what the runtime holds and closes it (also when start failed)
        swept = clean_leftovers(prefix)
        assert not swept, f"the emulator left {swept} behind (swept now)"
        assert not netns_kit.leftovers(prefix)


@pytest.fixture(scope="module")
def example_packages() -> None:
    """Install what the examples' images need into this environment, which the emulated hosts share."""
    missing = [name for name in EXAMPLE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"\ninstalling {missing} for the examples' images (the emulated hosts share this environment)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True, timeout=600)


def ssh_key(directory: Path) -> Path:
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sky-vast-e2e", "-f", str(key)], check=True)
    return key


# ---------------------------------------------------------------------------------------------------------------------
# A two-node pool in this process: everything inside one block, which then raises


@sky.compute
@sky.integrations.torch()
def all_reduce_rank_plus_one() -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    return {"rank": dist.get_rank(), "world_size": dist.get_world_size(), "backend": dist.get_backend(),
            "sum": total.item(), "master_addr": os.environ["MASTER_ADDR"],
            "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME"), "instance": os.environ.get("CONTAINER_ID")}


@sky.compute
def where_am_i() -> dict[str, Any]:
    info = sky.instance_info()
    assert info is not None
    return {"rank": info.rank, "ip": info.ip, "peers": list(info.peers), "instance": os.environ.get("CONTAINER_ID")}


@sky.compute
def nap(seconds: float) -> dict[str, Any]:
    started = time.time()
    time.sleep(seconds)
    info = sky.instance_info()
    return {"rank": info.rank if info else None, "started": started, "ended": time.time()}


class Boom(Exception):
    """What the pool's block raises at its end."""


@dataclass
class TwoNodeRun:
    """What happened inside the block and what was left after it."""

    steps: dict[str, Any] = field(default_factory=dict)  # step -> result, or the exception it raised
    during: dict[str, Any] = field(default_factory=dict)
    raised: BaseException | None = None
    after: dict[str, Any] = field(default_factory=dict)
    progress: list[str] = field(default_factory=list)

    def result(self, step: str) -> Any:
        value = self.steps.get(step, AssertionError(f"step {step!r} did not run"))
        if isinstance(value, BaseException):
            raise AssertionError(f"step {step!r} failed: {value!r}") from value
        return value


def _attempt(run: TwoNodeRun, step: str, fn: Callable[[], Any]) -> None:
    try:
        run.steps[step] = fn()
    except Exception as exc:
        run.steps[step] = exc


@pytest.fixture(scope="module")
def two_nodes(emulator: Emulated, example_packages: None, tmp_path_factory: pytest.TempPathFactory
              ) -> TwoNodeRun:
    run = TwoNodeRun()
    key = ssh_key(tmp_path_factory.mktemp("ssh"))
    launcher = VastLauncher(ssh_private_key=key, progress=run.progress.append)
    pool = sky.ComputePool(
        provider=sky.VastAI(geolocation="US", min_reliability=0.98, api_key=emulator.server.api_key),
        accelerator="RTX 4090", nodes=2, image=sky.Image(pip=["torch"]), launcher=launcher,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAST_URL", emulator.server.url)
        patch.delenv("VAST_API_KEY", raising=False)  # the key travels only as sky.VastAI(api_key=...)
        patch.delenv("RAY_ADDRESS", raising=False)
        try:
            with pool:
                workdir = launcher.workdir
                tunnel = launcher.tunnel
                assert workdir is not None and tunnel is not None
                key_file = workdir / "vast_api_key"
                run.during = {
                    "state": emulator.state(), "workdir": workdir, "tunnel_pid": tunnel.pid, "address": pool.address,
                    "key_file_mode": key_file.stat().st_mode & 0o777, "config": (workdir / "cluster.json").read_text(),
                    "cluster_name": launcher.cluster_name, "key_file": key_file,
                }
                _attempt(run, "all_reduce", lambda: all_reduce_rank_plus_one() @ sky)
                _attempt(run, "broadcast", lambda: where_am_i() @ sky)
                _attempt(run, "warm_up", lambda: sky.gather(nap(0.0), nap(0.0)) >> sky)

                def timed_gather() -> dict[str, Any]:
                    started = time.monotonic()
                    results = sky.gather(*(nap(TASK_S) for _ in range(2))) >> sky
                    return {"seconds": time.monotonic() - started, "results": results}

                _attempt(run, "gather", timed_gather)
                _attempt(run, "ray_remote_example", lambda: on_head(
                    launcher, f"cd {REPO} && python examples/ray_remote_on_ray_up.py"))
                raise Boom("the block fails after its work")
        except Boom as exc:
            run.raised = exc
    cluster_name = str(run.during.get("cluster_name"))
    workdir = run.during.get("workdir")
    run.after = {
        **emulator.nothing_left(),
        "account_key_leaks": emulator.state()["account_key_leaks"],
        "ray_connected": ray.is_initialized(),
        "tunnel_alive": _alive(run.during.get("tunnel_pid")),
        "workdir_exists": workdir is not None and Path(workdir).exists(),
        "ssh_control_dir_exists": ssh_control_dir(cluster_name).exists(),
    }
    return run


def on_head(launcher: VastLauncher, command: str, timeout_s: float = 180.0) -> str:
    """Run ``command`` in the head's login shell, as ``ray submit``/``ray exec`` do (the emulated hosts see this
    machine's files); its output, or AssertionError with it."""
    tunnel = launcher.tunnel
    assert tunnel is not None
    host, port = tunnel.endpoint
    done = subprocess.run(
        ["ssh", "-i", tunnel.key, "-p", str(port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
         f"{tunnel.user}@{host}", f"bash --login -c {shlex.quote(command)}"],
        capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"{command!r} on the head exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_the_pool_rents_an_on_demand_head_and_a_worker_on_one_overlay(two_nodes: TwoNodeRun) -> None:
    state = two_nodes.during["state"]
    live = [r for r in state["instances"] if r.get("actual_status") == "running"]
    kinds = {r["id"]: decode_label(r.get("label"))[1].get("ray-node-type") for r in live}
    assert sorted(kinds.values()) == ["head", "worker"], kinds
    head = next(r for r in live if kinds[r["id"]] == "head")
    assert not head["is_bid"], "allocation spot-if-available keeps the head on-demand"
    (overlay,) = state["overlays"]
    assert sorted(overlay["members"]) == sorted(str(r["id"]) for r in live)
    assert {r["cluster_id"] for r in live} == {overlay["cluster_id"]}


def test_the_api_key_is_only_a_0600_file_never_in_the_config(two_nodes: TwoNodeRun, emulator: Emulated) -> None:
    assert two_nodes.during["key_file_mode"] == 0o600
    assert emulator.server.api_key not in two_nodes.during["config"]
    assert str(two_nodes.during["key_file"]) in two_nodes.during["config"]
    assert two_nodes.after["account_key_leaks"] == 0


def test_torch_gloo_all_reduce_across_two_nodes_over_the_overlay(two_nodes: TwoNodeRun) -> None:
    results = two_nodes.result("all_reduce")
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["sum"] for r in results] == [3.0, 3.0], "1 + 2 on every rank"
    assert {r["world_size"] for r in results} == {2} and {r["backend"] for r in results} == {"gloo"}
    (overlay,) = two_nodes.during["state"]["overlays"]
    subnet = ipaddress.ip_network(overlay["internal_subnet"])
    master = {r["master_addr"] for r in results}
    assert len(master) == 1 and ipaddress.ip_address(master.pop()) in subnet, "MASTER_ADDR is rank 0's overlay IP"
    assert {r["gloo_ifname"] for r in results} == {"eth0"}, "Gloo talks on the overlay interface"
    assert results[0]["instance"] != results[1]["instance"], "one process per emulated node"


def test_broadcast_gives_one_result_per_node_in_rank_order(two_nodes: TwoNodeRun) -> None:
    results = two_nodes.result("broadcast")
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["ip"] for r in results] == results[0]["peers"], "rank i ran on peer i"
    assert len({r["instance"] for r in results}) == 2
    state = two_nodes.during["state"]
    head = next(r for r in state["instances"]
                if decode_label(r.get("label"))[1].get("ray-node-type") == "head" and r["actual_status"] == "running")
    assert results[0]["instance"] == str(head["id"]), "rank 0 is the head"


def test_gather_runs_concurrently_across_the_nodes(two_nodes: TwoNodeRun) -> None:
    gathered = two_nodes.result("gather")
    results = gathered["results"]
    assert sorted(r["rank"] for r in results) == [0, 1], "one call per node"
    assert gathered["seconds"] < 1.6 * TASK_S, f"2 x {TASK_S} s over 2 nodes took {gathered['seconds']:.1f} s"
    latest_start = max(r["started"] for r in results)
    assert latest_start < min(r["ended"] for r in results), "the calls overlapped"


def test_the_plain_ray_remote_example_runs_on_the_head_of_the_pools_cluster(two_nodes: TwoNodeRun) -> None:
    output = two_nodes.result("ray_remote_example")
    assert "sum of squares: 1240 (expected 1240)" in output
    (overlay,) = two_nodes.during["state"]["overlays"]
    (listed,) = [line for line in output.splitlines() if line.startswith("cluster nodes: ")]
    nodes = ast.literal_eval(listed.removeprefix("cluster nodes: "))
    subnet = ipaddress.ip_network(overlay["internal_subnet"])
    assert len(nodes) == 2 and all(ipaddress.ip_address(ip) in subnet for ip in nodes), "Ray runs on the overlay"


def test_progress_shows_the_head_the_overlay_the_workers_and_the_connection(two_nodes: TwoNodeRun) -> None:
    text = "\n".join(two_nodes.progress)
    for expected in ("renting the head", "overlay ", "workers joining: 1/1 up", "connected: 2 node(s)",
                     "removed: no instance or overlay left"):
        assert expected in text, f"{expected!r} not in the progress:\n{text}"


def test_a_block_that_raises_leaves_nothing(two_nodes: TwoNodeRun) -> None:
    assert isinstance(two_nodes.raised, Boom), "the block's own exception reaches the caller"
    after = two_nodes.after
    assert (after["instances"], after["overlays"], after["namespaces"]) == ([], [], []), after
    assert not after["ray_connected"] and not after["tunnel_alive"]
    assert not after["workdir_exists"] and not after["ssh_control_dir_exists"], "local files and SSH masters"


# ---------------------------------------------------------------------------------------------------------------------
# Every example, as a user runs it


def run_example(name: str, extra_env: dict[str, str], emulator: Emulated | None, home: Path | None = None,
                timeout_s: float = 400.0) -> str:
    """Run ``examples/<name>`` in a fresh process; its stdout (the assertion message carries both streams)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VAST_URL", "VAST_API_KEY")}
    env.update(extra_env, PYTHONUNBUFFERED="1")
    if emulator is not None:
        env.update(emulator.env)
    if home is not None:
        env["HOME"] = str(home)  # the default SSH key and caches go here, not to this machine's ~
        env["RAY_TMPDIR"] = str(home / "ray-tmp")  # no stray local cluster file to attach to
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout + "\n--- stderr ---\n" + done.stderr


@pytest.fixture
def example_home(tmp_path: Path) -> Path:
    (tmp_path / "ray-tmp").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("production_inference.py", "Predictions: [{'input': 'hello'"),
        ("basic_usage.py", "hello from C."),
        ("single_node_training.py", "Training result: {'loss': "),
        ("batch_processing.py", "Processed 10 batches"),
    ],
)
def test_single_node_example_runs_on_its_own_pool(name: str, expected: str, emulator: Emulated,
                                                  example_packages: None, example_home: Path) -> None:
    output = run_example(name, {}, emulator, home=example_home)
    assert expected in output
    assert "sky: " in output and "connected: 1 node(s)" in output, "progress lines on stderr"
    assert emulator.nothing_left() == {"instances": [], "overlays": [], "namespaces": []}


def test_multi_node_example_all_reduces_across_four_emulated_nodes(emulator: Emulated, example_packages: None,
                                                                   example_home: Path) -> None:
    output = run_example("multi_node_distributed.py", {}, emulator, home=example_home)
    assert [line for line in output.splitlines() if line.startswith("Node ")] == [
        f"Node {rank}/4 completed" for rank in range(4)
    ]
    assert "all-reduce sum on every node: [10.0, 10.0, 10.0, 10.0] (expected 10.0, backend gloo)" in output
    assert "workers joining: 3/3 up" in output
    assert emulator.nothing_left() == {"instances": [], "overlays": [], "namespaces": []}


def test_configuration_example_needs_no_cluster(example_home: Path) -> None:
    output = run_example("configuration.py", {}, None, home=example_home, timeout_s=120)
    assert "all seed configurations are valid" in output


def test_ctrl_c_while_the_pool_comes_up_leaves_nothing(emulator: Emulated, example_home: Path) -> None:
    """SIGINT once the head is rented and the overlay made, while Ray starts on the head: the launch stops, and the
    teardown removes the head and the overlay before the process exits."""
    script = example_home / "interrupted.py"
    script.write_text(
        "import skyward_ray as sky\n"
        "with sky.ComputePool(provider=sky.VastAI(geolocation='US'), accelerator='RTX 4090', nodes=2):\n"
        "    print('the block must not run')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(emulator.env, HOME=str(example_home), RAY_TMPDIR=str(example_home / "ray-tmp"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "head: starting Ray" in line:
                rented = emulator.nothing_left()
                proc.send_signal(signal.SIGINT)
                break
            assert time.monotonic() < deadline, "the launch never reached 'head: starting Ray':\n" + "\n".join(lines)
        else:
            raise AssertionError("the script ended before the head started Ray:\n" + "\n".join(lines))
        remaining, _ = proc.communicate(timeout=300)
        lines += remaining.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    output = "\n".join(lines)
    assert rented["instances"] and rented["overlays"], f"the head and overlay existed when interrupted: {rented}"
    assert proc.returncode != 0 and "KeyboardInterrupt" in output
    assert "the block must not run" not in output
    assert "removed: no instance or overlay left" in output, output[-3000:]
    assert emulator.nothing_left() == {"instances": [], "overlays": [], "namespaces": []}


def test_a_launch_that_finds_no_offer_says_why_and_leaves_nothing(emulator: Emulated,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    lines: list[str] = []
    launcher = VastLauncher(ssh_private_key=ssh_key(tmp_path_factory.mktemp("ssh")), progress=lines.append)
    pool = sky.ComputePool(provider=sky.VastAI(geolocation="US", min_reliability=1.0, api_key=emulator.server.api_key),
                           accelerator="H100", nodes=2, launcher=launcher)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAST_URL", emulator.server.url)
        patch.delenv("RAY_ADDRESS", raising=False)
        with pytest.raises(LaunchError, match=r"launching the pool on Vast failed: .*H100") as raised:
            pool.start()
    assert emulator.server.api_key not in str(raised.value)
    assert not ray.is_initialized() and launcher.workdir is None
    assert any("removed: no instance or overlay left" in line for line in lines), lines
    assert emulator.nothing_left() == {"instances": [], "overlays": [], "namespaces": []}
