"""``skyward-ray emulator serve`` as a process: one JSON line when ready, a working API, a clean exit on SIGTERM,
``--rate-limits`` shown in the ready line and the admin API, and bad flags refused with a clear message and no
traceback."""

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

from skyward_ray.emulator.faults import DEFAULT_RATE_LIMITS

SERVE = [sys.executable, "-m", "skyward_ray.cli", "emulator", "serve"]


def serve(*flags: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    proc = subprocess.Popen([*SERVE, "--port", "0", "--seed", "5", "--scenario", "scarce", "--api-key",
                             "test-key-123", "--boot-delay", "0.1", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
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


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    yield from serve()


@pytest.fixture
def served_scaled() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    yield from serve("--rate-limits", "x0.5", "--no-overlays")


def test_serve_prints_one_ready_line_serves_and_exits_on_sigterm(
        served: tuple[subprocess.Popen[str], dict[str, str]]) -> None:
    proc, ready = served
    assert set(ready) == {"url", "api_key", "admin_url", "rate_limits"} and ready["api_key"] == "test-key-123"
    assert ready["rate_limits"] == DEFAULT_RATE_LIMITS
    assert ready["url"].startswith("http://127.0.0.1:") and ready["admin_url"] == ready["url"] + "/_emulator"
    headers = {"Authorization": "Bearer test-key-123"}
    assert httpx.get(f"{ready['url']}/api/v0/users/current/", headers=headers).json()["credit"] == 50.0  # scarce
    assert httpx.get(f"{ready['admin_url']}/state/").json()["market"]["scenario"] == "scarce"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert proc.stdout is not None and proc.stdout.read() == ""  # exactly one line was printed
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_serve_rate_limits_and_no_overlays_flags(
        served_scaled: tuple[subprocess.Popen[str], dict[str, str]]) -> None:
    proc, ready = served_scaled
    assert ready["rate_limits"] == "x0.5"
    table = httpx.get(f"{ready['admin_url']}/rate_limits/").json()
    assert table["mode"] == "x0.5" and table["intervals_s"]["PUT /api/v0/asks/{id}/"] == 2.25
    assert table["create_penalty_s"] == 6.0 and table["search"]["window_s"] == 30.0
    headers = {"Authorization": "Bearer test-key-123"}
    statuses = [httpx.get(f"{ready['url']}/api/v0/instances/1/", headers=headers).status_code for _ in range(2)]
    assert statuses == [200, 429]  # the second show inside its 1 s (2 s x 0.5)
    overlays = httpx.get(f"{ready['url']}/api/v0/overlay/", headers=headers)
    assert overlays.status_code == 403 and overlays.json()["error"] == "permission_denied"  # --no-overlays
    assert httpx.get(f"{ready['admin_url']}/faults/").json()["overlays_available"] is False
    switched = httpx.put(f"{ready['admin_url']}/rate_limits/", json={"mode": "off"}).json()
    assert switched["mode"] == "off"
    assert httpx.get(f"{ready['url']}/api/v0/instances/1/", headers=headers).status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize(("flags", "needle"), [
    (["--rate-limits", "fast"], "'fast' is not allowed; allowed: documented | off | x<scale>"),
    (["--rate-limits", "x0"], "allowed: documented | off | x<scale>"),
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
