"""A pool that launched its cluster leaves nothing behind: not on a normal exit, not when its block raises, not when
startup fails, not on Ctrl-C or SIGTERM. Each test starts its own one- or two-node local cluster (a few seconds)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import ray

import skyward_ray as sky
from skyward_ray.sky.active_pool import NO_ACTIVE_POOL, current_pool
from skyward_ray.sky.nodes import NodesUnavailableError

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _kill_leftovers(pids: Iterable[int]) -> None:
    """Failure path only: stop, by PID, whatever a broken teardown left, so one failure does not leak into others."""
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _assert_gone(pids: list[int], temp_dir: str | None) -> None:
    try:
        assert pids, "the launcher reported no processes"
        assert _wait_until(lambda: not any(_alive(p) for p in pids), 30), [p for p in pids if _alive(p)]
        assert temp_dir is None or not Path(temp_dir).exists()
    finally:
        _kill_leftovers(pids)


@sky.compute
def rank() -> int:
    info = sky.instance_info()
    assert info is not None
    return info.rank


def test_block_that_raises_tears_down_the_cluster_and_keeps_the_error() -> None:
    launcher = sky.LocalLauncher()
    seen: dict[str, object] = {}
    with pytest.raises(ZeroDivisionError), sky.ComputePool(nodes=2, launcher=launcher) as pool:
        seen.update(pids=launcher.pids(), tmp=launcher.temp_dir, ranks=rank() @ sky)
        assert current_pool() is pool
        1 / 0  # noqa: B018
    assert seen["ranks"] == [0, 1]
    assert not ray.is_initialized()
    with pytest.raises(RuntimeError, match=re.escape(NO_ACTIVE_POOL)):
        current_pool()
    _assert_gone(seen["pids"], seen["tmp"])  # type: ignore[arg-type]


def test_decorated_function_gets_a_pool_per_call_and_cleans_up() -> None:
    launcher = sky.LocalLauncher()
    seen: list[list[int]] = []

    @sky.pool(nodes=1, launcher=launcher)
    def main() -> list[int]:
        seen.append(launcher.pids())
        return rank() @ sky

    assert main() == [0]
    assert not ray.is_initialized()
    _assert_gone(seen[0], None)


def test_failed_startup_removes_what_it_started() -> None:
    started: list[int] = []

    class Recording(sky.LocalLauncher):
        def up(self, spec):  # type: ignore[no-untyped-def]
            handle = super().up(spec)
            started.extend(self.pids())
            return handle

    launcher = Recording(nodes=1)  # one node, but the pool wants two
    with pytest.raises(NodesUnavailableError, match="nodes=2 but the Ray cluster has 1 alive node"):
        sky.ComputePool(nodes=2, launcher=launcher, ready_timeout=2).start()
    assert not ray.is_initialized()
    _assert_gone(started, None)


SCRIPT = """
import json, time
import skyward_ray as sky
launcher = sky.LocalLauncher()
with sky.ComputePool(nodes=1, launcher=launcher):
    print(json.dumps({"pids": launcher.pids(), "tmp": launcher.temp_dir}), flush=True)
    time.sleep(120)
"""


# SIGTERM exits through SystemExit: 15 from Ray's own driver handler, or 143 from ours when Ray installed none.
@pytest.mark.parametrize(("signum", "returncodes"), [(signal.SIGTERM, {15, 143}), (signal.SIGINT, {1, 130, -2})])
def test_signal_during_the_block_tears_down(signum: int, returncodes: set[int]) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    state: dict[str, object] = {"pids": [], "tmp": None}
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # bounded by the test timeout; the child prints once the pool is up
        state = json.loads(line)
        child.send_signal(signum)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode in returncodes, child.stderr.read() if child.stderr else ""
    _assert_gone(state["pids"], state["tmp"])  # type: ignore[arg-type]
