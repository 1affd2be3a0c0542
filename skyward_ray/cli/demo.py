"""``skyward-ray demo``: the whole mission on one machine, readable from start to end.

It starts the Vast emulator with the ``netns`` host runtime, brings a Ray cluster up on it with ``ray up``, submits a
job that needs more GPUs than the head has (so the autoscaler rents workers in the head's physical cluster and joins
them to its overlay), prints what ran where, tears everything down with ``ray down``, stops the emulator and checks
that nothing is left. Every step is bounded in time; a failure still tears down what was made.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from skyward_ray.errors import SkywardError

REPO_ROOT = Path(__file__).resolve().parents[2]
EMULATOR_CONFIG = REPO_ROOT / "cluster_configs" / "emulator.yaml"
DEMO_JOB = REPO_ROOT / "examples" / "demo_job.py"
# Ray's own progress lines worth showing while the rest goes to the log file.
_RAY_PROGRESS = re.compile(
    r"^\s*(\[\d+/\d+\]|Acquiring|Launched|Got IP|Fetching|Shared connection|Cluster:|Destroying|Requested \d+|"
    r"Adding \d+ node|Removing \d+ node|.*Resized to)"
)


@dataclass
class Step:
    name: str
    seconds: float
    ok: bool


@dataclass
class DemoRun:
    log_dir: Path
    steps: list[Step] = field(default_factory=list)
    instances_seen: dict[int, dict[str, object]] = field(default_factory=dict)
    job_report: dict[str, object] | None = None
    leftovers: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        index = len(self.steps) + 1
        print(f"\n== [{index}] {title}", flush=True)
        started = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            seconds = time.monotonic() - started
            self.steps.append(Step(title, seconds, ok))
            print(f"   {'done' if ok else 'FAILED'} in {seconds:.1f} s", flush=True)


def _run_streamed(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> str:
    """Run ``cmd``, keep its whole output in ``log``, echo Ray's progress lines; return the output."""
    lines: list[str] = []
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                lines.append(line)
                if _RAY_PROGRESS.match(line):
                    print(f"   | {line.rstrip()[:150]}", flush=True)
            code = proc.wait()
        finally:
            timer.cancel()
    if code != 0:
        tail = "".join(lines[-15:])
        raise SkywardError(f"{cmd[0]} {cmd[1]} exited with {code} (full log: {log}); last lines:\n{tail}")
    return "".join(lines)


class _Emulator:
    """The emulator as a child process, so its namespaces go away with it even if this process is interrupted."""

    def __init__(self, port: int, boot_delay_s: float, log: Path) -> None:
        self.port = port
        self.boot_delay_s = boot_delay_s
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.api_key = ""

    def start(self) -> None:
        cmd = [sys.executable, "-m", "skyward_ray.cli", "emulator", "serve", "--runtime", "netns", "--port",
               str(self.port), "--boot-delay", str(self.boot_delay_s), "--scenario", "default", "--seed", "7"]
        self._sink = self.log.open("a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._sink, text=True,
                                     stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
            if line.strip().startswith("{"):
                break
        if not line.strip().startswith("{"):
            self.stop()
            raise SkywardError(f"the emulator did not start within 60 s (log: {self.log})")
        ready = json.loads(line)
        self.url, self.api_key = ready["url"], ready["api_key"]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _watch_instances(emulator: _Emulator, run: DemoRun, stop: threading.Event) -> None:
    """Print each rental as it appears on the marketplace (the autoscaler at work)."""
    from skyward_ray.vast.client import VastClient

    with VastClient(api_key=emulator.api_key, base_url=emulator.url) as client:
        while not stop.wait(2.0):
            try:
                instances = client.list_instances()
            except SkywardError:
                continue
            for inst in instances:
                if inst.id in run.instances_seen:
                    continue
                row = {
                    "id": inst.id,
                    "machine": inst.machine_id,
                    "cluster": inst.cluster_id,
                    "gpu": f"{inst.num_gpus}x {inst.gpu_name}",
                    "dph": inst.dph_total,
                    "bid": bool(inst.is_bid),
                    "label": inst.label,
                }
                run.instances_seen[inst.id] = row
                kind = "bid" if row["bid"] else "on-demand"
                print(f"   + rented instance {inst.id}: {row['gpu']} on machine {inst.machine_id} "
                      f"(physical cluster {inst.cluster_id}), ${inst.dph_total or 0:.3f}/h {kind}", flush=True)


def _leftovers(prefix: str = "skyr") -> list[str]:
    found: list[str] = []
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    found += [f"link {m}" for m in re.findall(r"^\d+: ([^:@]+)", out, flags=re.M) if m.startswith(prefix)]
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    found += [f"netns {line.split()[0]}" for line in out.splitlines() if line.startswith(prefix)]
    return found


def _summary(run: DemoRun) -> None:
    print("\n" + "=" * 78)
    print("skyward-ray demo: summary")
    print("-" * 78)
    for step in run.steps:
        print(f"  {'ok ' if step.ok else 'ERR'}  {step.name:<52} {step.seconds:6.1f} s")
    if run.job_report:
        print("-" * 78)
        print(f"  {'task':>4}  {'instance':>8}  {'Ray node IP (overlay)':<22} {'offer $/h':>10}")
        for task in run.job_report.get("tasks", []):  # type: ignore[union-attr]
            inst = run.instances_seen.get(int(task["instance"])) if task.get("instance") else None
            price = f"{inst['dph']:.3f}" if inst and inst.get("dph") is not None else "?"
            print(f"  {task['task']:>4}  {task.get('instance') or '?':>8}  {task['node_ip']:<22} {price:>10}")
        print(f"  result correct: {run.job_report.get('sum_ok')}; Ray nodes used: {len(run.job_report['nodes'])}")
    if run.instances_seen:
        clusters = {row["cluster"] for row in run.instances_seen.values()}
        total = sum(float(row["dph"] or 0) for row in run.instances_seen.values())
        print(f"  instances rented: {len(run.instances_seen)}, physical clusters: {sorted(map(str, clusters))}, "
              f"peak spend ${total:.3f}/h")
    print(f"  left behind: {', '.join(run.leftovers) if run.leftovers else 'nothing'}")
    print(f"  logs: {run.log_dir}")
    print("=" * 78)


def run_demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SkywardError("the demo needs root: it makes network namespaces for the emulated instances")
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        raise SkywardError("ray is not installed in this environment; run `bash .ci/setup` first")
    log_dir = Path(args.log_dir or "/tmp/skyward-ray-demo")
    log_dir.mkdir(parents=True, exist_ok=True)
    run = DemoRun(log_dir=log_dir)
    emulator = _Emulator(port=args.port, boot_delay_s=args.boot_delay, log=log_dir / "emulator.log")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    stop_watch = threading.Event()
    cluster_up = False
    failed = False
    try:
        with run.step("start the Vast emulator (netns hosts, default market)"):
            emulator.start()
            env["VAST_URL"], env["VAST_API_KEY"] = emulator.url, emulator.api_key
            print(f"   emulator at {emulator.url}")
        watcher = threading.Thread(target=_watch_instances, args=(emulator, run, stop_watch), daemon=True)
        watcher.start()
        with run.step("ray up cluster_configs/emulator.yaml (head, overlay)"):
            cluster_up = True
            _run_streamed(["ray", "up", str(EMULATOR_CONFIG), "-y", "--no-config-cache"], env,
                          log_dir / "ray-up.log", timeout_s=600)
        with run.step(f"ray submit examples/demo_job.py ({args.tasks} GPU tasks)"):
            out = _run_streamed(["ray", "submit", str(EMULATOR_CONFIG), str(DEMO_JOB), str(args.tasks)], env,
                                log_dir / "ray-submit.log", timeout_s=900)
            report_lines = [line for line in out.splitlines() if line.startswith('{"tasks"')]
            if not report_lines:
                raise SkywardError(f"the job printed no report (log: {log_dir / 'ray-submit.log'})")
            run.job_report = json.loads(report_lines[-1])
            for task in run.job_report["tasks"]:  # type: ignore[index]
                print(f"   task {task['task']} ran on instance {task['instance']} at {task['node_ip']}")
    except (SkywardError, KeyboardInterrupt) as exc:
        failed = True
        print(f"\n!! {exc}", file=sys.stderr, flush=True)
    finally:
        stop_watch.set()
        if cluster_up:
            with contextlib.suppress(SkywardError), run.step("ray down (instances and overlay destroyed)"):
                _run_streamed(["ray", "down", str(EMULATOR_CONFIG), "-y"], env, log_dir / "ray-down.log", 300)
        with run.step("stop the emulator and check for leftovers"):
            emulator.stop()
            run.leftovers = _leftovers()
    _summary(run)
    ok = not failed and all(step.ok for step in run.steps) and not run.leftovers
    ok = ok and bool(run.job_report and run.job_report.get("sum_ok"))
    return 0 if ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("demo", help="run the whole mission on the local emulator (needs root)")
    parser.add_argument("--tasks", type=int, default=4, help="GPU tasks to submit (default 4)")
    parser.add_argument("--port", type=int, default=8911, help="emulator port (must match emulator.yaml)")
    parser.add_argument("--boot-delay", type=float, default=2.0, help="emulated instance boot time, seconds")
    parser.add_argument("--log-dir", default=None, help="where the full logs go (default /tmp/skyward-ray-demo)")
    parser.set_defaults(func=run_demo)
