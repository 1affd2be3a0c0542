"""A real ``ray up`` cluster on the netns emulator, for tests/e2e/test_ray_up*.py and benchmarks/bench_e2e.py.

Two pieces, both owned by PID and torn down whatever happens:

* :class:`EmulatorProcess`: the Vast emulator with the ``netns`` host runtime as a child process (this file run as a
  script: ``python emulated_ray_cluster.py serve ...``), with its own name prefix, public subnet and port, so it
  never meets a user's emulator (``skyr``, 10.213.0.0/16, 8911) or another test's. ``stop()`` is SIGTERM (the server
  destroys every instance and closes the runtime), then ``clean_leftovers`` for the prefix.
* :class:`RayCluster`: a copy of the demo's ``emulator.yaml`` pointed at that emulator, with its own cluster name,
  SSH key and temp/cache dirs, and the laptop-side ``ray`` CLI run from this venv with bounded time. Nothing it does
  touches ``~/.ssh``, ``~/.cache`` or ``/tmp`` of the host except Ray's SSH control sockets
  (``/tmp/ray_ssh_<user>/<cluster>``, a fixed path in Ray), which :meth:`RayCluster.close` ends and removes.

Remote output comes back through ``ssh -tt`` (CRLF, Ray's own log lines around it); jobs print their results as
``E2E-JSON <json>`` lines, found with :func:`json_lines`.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from skyward_ray.demo import CLUSTER_CONFIG
from skyward_ray.emulator.netns import clean_leftovers
from skyward_ray.emulator.process import EmulatorProcess as ChildEmulator
from skyward_ray.emulator.process import kill_session
from skyward_ray.emulator.process import pid_alive as pid_alive  # the e2e tests' liveness check
from skyward_ray.emulator.testing import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB = REPO_ROOT / "tests" / "e2e" / "e2e_job.py"
VENV_BIN = Path(sys.executable).parent
JSON_MARK = "E2E-JSON "
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
T = TypeVar("T")


def poll(condition: Callable[[], T], *, timeout_s: float, interval_s: float = 1.0, what: str) -> T:
    """``wait_until`` with the slower default interval that Ray-sized waits want."""
    return wait_until(condition, timeout_s=timeout_s, interval_s=interval_s, what=what)


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every ``E2E-JSON {...}`` object a job printed, in order."""
    found = []
    for line in _ANSI.sub("", output).replace("\r", "\n").splitlines():
        if line.startswith(JSON_MARK):
            found.append(json.loads(line[len(JSON_MARK):]))
    return found


# ---------------------------------------------------------------------------------------------------------------------
# The emulator


@dataclass
class EmulatorProcess:
    """The netns emulator in a child process. Use as a context manager, or ``start()`` then ``stop()``."""

    prefix: str
    public_subnet: str
    log_path: Path
    boot_delay_s: float = 2.0
    seed: int = 0
    rate_limits: str = "documented"  # Vast's documented limits, real intervals: ray up lives within them as on Vast
    start_timeout_s: float = 60.0
    url: str = ""
    api_key: str = field(default="", repr=False)
    admin_url: str = ""
    swept: list[str] = field(default_factory=list)  # what the sweep after stop() still had to remove
    enforced_limits: str | None = None  # what the running emulator says it enforces
    _child: ChildEmulator | None = field(default=None, repr=False)

    def start(self) -> EmulatorProcess:
        cmd = [sys.executable, str(Path(__file__).resolve()), "serve", "--prefix", self.prefix,
               "--public-subnet", self.public_subnet, "--boot-delay", str(self.boot_delay_s), "--seed", str(self.seed),
               "--rate-limits", self.rate_limits, "--parent-pid", str(os.getpid())]
        self._child = ChildEmulator(cmd, log_path=self.log_path, cwd=REPO_ROOT, start_timeout_s=self.start_timeout_s)
        try:
            ready = self._child.start()
        except BaseException:
            self.stop()  # sweeps the prefix too
            raise
        self.url, self.api_key, self.admin_url = ready.url, ready.api_key, ready.admin_url
        self.enforced_limits = ready.rate_limits
        return self

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def stop(self) -> list[str]:
        """SIGTERM (the emulator destroys its instances and closes the runtime), bounded; then sweep the prefix.
        Returns what the sweep still found (empty when the emulator cleaned up after itself)."""
        child, self._child = self._child, None
        if child is not None:
            child.stop()
        self.swept = clean_leftovers(self.prefix)
        return self.swept

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the admin API ------------------------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.admin_url}/{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def state(self) -> dict[str, Any]:
        """The emulator's state dump: instances (live ones), overlays, the ledger of every rental."""
        return self._admin("GET", "state/")

    def counters(self) -> dict[str, Any]:
        """Requests and statuses (``{endpoint: {status: n}}``) per endpoint since the emulator started."""
        return self._admin("GET", "counters/")

    def outbid(self, instance_id: int) -> dict[str, Any]:
        return self._admin("POST", f"instances/{instance_id}/outbid/", {})

    def live_instances(self) -> list[dict[str, Any]]:
        return [row for row in self.state()["instances"] if row.get("actual_status") != "destroyed"]


# ---------------------------------------------------------------------------------------------------------------------
# The Ray cluster


@dataclass(frozen=True)
class RayRun:
    """One ``ray`` CLI call: its exit code, its output (stdout and stderr, in order) and its wall time."""

    args: tuple[str, ...]
    returncode: int
    output: str
    seconds: float

    def tail(self, lines: int = 40) -> str:
        return "\n".join(_ANSI.sub("", self.output).splitlines()[-lines:])

    def check(self) -> RayRun:
        assert self.returncode == 0, f"ray {' '.join(self.args)} exited with {self.returncode}:\n{self.tail()}"
        return self


class RayCluster:
    """``ray up``/``exec``/``submit``/``down`` ... of one test cluster on an :class:`EmulatorProcess`."""

    def __init__(self, emulator: EmulatorProcess, workdir: Path, *, name: str,
                 idle_timeout_minutes: float | None = None,
                 overrides: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.emulator = emulator
        self.workdir = workdir
        self.name = name
        self.logs = workdir / "logs"
        self.tmp = workdir / "tmp"
        for directory in (self.logs, self.tmp, workdir / "cache", workdir / "ssh"):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.key = workdir / "ssh" / "id_ed25519"
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}-e2e", "-f", str(self.key)],
                           check=True)
        config = yaml.safe_load(CLUSTER_CONFIG.read_text())
        config["cluster_name"] = name
        config["provider"]["api_url"] = emulator.url
        config.setdefault("auth", {})["ssh_private_key"] = str(self.key)
        if idle_timeout_minutes is not None:
            config["idle_timeout_minutes"] = idle_timeout_minutes
        if overrides is not None:
            overrides(config)
        self.config = config
        self.config_path = workdir / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "VAST_URL": emulator.url,
            "VAST_API_KEY": emulator.api_key,
            "XDG_CACHE_HOME": str(workdir / "cache"),  # the staged key file and package copy
            "TMPDIR": str(self.tmp),  # Ray's config cache and ray-bootstrap-* files
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }
        self._runs = 0

    # --- running the CLI ----------------------------------------------------------------------------------------

    def _log_path(self, args: tuple[str, ...]) -> Path:
        self._runs += 1
        return self.logs / f"{self._runs:02d}-{args[0]}.log"

    def ray(self, *args: str, timeout_s: float = 300.0, stdin: str | None = None) -> RayRun:
        """Run ``ray <args>`` (the cluster file is appended after the subcommand), bounded; never raises on exit."""
        argv = (args[0], str(self.config_path), *args[1:])
        log_path = self._log_path(argv)
        started = time.monotonic()
        proc = subprocess.Popen([str(VENV_BIN / "ray"), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, text=True,
                                env=self.env, cwd=REPO_ROOT, start_new_session=True)
        try:
            output, _ = proc.communicate(stdin, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_session(proc)
            output = f"(killed after {timeout_s:.0f} s)"
            proc.returncode = -9
        log_path.write_text(f"$ ray {' '.join(argv)}\n{output}")
        return RayRun(argv, proc.returncode, output, time.monotonic() - started)

    def up(self, timeout_s: float = 300.0) -> RayRun:
        return self.ray("up", "-y", "--no-config-cache", timeout_s=timeout_s)

    def down(self, timeout_s: float = 300.0) -> RayRun:
        return self.ray("down", "-y", timeout_s=timeout_s)

    def exec(self, command: str, timeout_s: float = 120.0) -> RayRun:
        return self.ray("exec", command, timeout_s=timeout_s)

    def submit(self, *job_args: str, script: Path = JOB, timeout_s: float = 300.0) -> RayRun:
        """``ray submit`` of ``script`` (default: the e2e job) with ``job_args``."""
        return self.ray("submit", str(script), *job_args, timeout_s=timeout_s)

    def submit_background(self, *job_args: str, script: Path = JOB) -> BackgroundRun:
        """``ray submit`` left running; its output lines arrive in :attr:`BackgroundRun.lines`."""
        argv = ("submit", str(self.config_path), str(script), *job_args)
        return BackgroundRun(argv, self.env, self._log_path(argv))

    def python_on_head(self, code: str, timeout_s: float = 120.0) -> RayRun:
        """Run a Python snippet on the head (through ``ray exec``, so in its login shell)."""
        return self.exec(f"python -c {_sh_quote(code)}", timeout_s=timeout_s)

    # --- what the run left ----------------------------------------------------------------------------------------

    @property
    def ssh_control_dir(self) -> Path:
        """Where Ray keeps this cluster's SSH master sockets (``command_runner.py``: sha256 of user and cluster)."""
        user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
        cluster = hashlib.sha256(self.name.encode()).hexdigest()[:10]
        return Path(f"/tmp/ray_ssh_{user}/{cluster}")

    def ssh_master_pids(self) -> list[int]:
        """Laptop-side processes of this cluster's SSH connections (found by their control path, by PID)."""
        marker = str(self.ssh_control_dir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
        return pids

    def close(self) -> None:
        """End this cluster's SSH masters (``ssh -O exit``, then by PID) and remove their control directory."""
        directory = self.ssh_control_dir
        for socket_path in directory.glob("*") if directory.is_dir() else []:
            subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "x"], capture_output=True,
                           timeout=10, check=False)
        for pid in self.ssh_master_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(directory, ignore_errors=True)


class BackgroundRun:
    """A ``ray`` CLI call left running (its own session, ended by PID); output lines are queued as they arrive."""

    def __init__(self, argv: tuple[str, ...], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._log = log_path.open("w")
        self._log.write(f"$ ray {' '.join(argv)}\n")
        self._proc = subprocess.Popen([str(VENV_BIN / "ray"), *argv], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env,
                                      cwd=REPO_ROOT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            clean = _ANSI.sub("", line).rstrip("\r\n")
            self.output.append(clean)
            self._log.write(line)
            self._log.flush()
            self.lines.put(clean)

    def wait_for_json(self, timeout_s: float, what: str) -> dict[str, Any]:
        """The next ``E2E-JSON`` object the job prints, within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; output:\n"
                                     + "\n".join(self.output[-30:])) from None
            found = json_lines(line)
            if found:
                return found[0]

    def wait(self, timeout_s: float) -> RayRun:
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_session(self._proc)
        self._reader.join(timeout=10)
        self._log.close()
        return RayRun(self.argv, self._proc.returncode, "\n".join(self.output), 0.0)

    def kill(self) -> None:
        if self._proc.poll() is None:
            kill_session(self._proc)
        with contextlib.suppress(ValueError):
            self._log.close()


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# ---------------------------------------------------------------------------------------------------------------------
# Host-side checks


def netns_pids(prefix: str) -> dict[str, list[int]]:
    """Every process inside the prefix's network namespaces, by namespace (the kernel's view)."""
    found: dict[str, list[int]] = {}
    run_netns = Path("/run/netns")
    for entry in sorted(run_netns.iterdir()) if run_netns.is_dir() else []:
        if entry.name.startswith(f"{prefix}-"):
            out = subprocess.run(["ip", "netns", "pids", entry.name], capture_output=True, text=True).stdout
            found[entry.name] = [int(pid) for pid in out.split()]
    return found


@contextlib.contextmanager
def emulated_cluster(workdir: Path, *, prefix: str, public_subnet: str, name: str, boot_delay_s: float = 2.0,
                     idle_timeout_minutes: float | None = None) -> Iterator[RayCluster]:
    """An emulator and a cluster config on it (not yet up); at exit: ``ray down`` if anything is still rented, the
    emulator stopped, the prefix swept, SSH masters ended. The caller runs ``up()``."""
    emulator = EmulatorProcess(prefix=prefix, public_subnet=public_subnet, log_path=workdir / "logs" / "emulator.log",
                               boot_delay_s=boot_delay_s).start()
    cluster: RayCluster | None = None
    try:
        cluster = RayCluster(emulator, workdir, name=name, idle_timeout_minutes=idle_timeout_minutes)
        yield cluster
    finally:
        try:
            if cluster is not None:
                with contextlib.suppress(Exception):
                    if emulator.live_instances():
                        cluster.down(timeout_s=120)
        finally:
            emulator.stop()
            if cluster is not None:
                cluster.close()


# ---------------------------------------------------------------------------------------------------------------------
# ``python emulated_ray_cluster.py serve``: the emulator child process


def _serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="emulated_ray_cluster.py serve")
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--public-subnet", required=True)
    parser.add_argument("--boot-delay", type=float, default=2.0)
    parser.add_argument("--rate-limits", default="documented", help="documented | off | x<scale>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, default=None, help="stop (SIGTERM) when this process dies")
    args = parser.parse_args(argv)

    import logging

    from skyward_ray.emulator.netns import NetnsRuntime
    from skyward_ray.emulator.server import EmulatorServer

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.parent_pid is not None:
        _stop_with_parent(args.parent_pid)
    _log_refusals()
    runtime = NetnsRuntime(prefix=args.prefix, public_subnet=args.public_subnet)
    server = EmulatorServer(scenario="default", seed=args.seed, boot_delay_s=args.boot_delay, runtime=runtime,
                            host="127.0.0.1", port=0, rate_limits=args.rate_limits)
    try:
        server.start()
        print(json.dumps(server.ready_line()), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()  # destroys every instance, closes the runtime
    return 0


def _log_refusals() -> None:
    """Log every call the rate limits refuse (endpoint, client address, a hash of the key, how long after that
    identity's last accepted call), so a test that finds a 429 in the counters can say who earned it."""
    import hashlib
    import logging

    from skyward_ray.emulator import ratelimit

    log = logging.getLogger("emulated_ray_cluster.ratelimit")
    check = ratelimit.RateLimiter.check

    def logged(self: Any, config: Any, endpoint: str, key: str | None, address: str) -> Any:
        last = self._last.get((key or "", address, endpoint))
        refusal = check(self, config, endpoint, key, address)
        if refusal is not None:
            since = f"{self._now() - last:.3f} s" if last is not None else "?"
            log.warning("429 %s from %s key#%s (%s): %s after the last accepted call", endpoint, address,
                        hashlib.sha256((key or "").encode()).hexdigest()[:8], refusal.reason, since)
        return refusal

    ratelimit.RateLimiter.check = logged  # type: ignore[method-assign]


def _stop_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the parent (a test run) dies, even by SIGKILL, so its namespaces never outlive it."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: emulated_ray_cluster.py serve --prefix P --public-subnet S [--boot-delay s] [--seed n]")
    sys.exit(_serve(sys.argv[2:]))
