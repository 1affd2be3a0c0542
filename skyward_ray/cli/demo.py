"""``skyward-ray demo``: the emulator with netns hosts, ``ray up`` of the packaged demo config, a job that needs more
GPUs at once than the head has, ``ray down``, the emulator stopped, nothing left behind, a one-screen summary.

Every step is bounded. The emulator and each ``ray`` command run in sessions of their own, so Ctrl-C (or SIGTERM)
reaches only the demo, which then still runs ``ray down`` and stops the emulator.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from skyward_ray.demo import CLUSTER_CONFIG, JOB
from skyward_ray.demo.report import PREFIX, DemoRun, api_traffic, emulator_state, leftovers, observe, summary, watch
from skyward_ray.emulator.process import EmulatorProcess, kill_session, serve_command
from skyward_ray.errors import SkywardError

RAY_STYLE = ("--log-style", "pretty", "--log-color", "false")
DEMO_PORT = 8911  # the demo's emulator port when the demo config names none (it follows VAST_URL)
# The lines of Ray's own output worth showing while the rest goes to the log files.
_PROGRESS = re.compile(
    r"^\s*(Launched a new head node|\[\d+/\d+\] |New status: |Local node IP|Ray runtime started|job: |"
    r"\(autoscaler \+\S+\) (Adding|Removing|Resized)|Requested \d+ nodes|\d+ nodes remaining|No nodes remaining|"
    r"Shared cluster resources cleaned)"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_UP_TIMEOUT_S = 600.0
_JOB_TIMEOUT_S = 900.0
_DOWN_TIMEOUT_S = 300.0


def _run_streamed(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> str:
    """Run ``cmd``, keep its whole output in ``log``, echo its progress lines; return the output."""
    lines: list[str] = []
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                stdin=subprocess.DEVNULL, cwd=log.parent, start_new_session=True)
        timer = threading.Timer(timeout_s, kill_session, args=(proc,))
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
            kill_session(proc)
            raise
        finally:
            timer.cancel()
    if code != 0:
        why = f"was stopped after {timeout_s:.0f} s" if code == -signal.SIGKILL else f"exited with {code}"
        tail = "\n".join(lines[-15:])
        raise SkywardError(f"{' '.join(Path(c).name for c in cmd[:2])} {why} (full log: {log}); last lines:\n{tail}")
    return "\n".join(lines)


def _emulator_port() -> int:
    """The port ``provider.api_url`` of the demo config names, else DEMO_PORT (the demo sets VAST_URL for ``ray up``,
    which the config follows when it has no ``api_url``)."""
    api_url = (yaml.safe_load(CLUSTER_CONFIG.read_text()).get("provider") or {}).get("api_url") or ""
    if not api_url:
        return DEMO_PORT
    port = urlsplit(api_url).port
    if port is None:
        raise SkywardError(f"{CLUSTER_CONFIG}: provider.api_url={api_url!r} names no port")
    return port


def _check_can_run(args: argparse.Namespace) -> Path:
    """Refuse early what cannot work (not root, no ``ray``, a bad ``--tasks``); returns the venv's bin directory."""
    if os.geteuid() != 0:
        raise SkywardError("the demo needs root: it makes network namespaces for the emulated instances")
    venv_bin = Path(sys.executable).parent
    if shutil.which("ray", path=str(venv_bin)) is None:
        raise SkywardError(f"ray is not installed in {venv_bin}; run `bash .ci/setup` first")
    most = 1 + int(yaml.safe_load(CLUSTER_CONFIG.read_text()).get("max_workers", 0))
    if not 2 <= args.tasks <= most:
        raise SkywardError(f"--tasks {args.tasks}: use 2 to {most} (the head has one GPU; each more rents a worker, "
                           f"and {CLUSTER_CONFIG.name} allows max_workers={most - 1})")
    return venv_bin


@dataclass
class _Demo:
    """One run: its record, the emulator, the environment every ``ray`` command gets."""

    args: argparse.Namespace
    run: DemoRun
    emulator: EmulatorProcess
    env: dict[str, str]
    stop_watch: threading.Event = field(default_factory=threading.Event)
    cluster_up: bool = False

    @property
    def admin_url(self) -> str:
        return self.emulator.ready.admin_url if self.emulator.ready else ""

    def ray(self, *args: str, log: str, timeout_s: float) -> str:
        return _run_streamed(["ray", *args], self.env, self.run.log_dir / log, timeout_s)


def _prepare(args: argparse.Namespace, venv_bin: Path) -> _Demo:
    """This run's log directory (an earlier run's logs and Ray temp files removed), emulator and environment."""
    log_dir = Path(args.log_dir or "/tmp/skyward-ray-demo")
    log_dir.mkdir(parents=True, exist_ok=True)
    for old_log in log_dir.glob("*.log"):  # an earlier run's
        old_log.unlink()
    ray_tmp = log_dir / "ray-tmp"  # Ray's config cache and bootstrap files: this run's own, gone with the next run
    shutil.rmtree(ray_tmp, ignore_errors=True)
    ray_tmp.mkdir()
    emulator = EmulatorProcess(serve_command(scenario="default", runtime="netns", port=_emulator_port(),
                                             boot_delay_s=args.boot_delay), log_path=log_dir / "emulator.log")
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONUNBUFFERED": "1", "TMPDIR": str(ray_tmp)}
    return _Demo(args, DemoRun(log_dir=log_dir), emulator, env)


def _bring_up_and_run(demo: _Demo) -> None:
    """The emulator, ``ray up``, the job; the first failure raises."""
    run, config, tasks = demo.run, str(CLUSTER_CONFIG), demo.args.tasks
    with run.step("start the Vast emulator (netns hosts, default market)"):
        in_use = leftovers(run)
        if in_use:
            raise SkywardError(f"prefix {PREFIX!r} is in use ({', '.join(in_use[:3])}): another emulator is "
                               "running, or a crashed one left these; stop it, or run `skyward-ray emulator clean`")
        ready = demo.emulator.start()
        demo.env["VAST_URL"], demo.env["VAST_API_KEY"] = ready.url, ready.api_key
        print(f"   emulator at {ready.url} (admin API {ready.admin_url})", flush=True)
    threading.Thread(target=watch, args=(ready.admin_url, run, demo.stop_watch), daemon=True).start()
    with run.step(f"ray up {CLUSTER_CONFIG.name}: the head, on a new overlay"):
        demo.cluster_up = True
        demo.ray("up", config, "-y", "--no-config-cache", *RAY_STYLE, log="ray-up.log", timeout_s=_UP_TIMEOUT_S)
    with run.step(f"ray submit {JOB.name} {tasks}: {tasks} GPUs at once"):
        out = demo.ray("submit", "--no-config-cache", *RAY_STYLE, config, str(JOB), str(tasks), log="ray-submit.log",
                       timeout_s=_JOB_TIMEOUT_S)
        reports = [line for line in out.splitlines() if line.startswith('{"tasks"')]
        if not reports:
            raise SkywardError(f"the job printed no report (log: {run.log_dir / 'ray-submit.log'})")
        run.job_report = json.loads(reports[-1])


def _tear_down(demo: _Demo) -> None:
    """``ray down`` if ``ray up`` began, then the emulator stopped and the machine checked; errors are recorded."""
    run = demo.run
    demo.stop_watch.set()
    with contextlib.suppress(Exception):
        observe(demo.admin_url, run, quiet=True)
    if demo.cluster_up:
        with run.recorded(), run.step("ray down: every instance and the overlay destroyed"):
            demo.ray("down", str(CLUSTER_CONFIG), "-y", *RAY_STYLE, log="ray-down.log", timeout_s=_DOWN_TIMEOUT_S)
            state = emulator_state(demo.admin_url)
            run.api_traffic = api_traffic(demo.admin_url)
            if state["instances"] or state["overlays"]:
                raise SkywardError(f"after ray down the emulator still has instances "
                                   f"{[i['id'] for i in state['instances']]} and overlays "
                                   f"{[o['name'] for o in state['overlays']]}")
    if demo.emulator.started:  # else it never started, and what the prefix holds is someone else's
        with run.recorded(), run.step("stop the emulator; look for anything left behind"):
            demo.emulator.stop()
            run.leftovers = leftovers(run)
            if run.leftovers:
                raise SkywardError(f"left behind: {', '.join(run.leftovers)} (`skyward-ray emulator clean` "
                                   "removes namespaces and links)")


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def run_demo(args: argparse.Namespace) -> int:
    demo = _prepare(args, _check_can_run(args))
    failed = interrupted = False
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _bring_up_and_run(demo)
    except (SkywardError, KeyboardInterrupt) as exc:
        failed = True
        interrupted = isinstance(exc, KeyboardInterrupt)
        demo.run.error = str(exc) or "interrupted"
        print(f"\n!! {demo.run.error}", file=sys.stderr, flush=True)
    finally:
        _tear_down(demo)
        signal.signal(signal.SIGTERM, previous_term)
        summary(demo.run)
    if interrupted:
        raise KeyboardInterrupt  # after the cleanup: the console prints one line and exits 130
    return 0 if not failed and demo.run.ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "demo", help="run the whole mission on the local emulator (needs root)",
        description="Start the Vast emulator (netns hosts), ray up the packaged demo config (emulator.yaml), submit a "
                    "job that needs more GPUs than the head has, show what ran where, ray down, stop the emulator.")
    parser.add_argument("--tasks", type=int, default=4, help="GPUs the job needs at once, one per node (default 4)")
    parser.add_argument("--boot-delay", type=float, default=2.0, help="emulated instance boot time, seconds (2)")
    parser.add_argument("--log-dir", default=None, help="where the full logs go (default /tmp/skyward-ray-demo)")
    parser.set_defaults(func=run_demo)
