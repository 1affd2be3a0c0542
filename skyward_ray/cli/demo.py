"""``skyward-ray demo``: the whole mission on one machine, readable from start to end.

It starts the Vast emulator with the ``netns`` host runtime, brings a Ray cluster up on it with ``ray up
cluster_configs/emulator.yaml``, submits a job that needs more GPUs at once than the head has (so the autoscaler rents
workers in the head's physical cluster and joins them to its overlay), prints what ran where, tears everything down
with ``ray down``, stops the emulator and checks that nothing is left. It ends with a one-screen summary.

Every step is bounded in time. The emulator and every ``ray`` command run in sessions of their own, so Ctrl-C (or
SIGTERM) reaches only the demo, which then still runs ``ray down`` and stops the emulator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
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
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
import yaml

from skyward_ray.emulator.netns import DEFAULT_PREFIX, DEFAULT_STATE_ROOT
from skyward_ray.errors import SkywardError

REPO_ROOT = Path(__file__).resolve().parents[2]
EMULATOR_CONFIG = REPO_ROOT / "cluster_configs" / "emulator.yaml"
DEMO_JOB = REPO_ROOT / "examples" / "demo_job.py"
PREFIX = DEFAULT_PREFIX  # what `skyward-ray emulator serve --runtime netns` names its namespaces and links with
RAY_STYLE = ("--log-style", "pretty", "--log-color", "false")
# The lines of Ray's own output worth showing while the rest goes to the log files.
_PROGRESS = re.compile(
    r"^\s*(Launched a new head node|\[\d+/\d+\] |New status: |Local node IP|Ray runtime started|job: |"
    r"\(autoscaler \+\S+\) (Adding|Removing|Resized)|Requested \d+ nodes|\d+ nodes remaining|No nodes remaining|"
    r"Shared cluster resources cleaned)"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EMULATOR_START_S = 60.0
_UP_TIMEOUT_S = 600.0
_JOB_TIMEOUT_S = 900.0
_DOWN_TIMEOUT_S = 300.0
_EMULATOR_STOP_S = 90.0


@dataclass
class Step:
    name: str
    seconds: float
    ok: bool


@dataclass
class Rental:
    """One instance the cluster rented, as the emulator's state dump shows it."""

    instance_id: int
    kind: str
    machine_id: int
    cluster_id: int | None
    offer_id: int | None
    gpu: str
    price: float
    is_bid: bool
    overlay_ip: str | None = None
    cost: float = 0.0
    destroyed: bool = False


@dataclass
class DemoRun:
    log_dir: Path
    steps: list[Step] = field(default_factory=list)
    rentals: dict[int, Rental] = field(default_factory=dict)
    overlay: dict[str, Any] | None = None
    namespace_pids: set[int] = field(default_factory=set)
    job_report: dict[str, Any] | None = None
    leftovers: list[str] = field(default_factory=list)
    api_traffic: str = ""
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def recorded(self) -> Iterator[None]:
        """Tear-down steps go on after a failure: keep (and show) the first error instead of raising it."""
        try:
            yield
        except SkywardError as exc:
            self.error = self.error or str(exc)
            print(f"\n!! {exc}", file=sys.stderr, flush=True)

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


def _kill_session(proc: subprocess.Popen[Any]) -> None:
    """End a child started in a session of its own, and what it started there (ssh, rsync), by its PID."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _run_streamed(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> str:
    """Run ``cmd``, keep its whole output in ``log``, echo its progress lines; return the output."""
    lines: list[str] = []
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                stdin=subprocess.DEVNULL, cwd=REPO_ROOT, start_new_session=True)
        timer = threading.Timer(timeout_s, _kill_session, args=(proc,))
        timer.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = _ANSI.sub("", raw).rstrip()
                sink.write(line + "\n")
                lines.append(line)
                if _PROGRESS.match(line):
                    print(f"   | {line.strip()[:150]}", flush=True)
            code = proc.wait()
        except BaseException:
            _kill_session(proc)
            raise
        finally:
            timer.cancel()
    if code != 0:
        why = f"was stopped after {timeout_s:.0f} s" if code == -signal.SIGKILL else f"exited with {code}"
        tail = "\n".join(lines[-15:])
        raise SkywardError(f"{' '.join(Path(c).name for c in cmd[:2])} {why} (full log: {log}); last lines:\n{tail}")
    return "\n".join(lines)


class _Emulator:
    """``skyward-ray emulator serve --runtime netns`` as a child process in its own session."""

    def __init__(self, port: int, boot_delay_s: float, log: Path) -> None:
        self.port = port
        self.boot_delay_s = boot_delay_s
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.api_key = ""
        self.admin_url = ""

    def start(self) -> None:
        cmd = [sys.executable, "-m", "skyward_ray.cli", "emulator", "serve", "--runtime", "netns", "--port",
               str(self.port), "--boot-delay", str(self.boot_delay_s), "--scenario", "default"]
        with self.log.open("a") as sink:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sink, text=True,
                                         stdin=subprocess.DEVNULL, cwd=REPO_ROOT, start_new_session=True)
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=_pump_json_lines, args=(self.proc.stdout, lines), daemon=True).start()
        try:
            ready = json.loads(lines.get(timeout=_EMULATOR_START_S))
        except queue.Empty:
            self.stop()
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise SkywardError(f"the emulator did not start within {_EMULATOR_START_S:.0f} s: "
                               f"{' | '.join(tail) or 'no output'} (log: {self.log})") from None
        self.url, self.api_key, self.admin_url = ready["url"], ready["api_key"], ready["admin_url"]

    def state(self) -> dict[str, Any]:
        response = httpx.get(f"{self.admin_url}/state/", timeout=30)
        response.raise_for_status()
        return response.json()

    def api_traffic(self) -> str:
        """One line on the Vast API calls the run made: how many, under which rate limits, how many refused (429)."""
        counters = httpx.get(f"{self.admin_url}/counters/", timeout=30).json()
        mode = httpx.get(f"{self.admin_url}/rate_limits/", timeout=30).json().get("mode", "?")
        calls = sum(counters["requests"].values())
        refused = sum(statuses.get("429", 0) for statuses in counters["statuses"].values())
        return f"Vast API: {calls} requests under {mode} rate limits, {refused} refused with a 429"

    def stop(self) -> None:
        """SIGTERM: the emulator destroys every instance and removes its namespaces and bridges before it exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=_EMULATOR_STOP_S)
        except subprocess.TimeoutExpired:
            _kill_session(self.proc)
            self.proc.wait(timeout=10)


def _pump_json_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        if line.strip().startswith("{"):
            lines.put(line)


def _kind(label: str | None) -> str:
    from skyward_ray.provider.tags import decode_label

    decoded = decode_label(label)
    return (decoded[1].get("ray-node-type") if decoded else None) or "?"


def _observe(emulator: _Emulator, run: DemoRun, *, quiet: bool = False) -> None:
    """Record (and print) rentals and their ends from the emulator's state dump, and the processes they run."""
    state = emulator.state()
    live = {int(row["id"]): row for row in state["instances"]}
    overlays = state["overlays"]
    with run.lock:
        if overlays:
            run.overlay = overlays[0]
        members = {int(k): v for k, v in (overlays[0]["members"] if overlays else {}).items()}
        for entry in state["ledger"]:
            instance_id = int(entry["instance_id"])
            rental = run.rentals.get(instance_id)
            row = live.get(instance_id)
            if rental is None:
                if entry["destroyed_at"] is not None:
                    continue  # rented and gone between two looks: not ours to show
                rental = run.rentals[instance_id] = Rental(
                    instance_id, _kind(entry.get("label")), entry["machine_id"],
                    row.get("cluster_id") if row else None, entry.get("offer_id"),
                    f"{entry['num_gpus']}x {entry['gpu_name']}", float(entry["price"]), bool(entry["is_bid"]))
                if not quiet:
                    print(f"   + rented {rental.kind} instance {instance_id}: {rental.gpu} on machine "
                          f"{rental.machine_id} (physical cluster {rental.cluster_id}), offer {rental.offer_id}, "
                          f"${rental.price:.3f}/h {'bid' if rental.is_bid else 'on-demand'}", flush=True)
            rental.cost = float(entry.get("cost") or 0.0)
            rental.overlay_ip = members.get(instance_id, rental.overlay_ip)
            if entry["destroyed_at"] is not None and not rental.destroyed:
                rental.destroyed = True
                if not quiet:
                    print(f"   - instance {instance_id} ({rental.kind}) destroyed"
                          f"{': ' + entry['end_reason'] if entry.get('end_reason') else ''}", flush=True)
    for instance_id in live:
        out = subprocess.run(["ip", "netns", "pids", f"{PREFIX}-i{instance_id}"], capture_output=True, text=True,
                             check=False).stdout
        with run.lock:
            run.namespace_pids.update(int(pid) for pid in out.split())


def _watch(emulator: _Emulator, run: DemoRun, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            _observe(emulator, run)


def _leftovers(run: DemoRun) -> list[str]:
    """What the run left on this machine: namespaces and links named with the prefix, live processes of the
    instances (by PID), the runtime's state directory."""
    found: list[str] = []
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                                      check=False).stdout or "[]")
    found += [f"link {link['ifname']}" for link in links if link.get("ifname", "").startswith(PREFIX)]
    run_netns = Path("/run/netns")
    found += [f"netns {entry.name}" for entry in (run_netns.iterdir() if run_netns.is_dir() else [])
              if entry.name.startswith(f"{PREFIX}-")]
    found += [f"process {pid}" for pid in sorted(run.namespace_pids) if _pid_alive(pid)]
    if (DEFAULT_STATE_ROOT / PREFIX).exists():
        found.append(f"dir {DEFAULT_STATE_ROOT / PREFIX}")
    return found


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


DEMO_PORT = 8911  # the demo's emulator port when cluster_configs/emulator.yaml names none (it follows VAST_URL)


def _emulator_port() -> int:
    """The emulator's port: the one ``provider.api_url`` of cluster_configs/emulator.yaml names, else DEMO_PORT (the
    demo sets VAST_URL for ``ray up``, which the config follows when it has no ``api_url``)."""
    api_url = (yaml.safe_load(EMULATOR_CONFIG.read_text()).get("provider") or {}).get("api_url") or ""
    if not api_url:
        return DEMO_PORT
    port = urlsplit(api_url).port
    if port is None:
        raise SkywardError(f"{EMULATOR_CONFIG}: provider.api_url={api_url!r} names no port")
    return port


def _summary(run: DemoRun) -> None:
    width = 100
    print("\n" + "=" * width)
    print("skyward-ray demo: summary")
    print("-" * width)
    for step in run.steps:
        print(f"  {'ok ' if step.ok else 'ERR'}  {step.name:<70} {step.seconds:6.1f} s")
    if run.job_report:
        print("-" * width)
        print(f"  {'task':>4}  {'instance':>9}  {'kind':<6}  {'Ray node IP (overlay)':<21}  {'machine':>7}  "
              f"{'cluster':>7}  {'offer':>9}  {'$/h':>6}  allocation")
        for task in run.job_report.get("tasks", []):
            rental = run.rentals.get(int(task["instance"])) if str(task.get("instance") or "").isdigit() else None
            if rental is None:
                print(f"  {task['task']:>4}  {task.get('instance') or '?':>9}  {'?':<6}  {task['node_ip']:<21}")
                continue
            print(f"  {task['task']:>4}  {rental.instance_id:>9}  {rental.kind:<6}  {task['node_ip']:<21}  "
                  f"{rental.machine_id:>7}  {rental.cluster_id!s:>7}  {rental.offer_id!s:>9}  {rental.price:>6.3f}  "
                  f"{'bid' if rental.is_bid else 'on-demand'}")
        nodes = run.job_report.get("nodes", [])
        print(f"  result correct: {run.job_report.get('sum_ok')}; {len(run.job_report.get('tasks', []))} tasks on "
              f"{len(nodes)} Ray nodes in {run.job_report.get('seconds')} s (GPU wait included)")
    if run.rentals:
        clusters = sorted({str(r.cluster_id) for r in run.rentals.values()})
        peak = sum(r.price for r in run.rentals.values())
        spent = sum(r.cost for r in run.rentals.values())
        subnet = run.overlay["internal_subnet"] if run.overlay else "none"
        print(f"  instances rented: {len(run.rentals)}; physical clusters: {', '.join(clusters)}; overlay {subnet}; "
              f"up to ${peak:.3f}/h, spent ${spent:.4f}")
    if run.api_traffic:
        print(f"  {run.api_traffic}")
    if run.error:
        print(f"  error: {run.error.splitlines()[0][:width - 9]}")
    print(f"  left behind: {', '.join(run.leftovers) if run.leftovers else 'nothing'}")
    print(f"  logs: {run.log_dir}")
    print("=" * width, flush=True)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SkywardError("the demo needs root: it makes network namespaces for the emulated instances")
    venv_bin = Path(sys.executable).parent
    if shutil.which("ray", path=str(venv_bin)) is None:
        raise SkywardError(f"ray is not installed in {venv_bin}; run `bash .ci/setup` first")
    most = 1 + int(yaml.safe_load(EMULATOR_CONFIG.read_text()).get("max_workers", 0))
    if not 2 <= args.tasks <= most:
        raise SkywardError(f"--tasks {args.tasks}: use 2 to {most} (the head has one GPU; each more rents a worker, "
                           f"and {EMULATOR_CONFIG.name} allows max_workers={most - 1})")
    log_dir = Path(args.log_dir or "/tmp/skyward-ray-demo")
    log_dir.mkdir(parents=True, exist_ok=True)
    for old_log in log_dir.glob("*.log"):  # an earlier run's
        old_log.unlink()
    run = DemoRun(log_dir=log_dir)
    emulator = _Emulator(port=_emulator_port(), boot_delay_s=args.boot_delay, log=log_dir / "emulator.log")
    ray_tmp = log_dir / "ray-tmp"  # Ray's config cache and bootstrap files: this run's own, gone with the next run
    shutil.rmtree(ray_tmp, ignore_errors=True)
    ray_tmp.mkdir()
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONUNBUFFERED": "1", "TMPDIR": str(ray_tmp)}
    config = str(EMULATOR_CONFIG)
    stop_watch = threading.Event()
    cluster_up = False
    failed = interrupted = False
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with run.step("start the Vast emulator (netns hosts, default market)"):
            in_use = _leftovers(run)
            if in_use:
                raise SkywardError(f"prefix {PREFIX!r} is in use ({', '.join(in_use[:3])}): another emulator is "
                                   "running, or a crashed one left these; stop it, or run `skyward-ray emulator clean`")
            emulator.start()
            env["VAST_URL"], env["VAST_API_KEY"] = emulator.url, emulator.api_key
            print(f"   emulator at {emulator.url} (admin API {emulator.admin_url})", flush=True)
        threading.Thread(target=_watch, args=(emulator, run, stop_watch), daemon=True).start()
        with run.step("ray up cluster_configs/emulator.yaml: the head, on a new overlay"):
            cluster_up = True
            _run_streamed(["ray", "up", config, "-y", "--no-config-cache", *RAY_STYLE], env,
                          log_dir / "ray-up.log", _UP_TIMEOUT_S)
        with run.step(f"ray submit examples/demo_job.py {args.tasks}: {args.tasks} GPUs at once"):
            out = _run_streamed(["ray", "submit", "--no-config-cache", *RAY_STYLE, config, str(DEMO_JOB),
                                 str(args.tasks)], env,
                                log_dir / "ray-submit.log", _JOB_TIMEOUT_S)
            reports = [line for line in out.splitlines() if line.startswith('{"tasks"')]
            if not reports:
                raise SkywardError(f"the job printed no report (log: {log_dir / 'ray-submit.log'})")
            run.job_report = json.loads(reports[-1])
    except (SkywardError, KeyboardInterrupt) as exc:
        failed = True
        interrupted = isinstance(exc, KeyboardInterrupt)
        run.error = str(exc) or "interrupted"
        print(f"\n!! {run.error}", file=sys.stderr, flush=True)
    finally:
        stop_watch.set()
        with contextlib.suppress(Exception):
            _observe(emulator, run, quiet=True)
        if cluster_up:
            with run.recorded(), run.step("ray down: every instance and the overlay destroyed"):
                _run_streamed(["ray", "down", config, "-y", *RAY_STYLE], env, log_dir / "ray-down.log",
                              _DOWN_TIMEOUT_S)
                state = emulator.state()
                run.api_traffic = emulator.api_traffic()
                if state["instances"] or state["overlays"]:
                    raise SkywardError(f"after ray down the emulator still has instances "
                                       f"{[i['id'] for i in state['instances']]} and overlays "
                                       f"{[o['name'] for o in state['overlays']]}")
        if emulator.proc is not None:  # else it never started, and what the prefix holds is someone else's
            with run.recorded(), run.step("stop the emulator; look for anything left behind"):
                emulator.stop()
                run.leftovers = _leftovers(run)
                if run.leftovers:
                    raise SkywardError(f"left behind: {', '.join(run.leftovers)} (`skyward-ray emulator clean` "
                                       "removes namespaces and links)")
        signal.signal(signal.SIGTERM, previous_term)
        _summary(run)
    if interrupted:
        raise KeyboardInterrupt  # after the cleanup: the console prints one line and exits 130
    ok = not failed and all(step.ok for step in run.steps) and not run.leftovers
    return 0 if ok and run.job_report and run.job_report.get("sum_ok") else 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "demo", help="run the whole mission on the local emulator (needs root)",
        description="Start the Vast emulator (netns hosts), ray up cluster_configs/emulator.yaml, submit a job that "
                    "needs more GPUs than the head has, show what ran where, ray down, stop the emulator.")
    parser.add_argument("--tasks", type=int, default=4, help="GPUs the job needs at once, one per node (default 4)")
    parser.add_argument("--boot-delay", type=float, default=2.0, help="emulated instance boot time, seconds (2)")
    parser.add_argument("--log-dir", default=None, help="where the full logs go (default /tmp/skyward-ray-demo)")
    parser.set_defaults(func=run_demo)
