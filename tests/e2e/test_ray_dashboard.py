"""``ray dashboard cluster.yaml`` through our SSH runner: Ray's CLI forwards a local port over SSH (to the instance's
mapped SSH port) to the head's dashboard, and the dashboard's HTTP API answers through it.

One cluster (``ray up`` of a copy of ``skyward_ray/demo/emulator.yaml`` on the netns emulator,
:mod:`support.emulated_ray_cluster`), torn down by ``ray down`` and the emulator's sweep whatever happens.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import ray
from support.emulated_ray_cluster import BackgroundRun, emulated_cluster, poll

if TYPE_CHECKING:
    from support.netns_host import NetnsKit

pytestmark = pytest.mark.timeout(600)

FORWARD_TIMEOUT_S = 120.0


def _free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _answer(url: str) -> Any:
    with contextlib.suppress(httpx.HTTPError):
        response = httpx.get(url, timeout=10)
        if response.status_code == 200:
            return response.json()
    return None


def test_ray_dashboard_forwards_the_heads_dashboard(netns_host: None, netns_kit: NetnsKit, tmp_path: Path) -> None:
    prefix = netns_kit.unique_prefix()
    with emulated_cluster(tmp_path, prefix=prefix, public_subnet=netns_kit.free_public_subnet(),
                          name=f"e2e-dash-{prefix}") as cluster:
        cluster.up().check()
        port = _free_local_port()
        assert _refused(port), "nothing listens on the local port before the forward"
        argv = ("dashboard", str(cluster.config_path), "--port", str(port))
        forward = BackgroundRun(argv, cluster.env, cluster.logs / "dashboard.log")
        try:
            base = f"http://127.0.0.1:{port}"
            version = poll(lambda: _answer(f"{base}/api/version"), timeout_s=FORWARD_TIMEOUT_S, interval_s=2.0,
                           what=f"the head's dashboard on local port {port} (log: {cluster.logs / 'dashboard.log'})")
            assert version["ray_version"] == ray.__version__, version  # the head runs the laptop's Ray
            jobs = _answer(f"{base}/api/jobs/")
            assert jobs == [], f"the jobs API answers through the forward too: {jobs!r}"
            summary = _answer(f"{base}/nodes?view=summary")
            assert summary is not None and summary.get("result") is True, summary
            assert len(summary["data"]["summary"]) == 1, "one node: the head"
        finally:
            forward.kill()
        poll(lambda: _refused(port), timeout_s=30, interval_s=0.5, what="the forward to end with ray dashboard")
        cluster.down().check()
    assert not cluster.emulator.swept, f"the emulator left {cluster.emulator.swept} after it stopped"
    assert not netns_kit.leftovers(prefix)
