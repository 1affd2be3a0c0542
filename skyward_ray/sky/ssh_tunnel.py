"""SSH from the driver to a Vast node: a self-restarting local port forward, and cleanup of Ray's SSH masters.

On Vast a laptop reaches an instance only through its mapped ports, and SSH (22/tcp) is always mapped, so the pool's
Ray Client connection to the head rides an ``ssh -L`` forward. Children run in their own session and end by group.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from skyward_ray.provider.command_runner import tcp_accepts
from skyward_ray.sky.launcher import LaunchError, free_port

log = logging.getLogger(__name__)

KILL_GRACE_S = 10.0


def ssh_control_dir(cluster_name: str) -> Path:
    """Where Ray's SSH runner keeps this cluster's master sockets (Ray 2.60's fixed formula, by user and cluster)."""
    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    cluster = hashlib.sha256(cluster_name.encode()).hexdigest()[:10]
    return Path(f"/tmp/ray_ssh_{user}/{cluster}")


def end_ssh_masters(cluster_name: str) -> None:
    """Close the SSH master connections Ray opened for this cluster (they outlive the SDK call by up to 10 s)."""
    directory = ssh_control_dir(cluster_name)
    if not directory.is_dir():
        return
    for sock in directory.iterdir():
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "placeholder"], capture_output=True,
                           timeout=10, check=False)
    shutil.rmtree(directory, ignore_errors=True)


def end_process_group(proc: subprocess.Popen[Any] | None) -> None:
    """End a child started in its own session, and what it started there (ssh, rsync), by its process group."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
            return


def _ssh_options(key: str, port: int) -> list[str]:
    return ["-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]


class SshTunnel:
    """``ssh -N -L 127.0.0.1:<local>:<target>`` to a node's SSH endpoint, restarted if it drops until closed.

    A daemon thread (``skyward-ssh-tunnel``) checks the ssh process every ``restart_check_s`` and respawns it.
    """

    def __init__(self, endpoint: tuple[str, int], target: tuple[str, int], key: str, user: str,
                 log_path: Path, restart_check_s: float = 2.0) -> None:
        self.endpoint = endpoint
        self.target = target
        self.key = key
        self.user = user
        self.local_port = free_port("127.0.0.1")
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
            end_process_group(proc)
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
        end_process_group(proc)
        if self._watchdog is not None:
            self._watchdog.join(timeout=10)
