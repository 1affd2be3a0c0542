"""``VastLauncher``: a pool's own Ray cluster on Vast, from ``ray up`` to ``ray down``, driven from Python.

``up`` renders the cluster config, runs Ray's launcher SDK in a child process (:mod:`skyward_ray.sky.cluster_sdk`)
while showing its progress, and connects Ray Client through an SSH tunnel to the head; ``down`` removes every instance,
the overlay and every local file of the launch. The Vast API is the one ``VAST_URL`` names, as for the official client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
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
from skyward_ray.sky.cluster_sdk import EventReader, log_tail
from skyward_ray.sky.launcher import ClusterHandle, LaunchError
from skyward_ray.sky.ssh_tunnel import SshTunnel, end_process_group, end_ssh_masters
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
    """Launch a pool's Ray cluster on Vast (``sky.VastAI(...)``) and remove it again.

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
        """Rent and start the pool's cluster, all within ``spec.ready_timeout``; returns ``ray://127.0.0.1:<port>``.

        The config (:func:`~skyward_ray.sky.vast_config.render_cluster_config`) names the API key only as a 0600 file
        that :meth:`down` removes. The child runs ``create_or_update_cluster`` (no config cache) and waits until every
        worker runs Ray; its steps show as progress lines. Then an SSH forward to the head's Ray Client port opens.
        """
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
        reader = EventReader(events_path)
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
                                      f"{log_tail(launch.path('up.log'))}")
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
        """Close the tunnel, stop a launch still running, ``teardown_cluster`` and remove the launch's files.

        The teardown also sweeps instances by label, deletes the overlay and checks that nothing of the cluster is left
        on the account. Safe to call twice; raises :class:`LaunchError` naming what could not be removed.
        """
        with self._lock:
            launch = self._launch
            if launch is None:
                return
            problems: list[str] = []
            if launch.tunnel is not None:
                launch.tunnel.close()
            end_process_group(launch.child)  # a launch still running (Ctrl-C or a timeout while coming up)
            launch.child = None
            if launch.sdk_ran:
                problem = self._teardown(launch)
                if problem is not None:
                    problem = self._teardown(launch)  # once more: e.g. a rental that completed during the first
                if problem is None:
                    launch.sdk_ran = False
                else:
                    problems.append(problem)
            end_ssh_masters(launch.cluster_name)
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
            end_process_group(proc)
            return f"the teardown did not finish within {self.teardown_timeout_s:g} s"
        finally:
            end_process_group(proc)
        events = EventReader(events_path).read()
        errors = [str(e.get("message")) for e in events if e.get("event") == "error"]
        if errors or not any(e.get("event") == "done" for e in events):
            return errors[0] if errors else f"the teardown ended (exit {proc.returncode}) without a result: " \
                                              f"{log_tail(launch.path('down.log'))}"
        self._say(f"cluster {launch.cluster_name} removed: no instance or overlay left")
        return None

