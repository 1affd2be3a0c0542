"""``VastLauncher``: a pool's own Ray cluster on Vast, from ``ray up`` to ``ray down``, driven from Python.

:meth:`VastLauncher.up`:

1. renders the pool's cluster config (:func:`skyward_ray.sky.vast_config.render_cluster_config`): N nodes of the
   pool's accelerator, node 0 the head, N-1 workers as ``min_workers`` so they come up with the cluster, the image's
   setup commands; the API key only as a 0600 file (``provider.api_key_file``), removed by :meth:`down`;
2. runs Ray's cluster launcher SDK (``create_or_update_cluster``, no config cache) in a child process
   (:mod:`skyward_ray.sky.cluster_sdk` says why), which also waits until every worker runs Ray, all within the
   pool's ``ready_timeout``; the steps show as progress lines (renting the head, overlay, workers joining k/N);
3. opens an SSH local port forward to the head's Ray Client server (port 10001 on the head's Ray address) and
   returns ``ray://127.0.0.1:<port>``. On real Vast a laptop reaches an instance only through its mapped ports, and
   SSH (22/tcp) is always mapped; the forward is restarted if it drops while the pool is up.

:meth:`down` (the pool calls it on exit, on errors and on Ctrl-C, with Ctrl-C held back) closes the forward, stops a
launch still running, runs ``teardown_cluster`` (which also sweeps instances by label and deletes the overlay), checks
that nothing of the cluster is left on the account, and removes every local file of the launch. It is safe to call
more than once and raises :class:`LaunchError` naming what could not be removed.

The Vast API is the one ``VAST_URL`` names (else Vast's own), for this process, the provider and the head alike, as
the official client does: pointing at the emulator is that one variable. Ray Client needs the same Ray and Python
versions on both ends; the provider pins the nodes' Ray to this machine's, and the emulator's hosts run this very
environment.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skyward_ray.errors import ConfigError, SkywardError
from skyward_ray.provider.bootstrap import DEFAULT_SSH_USER, ensure_key_pair
from skyward_ray.provider.command_runner import is_documentation_address, tcp_accepts
from skyward_ray.provider.config import overlay_name_for
from skyward_ray.sky.launcher import ClusterHandle, LaunchError, _free_port
from skyward_ray.sky.vast_config import head_allocation, render_cluster_config
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import resolve_api_key, resolve_base_url

if TYPE_CHECKING:
    from skyward_ray.sky.nodes import NodeInfo
    from skyward_ray.sky.spec import PoolSpec

log = logging.getLogger(__name__)

RAY_CLIENT_PORT = 10001  # `ray start --head` starts the Ray Client server here by default
POLL_S = 0.5
OVERLAY_POLL_S = 2.0
KILL_GRACE_S = 10.0
_STEP_LINES = {  # Ray's CreateClusterEvent -> what the user reads (each shown once)
    "acquiring_new_head_node": "renting the head",
    "head_node_acquired": "head rented; waiting for its SSH",
    "ssh_control_acquired": "head: SSH is up; copying skyward-ray and the API key file",
    "run_setup_cmd": "head: installing skyward-ray and the image",
    "start_ray_runtime": "head: starting Ray",
    "start_ray_runtime_completed": "head: Ray is running",
}


def _stderr_progress(message: str) -> None:
    print(f"sky: {message}", file=sys.stderr, flush=True)


def ssh_control_dir(cluster_name: str) -> Path:
    """Where Ray's SSH runner keeps this cluster's master sockets (Ray 2.60's fixed formula, by user and cluster)."""
    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    cluster = hashlib.sha256(cluster_name.encode()).hexdigest()[:10]
    return Path(f"/tmp/ray_ssh_{user}/{cluster}")


def _ssh_options(key: str, port: int) -> list[str]:
    return ["-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]


def _end_group(proc: subprocess.Popen[Any] | None) -> None:
    """End a child started in its own session, and what it started there (ssh, rsync), by its process group."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
            return


class SshTunnel:
    """``ssh -N -L 127.0.0.1:<local>:<target>`` to a node's SSH endpoint, restarted if it drops until closed."""

    def __init__(self, endpoint: tuple[str, int], target: tuple[str, int], key: str, user: str,
                 log_path: Path, restart_check_s: float = 2.0) -> None:
        self.endpoint = endpoint
        self.target = target
        self.key = key
        self.user = user
        self.local_port = _free_port("127.0.0.1")
        self._log_path = log_path
        self._restart_check_s = restart_check_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> subprocess.Popen[bytes]:
        host, port = self.endpoint
        forward = f"127.0.0.1:{self.local_port}:{self.target[0]}:{self.target[1]}"
        argv = ["ssh", "-N", *_ssh_options(self.key, port), "-o", "ExitOnForwardFailure=yes", "-L", forward,
                f"{self.user}@{host}"]
        with self._log_path.open("ab") as log_file:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                    start_new_session=True)

    def open(self, timeout_s: float) -> None:
        """Start the forward and wait until the local port accepts connections (ssh binds it once forwarding)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                self._proc = self._spawn()
                proc = self._proc
            while proc.poll() is None and time.monotonic() < deadline:
                if tcp_accepts(("127.0.0.1", self.local_port), timeout_s=1.0):
                    self._watchdog = threading.Thread(target=self._watch, name="skyward-ssh-tunnel", daemon=True)
                    self._watchdog.start()
                    return
                time.sleep(0.1)
            _end_group(proc)
            if time.monotonic() >= deadline:
                raise LaunchError(
                    f"no SSH tunnel to the head at {self.endpoint[0]}:{self.endpoint[1]} within {timeout_s:g} s: "
                    f"{self._tail()}"
                )
            time.sleep(1.0)  # ssh exited (sshd not ready yet, port taken): try again

    def _watch(self) -> None:
        while not self._closed.wait(self._restart_check_s):
            with self._lock:
                if self._closed.is_set() or self._proc is None or self._proc.poll() is None:
                    continue
                log.warning("the SSH tunnel to the head dropped (exit %s); reopening it", self._proc.returncode)
                self.restarts += 1
                self._proc = self._spawn()

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = self._log_path.read_text(errors="replace").strip().splitlines()
            if lines:
                return lines[-1][:300]
        return "ssh said nothing"

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            proc, self._proc = self._proc, None
        _end_group(proc)
        if self._watchdog is not None:
            self._watchdog.join(timeout=10)


@dataclass
class _Launch:
    """The files and processes of one launch (all under ``workdir``, which :meth:`VastLauncher.down` removes)."""

    cluster_name: str
    workdir: Path
    config: dict[str, Any]
    config_path: Path
    api_key_file: Path | None
    started: float
    child: subprocess.Popen[bytes] | None = None
    sdk_ran: bool = False  # a create_or_update_cluster was started, so teardown must run
    tunnel: SshTunnel | None = None

    def path(self, name: str) -> Path:
        return self.workdir / name


class VastLauncher:
    """Launch a pool's Ray cluster on Vast (``sky.VastAI(...)``) and remove it again. See the module docstring.

    ``ssh_private_key``: the key Ray and the tunnel use (default ``~/.ssh/skyward-ray_ed25519``, made once, as for
    ``ray up``). ``cpus_per_node``: Ray's CPU count per node (default: what the instance has).
    ``provider_overrides``: other ``provider:`` keys of the cluster config (see ``cluster_configs/REFERENCE.md``).
    ``progress``: called with each progress line (default: printed to stderr as ``sky: ...``).
    """

    def __init__(
        self,
        *,
        ssh_private_key: str | os.PathLike[str] | None = None,
        cpus_per_node: int | None = None,
        provider_overrides: dict[str, Any] | None = None,
        progress: Callable[[str], None] | None = None,
        connect_timeout_s: float = 60.0,
        teardown_timeout_s: float = 300.0,
    ) -> None:
        if cpus_per_node is not None and (isinstance(cpus_per_node, bool) or not isinstance(cpus_per_node, int)
                                          or cpus_per_node < 1):
            raise ConfigError(f"cpus_per_node: {cpus_per_node!r} is not allowed; allowed: an integer >= 1 or None")
        for name, value in (("connect_timeout_s", connect_timeout_s), ("teardown_timeout_s", teardown_timeout_s)):
            if not value > 0:
                raise ConfigError(f"{name}: {value!r} is not allowed; allowed: seconds > 0")
        self.ssh_private_key = str(ssh_private_key) if ssh_private_key is not None else None
        self.cpus_per_node = cpus_per_node
        self.provider_overrides = dict(provider_overrides or {})
        self.progress = progress or _stderr_progress
        self.connect_timeout_s = connect_timeout_s
        self.teardown_timeout_s = teardown_timeout_s
        self._launch: _Launch | None = None
        self._lock = threading.Lock()

    # --- introspection (tests, debugging) ----------------------------------------------------------------------------

    @property
    def cluster_name(self) -> str | None:
        return self._launch.cluster_name if self._launch else None

    @property
    def workdir(self) -> Path | None:
        """This launch's private directory: config, Ray's log, events, the key file (removed by :meth:`down`)."""
        return self._launch.workdir if self._launch else None

    @property
    def tunnel(self) -> SshTunnel | None:
        return self._launch.tunnel if self._launch else None

    def _say(self, message: str) -> None:
        launch = self._launch
        elapsed = f"[{time.monotonic() - launch.started:4.0f}s] " if launch else ""
        log.info("%s", message)
        self.progress(f"{elapsed}{message}")

    # --- up ----------------------------------------------------------------------------------------------------------

    def up(self, spec: PoolSpec) -> ClusterHandle:
        if spec.provider is None:
            raise ConfigError("provider: None is not allowed for VastLauncher; allowed: sky.VastAI(...)")
        with self._lock:
            if self._launch is not None:
                raise LaunchError("this VastLauncher already runs a cluster; take it down first")
            launch = self._prepare(spec)
            self._launch = launch
        try:
            result = self._run_sdk_up(spec, launch)
            return self._connect(spec, launch, result)
        except BaseException:
            self.down()
            raise

    def _prepare(self, spec: PoolSpec) -> _Launch:
        """Resolve the API, the key and the SSH key, and write the cluster config (nothing is rented yet)."""
        assert spec.provider is not None
        api_url = resolve_base_url(None)
        secret = spec.provider.api_key.get_secret_value() if spec.provider.api_key is not None else None
        resolve_api_key(secret)  # no key anywhere: say so now, before anything starts
        auth: dict[str, Any] = {"ssh_user": DEFAULT_SSH_USER}
        if self.ssh_private_key is not None:
            auth["ssh_private_key"] = self.ssh_private_key
        ensure_key_pair(auth)  # the default key is made once, as `ray up` does
        cluster_name = spec.name or f"sky-{secrets.token_hex(4)}"
        workdir = Path(tempfile.mkdtemp(prefix=f"skyward-{cluster_name}-"))
        os.chmod(workdir, 0o700)
        try:
            key_file = None
            if secret is not None:
                key_file = workdir / "vast_api_key"
                descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(secret + "\n")
            config = render_cluster_config(
                spec, cluster_name=cluster_name, api_url=api_url, ssh_private_key=str(auth["ssh_private_key"]),
                api_key_file=str(key_file) if key_file else None, cpus_per_node=self.cpus_per_node,
                provider_overrides=self.provider_overrides,
            )
            config_path = workdir / "cluster.json"
            config_path.write_text(json.dumps(config, indent=2))
            for sub in ("tmp", "cache"):
                (workdir / sub).mkdir(mode=0o700)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return _Launch(cluster_name, workdir, config, config_path, key_file, started=time.monotonic())

    def _child_env(self, launch: _Launch) -> dict[str, str]:
        return {
            **os.environ,
            "TMPDIR": str(launch.path("tmp")),  # Ray's config cache and ray-bootstrap-* files
            "XDG_CACHE_HOME": str(launch.path("cache")),  # the provider's staged key file and package copy
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn_sdk(self, launch: _Launch, action: str, deadline_s: float) -> tuple[subprocess.Popen[bytes], Path]:
        events = launch.path(f"{action}.events.jsonl")
        events.touch()
        argv = [sys.executable, "-m", "skyward_ray.sky.cluster_sdk", action, "--config", str(launch.config_path),
                "--events", str(events), "--deadline", str(time.time() + deadline_s)]
        with launch.path(f"{action}.log").open("ab") as log_file:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    env=self._child_env(launch), start_new_session=True)
        return proc, events

    def _run_sdk_up(self, spec: PoolSpec, launch: _Launch) -> dict[str, Any]:
        assert spec.accelerator is not None and spec.provider is not None
        workers = spec.nodes - 1
        head_kind = head_allocation(spec.allocation).value
        self._say(
            f"launching {spec.nodes} x {spec.accelerator} on Vast ({launch.config['provider']['api_url']}) as "
            f"cluster {launch.cluster_name}: head {head_kind}"
            + (f", {workers} worker(s) {spec.allocation.value}" if workers else "")
        )
        launch.sdk_ran = True
        proc, events_path = self._spawn_sdk(launch, "up", spec.ready_timeout)
        launch.child = proc
        hard_deadline = time.monotonic() + spec.ready_timeout + 30.0
        watch_overlay = workers > 0 and spec.provider.use_overlay
        client = VastClient(api_key=spec.provider.api_key.get_secret_value() if spec.provider.api_key else None,
                            base_url=launch.config["provider"]["api_url"]) if watch_overlay else None
        reader = _EventReader(events_path)
        shown: set[str] = set()
        next_overlay_look = 0.0
        try:
            while True:
                for event in reader.read():
                    outcome = self._on_event(event, shown)
                    if outcome is not None:
                        return outcome
                if proc.poll() is not None:
                    for event in reader.read():
                        outcome = self._on_event(event, shown)
                        if outcome is not None:
                            return outcome
                    raise LaunchError(f"the launch ended (exit {proc.returncode}) without a result: "
                                      f"{_log_tail(launch.path('up.log'))}")
                if time.monotonic() >= hard_deadline:
                    raise LaunchError(f"the pool was not up within ready_timeout={spec.ready_timeout:g} s "
                                      f"(log: {launch.path('up.log')})")
                if client is not None and time.monotonic() >= next_overlay_look:
                    next_overlay_look = time.monotonic() + OVERLAY_POLL_S
                    if self._show_overlay(client, launch.cluster_name):
                        client.close()
                        client = None
                time.sleep(POLL_S)
        finally:
            if client is not None:
                client.close()
            launch.child = None if proc.poll() is not None else proc

    def _on_event(self, event: dict[str, Any], shown: set[str]) -> dict[str, Any] | None:
        kind = event.get("event")
        if kind == "step":
            line = _STEP_LINES.get(str(event.get("step")))
            if line and line not in shown:
                shown.add(line)
                self._say(line)
        elif kind == "head":
            self._say(f"head is Vast instance {event.get('head_id')}")
        elif kind == "workers":
            statuses = event.get("statuses") or {}
            detail = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
            self._say(f"workers joining: {event.get('up')}/{event.get('wanted')} up" + (f" ({detail})" if detail
                                                                                          else ""))
        elif kind == "error":
            raise LaunchError(f"launching the pool on Vast failed: {event.get('message')}")
        elif kind == "done":
            return event
        return None

    def _show_overlay(self, client: VastClient, cluster_name: str) -> bool:
        name = overlay_name_for(cluster_name)
        try:
            overlays = client.list_overlays()
        except SkywardError as exc:  # progress only: the launch itself reports real failures
            log.debug("listing overlays failed: %s", exc)
            return False
        for overlay in overlays:
            if overlay.name == name:
                self._say(f"overlay {overlay.name} ({overlay.internal_subnet}) on physical cluster "
                          f"{overlay.cluster_id}")
                return True
        return False

    def _connect(self, spec: PoolSpec, launch: _Launch, result: dict[str, Any]) -> ClusterHandle:
        head_id = int(result["head_id"])
        head_ip = str(result["head_address"]).rsplit(":", 1)[0]
        assert spec.provider is not None
        with VastClient(api_key=spec.provider.api_key.get_secret_value() if spec.provider.api_key else None,
                        base_url=launch.config["provider"]["api_url"]) as client:
            instance = client.get_instance(head_id)
        if instance is None:
            raise LaunchError(f"the head (Vast instance {head_id}) is gone")
        endpoints = [e for e in (instance.ssh_direct, instance.ssh_proxy)
                     if e is not None and not is_documentation_address(e[0])]
        endpoint = next((e for e in endpoints if tcp_accepts(e)), None)
        if endpoint is None:
            raise LaunchError(f"the head (Vast instance {head_id}) answers on none of its SSH endpoints {endpoints}")
        tunnel = SshTunnel(endpoint, (head_ip, RAY_CLIENT_PORT), launch.config["auth"]["ssh_private_key"],
                           launch.config["auth"]["ssh_user"], launch.path("tunnel.log"))
        launch.tunnel = tunnel
        tunnel.open(self.connect_timeout_s)
        address = f"ray://127.0.0.1:{tunnel.local_port}"
        self._say(f"SSH tunnel {address} -> head {head_ip}:{RAY_CLIENT_PORT} via {endpoint[0]}:{endpoint[1]}; "
                  "connecting Ray Client")
        return ClusterHandle(address=address, created=True, nodes=spec.nodes, image_installed=True,
                             description=f"Vast cluster {launch.cluster_name} ({spec.nodes} node(s)) via {address}")

    def ready(self, nodes: Sequence[NodeInfo]) -> None:
        """Called by the pool once connected and every node is seen by Ray."""
        shown = ", ".join(f"rank {n.rank} {n.ip}" + (" (head)" if n.is_head else "") for n in nodes)
        self._say(f"connected: {len(nodes)} node(s): {shown}")

    # --- down --------------------------------------------------------------------------------------------------------

    def down(self) -> None:
        with self._lock:
            launch = self._launch
            if launch is None:
                return
            problems: list[str] = []
            if launch.tunnel is not None:
                launch.tunnel.close()
            _end_group(launch.child)  # a launch still running (Ctrl-C or a timeout while coming up)
            launch.child = None
            if launch.sdk_ran:
                problem = self._teardown(launch)
                if problem is not None:
                    problem = self._teardown(launch)  # once more: e.g. a rental that completed during the first
                if problem is None:
                    launch.sdk_ran = False
                else:
                    problems.append(problem)
            _end_ssh_masters(launch.cluster_name)
            if launch.api_key_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    launch.api_key_file.unlink()
            if problems:
                kept = launch.workdir / "kept-for-debugging"
                with contextlib.suppress(OSError):
                    kept.write_text("the teardown failed; see *.log\n")
                self._launch = None
                raise LaunchError(f"tearing down cluster {launch.cluster_name} failed: {'; '.join(problems)} "
                                  f"(logs: {launch.workdir})")
            shutil.rmtree(launch.workdir, ignore_errors=True)
            self._launch = None

    def _teardown(self, launch: _Launch) -> str | None:
        """Run ``teardown_cluster`` (bounded); None when the cluster is gone, else what went wrong."""
        self._say(f"tearing down cluster {launch.cluster_name}")
        proc, events_path = self._spawn_sdk(launch, "down", self.teardown_timeout_s)
        try:
            proc.wait(timeout=self.teardown_timeout_s + 30.0)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            return f"the teardown did not finish within {self.teardown_timeout_s:g} s"
        finally:
            _end_group(proc)
        events = _EventReader(events_path).read()
        errors = [str(e.get("message")) for e in events if e.get("event") == "error"]
        if errors or not any(e.get("event") == "done" for e in events):
            return errors[0] if errors else f"the teardown ended (exit {proc.returncode}) without a result: " \
                                              f"{_log_tail(launch.path('down.log'))}"
        self._say(f"cluster {launch.cluster_name} removed: no instance or overlay left")
        return None


class _EventReader:
    """The complete JSON lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        found = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    import re

    clean = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    return " | ".join(clean[-lines:]) or "(empty log)"


def _end_ssh_masters(cluster_name: str) -> None:
    """Close the SSH master connections Ray opened for this cluster (they outlive the SDK call by up to 10 s)."""
    directory = ssh_control_dir(cluster_name)
    if not directory.is_dir():
        return
    for sock in directory.iterdir():
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "placeholder"], capture_output=True,
                           timeout=10, check=False)
    shutil.rmtree(directory, ignore_errors=True)
