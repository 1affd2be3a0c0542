"""The real ``ray up`` CLI on bad input: one clear ``Error:`` line naming the field and the value, a non-zero exit,
no traceback, and not a single request to the Vast API (so no rental).

Ray's ``up`` is a click app that lets our provider's ``bootstrap_config`` errors escape; ``ConfigError`` is a
``click.ClickException``, so click prints it as ``Error: <message>``. The API is a loopback server that records
every request: a bad config must never reach it. Checks Ray makes before our provider runs (its schema, a
``head_node_type`` that names no node type) stay in Ray's words, and are not cases here.
"""

from __future__ import annotations

import copy
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from skyward_ray.emulator.testing import running_emulator

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "cluster_configs" / "vast-multinode.yaml").read_text())
RAY = Path(sys.executable).with_name("ray")
WORKER_TYPE = "rtx4090"


@dataclass(frozen=True)
class BadUp:
    id: str
    section: str  # "provider" or "node_config" (of the worker type)
    key: str
    value: Any
    expected: str  # the text the Error line must hold: field and value


CASES = [
    BadUp("provider field", "provider", "min_reliability", 1.5, "provider.min_reliability: 1.5 is not allowed"),
    BadUp("node_config field", "node_config", "gpus", 0,
          f"available_node_types.{WORKER_TYPE}.node_config.gpus: 0 is not allowed"),
    BadUp("unknown provider key", "provider", "no_such_key", 1, "provider.no_such_key: unknown field"),
]


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 500 to anything and notes it: a bad config must never get this far."""

    seen: list[str] = []

    def _any(self) -> None:
        self.seen.append(f"{self.command} {self.path.split('?')[0]}")
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = _any

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def vast_api() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def ray_up_runs(vast_api: tuple[str, list[str]],
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """``ray up -y --no-config-cache FILE`` per case, all at once (each is a fresh Ray CLI process)."""
    url, _ = vast_api
    directory = tmp_path_factory.mktemp("ray-up-bad")
    home = directory / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "VAST_URL": url,
           "VAST_API_KEY": "not-a-real-key", "RAY_USAGE_STATS_ENABLED": "0"}

    def run(case: BadUp) -> subprocess.CompletedProcess[str]:
        config = copy.deepcopy(BASE)
        section = config["provider"] if case.section == "provider" else \
            config["available_node_types"][WORKER_TYPE]["node_config"]
        section[case.key] = case.value
        path = directory / f"{case.id.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return subprocess.run([str(RAY), "up", "-y", "--no-config-cache", "--disable-usage-stats", str(path)],
                              capture_output=True, text=True, timeout=120, cwd=directory, env=env)

    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        return dict(zip([c.id for c in CASES], pool.map(run, CASES), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_ray_up_prints_one_error_line_without_traceback_and_rents_nothing(
    case: BadUp, ray_up_runs: dict[str, subprocess.CompletedProcess[str]], vast_api: tuple[str, list[str]]
) -> None:
    result = ray_up_runs[case.id]
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode != 0, output
    assert "Traceback" not in result.stdout + result.stderr, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, output
    assert case.expected in errors[0], output
    assert vast_api[1] == [], f"the Vast API was called: {vast_api[1]}"


def test_ray_up_without_a_key_or_a_placement_says_why_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """Past validation, what stops ``ray up`` is ours too (no API key, no offer passing a filter): one ``Error:``
    line saying why, no traceback, and nothing rented. The no-placement line names the filter that emptied the
    market (from one broad search made on failure), not just the GPU."""
    home = tmp_path / "home"
    home.mkdir()
    with running_emulator(boot_delay_s=0.5) as emulator:
        config = copy.deepcopy(BASE)
        config["provider"]["api_url"] = emulator.url
        config["provider"]["min_inet_down"] = 90_000  # faster than any host of the market
        path = tmp_path / "unplaceable.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        base_env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        base_env.pop("VAST_API_KEY", None)
        base_env.pop("VAST_URL", None)
        command = [str(RAY), "up", "-y", "--no-config-cache", "--disable-usage-stats", str(path)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            no_key, no_offer = pool.map(
                lambda env: subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env),
                [base_env, {**base_env, "VAST_API_KEY": emulator.api_key}])
        dump = emulator.market.dump()
    for result, expected in ((no_key, "no Vast API key found"), (no_offer, "none has inet_down >= 90000")):
        output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert result.returncode != 0, output
        assert "Traceback" not in result.stdout + result.stderr, output
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and expected in errors[0], output
        assert emulator.api_key not in result.stdout + result.stderr
    assert "min_inet_down" in next(line for line in no_offer.stderr.splitlines() if line.startswith("Error: "))
    assert dump["instances"] == [] and dump["overlays"] == []
