"""The emulator as a child process, for the demo, the benchmarks and the tests: start a command that prints the
emulator's JSON ready line, read that line, stop the process by its PID, and the small process checks around it.

Only the process this helper started (and its own session, by PID) is ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from skyward_ray.errors import SkywardError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 90.0
_KILL_WAIT_S = 10.0


def serve_command(*, scenario: str = "default", runtime: str = "none", port: int = 0, seed: int = 0,
                  boot_delay_s: float | None = None, rate_limits: str | None = None) -> list[str]:
    """``skyward-ray emulator serve`` with these options, run by this interpreter (no console script needed)."""
    argv = [sys.executable, "-m", "skyward_ray.cli", "emulator", "serve", "--scenario", scenario, "--runtime", runtime,
            "--port", str(port), "--seed", str(seed)]
    if boot_delay_s is not None:
        argv += ["--boot-delay", str(boot_delay_s)]
    if rate_limits is not None:
        argv += ["--rate-limits", rate_limits]
    return argv


@dataclass(frozen=True)
class ReadyLine:
    """What the emulator prints once it listens."""

    url: str
    api_key: str
    admin_url: str
    rate_limits: str | None = None


class EmulatorProcess:
    """A command that serves the emulator, as a child in a session of its own; a context manager.

    ``argv`` must print ONE JSON line ``{"url", "api_key", "admin_url", ...}`` on stdout once it listens (as
    ``skyward-ray emulator serve`` does) and shut down cleanly on SIGTERM. Its stderr goes to ``log_path`` (or nowhere).
    """

    def __init__(self, argv: list[str], *, log_path: Path | None = None, cwd: Path | None = None,
                 start_timeout_s: float = START_TIMEOUT_S, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.argv = argv
        self.log_path = log_path
        self.cwd = cwd
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.ready: ReadyLine | None = None
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def started(self) -> bool:
        """True once ``start`` launched the process (whether or not it is still running)."""
        return self._proc is not None

    def start(self) -> ReadyLine:
        """Launch the command and wait (bounded) for its ready line; on failure the process is stopped."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") if self.log_path is not None else contextlib.nullcontext() as log:
            self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                          stderr=log if log is not None else subprocess.DEVNULL,
                                          stdin=subprocess.DEVNULL, text=True, cwd=self.cwd, start_new_session=True)
        lines: queue.Queue[str] = queue.Queue()
        assert self._proc.stdout is not None
        threading.Thread(target=_pump_json_lines, args=(self._proc.stdout, lines), daemon=True).start()
        try:
            ready = json.loads(lines.get(timeout=self.start_timeout_s))
            self.ready = ReadyLine(ready["url"], ready["api_key"], ready["admin_url"], ready.get("rate_limits"))
        except (queue.Empty, ValueError, KeyError, TypeError):
            self.stop()
            tail = " | ".join(log_tail(self.log_path, 3)) if self.log_path is not None else ""
            where = f" (log: {self.log_path})" if self.log_path is not None else ""
            raise SkywardError(f"the emulator did not start within {self.start_timeout_s:.0f} s: "
                               f"{tail or 'no output'}{where}") from None
        return self.ready

    def stop(self) -> None:
        """SIGTERM (the emulator destroys its instances and closes its runtime), bounded; then SIGKILL its session."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            kill_session(proc)

    def __enter__(self) -> ReadyLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pump_json_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        if line.strip().startswith("{"):
            lines.put(line)


def kill_session(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a child started in a session of its own and what it started there (ssh, rsync), by its PID; reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_KILL_WAIT_S)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie holds no namespace and cannot be killed further)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def log_tail(path: Path, lines: int = 15) -> list[str]:
    """The last ``lines`` non-empty-trimmed lines of a log file (none if it cannot be read)."""
    try:
        return path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return []
