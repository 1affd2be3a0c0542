"""``skyward-ray emulator serve`` as a process: one JSON line when ready, a working API, a clean exit on SIGTERM,
and bad flags refused with a clear message and no traceback."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

pytestmark = pytest.mark.emulator

SERVE = [sys.executable, "-m", "skyward_ray.cli", "emulator", "serve"]


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    proc = subprocess.Popen([*SERVE, "--port", "0", "--seed", "5", "--scenario", "scarce", "--api-key",
                             "test-key-123", "--boot-delay", "0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline and not line:
            if selector.select(timeout=max(0.0, deadline - time.monotonic())):
                line = proc.stdout.readline()
                if not line:  # EOF: the process died
                    break
        assert line, f"no ready line; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_serve_prints_one_ready_line_serves_and_exits_on_sigterm(
        served: tuple[subprocess.Popen[str], dict[str, str]]) -> None:
    proc, ready = served
    assert set(ready) == {"url", "api_key", "admin_url"} and ready["api_key"] == "test-key-123"
    assert ready["url"].startswith("http://127.0.0.1:") and ready["admin_url"] == ready["url"] + "/_emulator"
    headers = {"Authorization": "Bearer test-key-123"}
    assert httpx.get(f"{ready['url']}/api/v0/users/current/", headers=headers).json()["credit"] == 50.0  # scarce
    assert httpx.get(f"{ready['admin_url']}/state/").json()["market"]["scenario"] == "scarce"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert proc.stdout is not None and proc.stdout.read() == ""  # exactly one line was printed
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


@pytest.mark.parametrize(("flags", "needle"), [
    (["--port", "70000"], "allowed: 0 (a free port) to 65535"),
    (["--port", "http"], "is not an integer"),
    (["--boot-delay", "-1"], "allowed: 0 to 3600 seconds"),
    (["--scenario", "huge"], "invalid choice: 'huge'"),
    (["--runtime", "docker"], "invalid choice: 'docker'"),
    (["--host", "203.0.113.9", "--port", "0"], "cannot listen on 203.0.113.9"),
])
def test_bad_flags_are_refused_clearly(flags: list[str], needle: str) -> None:
    result = subprocess.run([*SERVE, *flags], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                            check=False)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
