"""The emulator as a child process for benchmarks: ``skyward-ray emulator serve`` on a free port with Vast's
documented rate limits, the bench market and no hosts; ended by its PID whatever happens."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Emulator:
    url: str
    api_key: str
    admin_url: str


@contextlib.contextmanager
def emulator_process() -> Iterator[Emulator]:
    cmd = [sys.executable, "-m", "skyward_ray.cli", "emulator", "serve", "--scenario", "bench", "--seed", "1",
           "--boot-delay", "0", "--port", "0", "--runtime", "none", "--rate-limits", "documented"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # one JSON line once it listens (or EOF if it died)
        if not line.strip().startswith("{"):
            raise SystemExit(f"the emulator did not start (exit code {proc.poll()})")
        ready = json.loads(line)
        yield Emulator(ready["url"], ready["api_key"], ready["admin_url"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
