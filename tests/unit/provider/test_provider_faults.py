"""Provider faults lose nothing: failed destroys keep counting and are retried, the exit-time label flush
is bounded, and the dead-man switch signals only a previous copy of itself.

The in-memory Vast client comes from tests/support/fake_vast_client.py (it checks the state lock on every call).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.autoscaler.node_launch_exception import NodeLaunchException
from support.fake_vast_client import FakeVastClient, make_provider, offer, worker_label

from skyward_ray.emulator.testing import ManualClock, wait_until
from skyward_ray.provider import deadman
from skyward_ray.provider.exit_flush import EXIT_FLUSH_BUDGET_S, flush_all_at_exit
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.vast.errors import ServerError

NODE_CONFIG = {"accelerator": "RTX 4090", "allocation": "on-demand"}
WORKER = {"ray-node-kind": "worker", "ray-user-node-type": "gpu", "ray-node-status": "uninitialized"}


class FlakyDestroyVast(FakeVastClient):
    """Destroys fail with a 5xx while ``failing`` is set (the instance keeps running and billing)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    def destroy_instance(self, instance_id: int) -> bool:
        if self.failing:
            self._record("destroy_instance", instance_id)
            raise ServerError("Vast answered 500", status=500)
        return super().destroy_instance(instance_id)

    def destroy_instances(self, ids: list[int]) -> None:
        if self.failing:
            self._record("destroy_instances", list(ids))
            raise ServerError("Vast answered 500", status=500)
        super().destroy_instances(ids)


def _pool_idle(provider: VastNodeProvider) -> None:
    """Wait for the background destroys the last refresh dispatched (bounded)."""
    pool = provider.actions.pool()
    pool.submit(lambda: None).result(timeout=10)
    wait_until(lambda: not any(n.destroying for n in provider.state.nodes.values()), timeout_s=10,
               what="background destroys done")


# --- a failed destroy keeps counting and is retried ----------------------------------------------------------------


def test_a_failed_destroy_keeps_the_node_counted_and_is_retried_at_each_refresh() -> None:
    fake, clock = FlakyDestroyVast(), ManualClock()
    fake.add_instance(501, worker_label(), dph_total=0.5)
    provider = make_provider(fake, clock, cache_ttl_s=1.0, max_hourly_cost=0.8, use_overlay=False)
    try:
        assert provider.non_terminated_nodes({}) == ["501"]
        provider.terminate_nodes(["501"])
        assert provider.non_terminated_nodes({}) == []  # hidden from Ray at once
        with provider._lock:
            assert provider.state.committed_per_hour() == pytest.approx(0.5), "still running: still billed"
        # No room for another 0.4 $/h node while the failed-destroy node bills 0.5 of the 0.8 cap.
        fake.offers = [offer(9001, 90, cluster_id=None, price=0.4)]
        with pytest.raises(NodeLaunchException, match="max_hourly_cost"):
            provider.create_node_with_resources_and_labels(NODE_CONFIG, dict(WORKER), 1, {}, {})
        assert fake.count("create_instance") == 0

        tries = fake.count("destroy_instance")
        clock.advance(1.5)  # the next refresh sends the destroy again (not after DESTROY_RETRY_S)
        provider.non_terminated_nodes({})
        _pool_idle(provider)
        assert fake.count("destroy_instance") == tries + 1
        with provider._lock:
            assert provider.state.committed_per_hour() == pytest.approx(0.5)

        fake.failing = False
        clock.advance(1.5)
        provider.non_terminated_nodes({})
        _pool_idle(provider)
        assert 501 not in fake.instances, "the retried destroy went through"
        with provider._lock:
            assert provider.state.committed_per_hour() == 0.0, "destroyed: no longer billed, no longer counted"
        clock.advance(1.5)
        provider.non_terminated_nodes({})
        assert "501" not in provider.state.nodes  # gone from the list: forgotten
        provider.create_node_with_resources_and_labels(NODE_CONFIG, dict(WORKER), 1, {}, {})
        assert fake.count("create_instance") == 1
    finally:
        provider.close()


def test_a_destroy_in_flight_is_not_sent_twice() -> None:
    fake, clock = FlakyDestroyVast(), ManualClock()
    fake.add_instance(502, worker_label(), dph_total=0.5)
    provider = make_provider(fake, clock, cache_ttl_s=1.0)
    gate = threading.Event()
    entered = threading.Event()
    original = fake.destroy_instance

    def slow_destroy(instance_id: int) -> bool:
        entered.set()
        assert gate.wait(10)
        return original(instance_id)

    fake.destroy_instance = slow_destroy  # type: ignore[method-assign]
    try:
        provider.non_terminated_nodes({})
        worker = threading.Thread(target=provider.terminate_nodes, args=(["502"],))
        worker.start()
        assert entered.wait(10)
        clock.advance(1.5)
        provider.non_terminated_nodes({})  # the destroy is still in flight: no second one
        provider.terminate_nodes(["502"])
        gate.set()
        worker.join(10)
        assert not worker.is_alive()
        assert fake.count("destroy_instance") == 1
    finally:
        gate.set()
        provider.close()


def test_a_ghost_rental_stays_reserved_until_a_list_settles_it() -> None:
    fake, clock = FakeVastClient(), ManualClock()
    provider = make_provider(fake, clock, cache_ttl_s=1.0, max_hourly_cost=1.0, use_overlay=False)
    fake.offers = [offer(9001, 90, cluster_id=None, price=0.4)]
    fake.create_error = ServerError("Vast answered 504", status=504, outcome_unknown=True)  # it may have happened
    try:
        assert fake.create_error.outcome_unknown
        with pytest.raises(NodeLaunchException):
            provider.create_node_with_resources_and_labels(NODE_CONFIG, dict(WORKER), 1, {}, {})
        with provider._lock:
            assert provider.state.committed_per_hour() == pytest.approx(0.4), "the ghost may be billing"
        clock.advance(1.5)
        provider.non_terminated_nodes({})  # the list shows no ghost: the reservation ends
        with provider._lock:
            assert provider.state.committed_per_hour() == 0.0
    finally:
        provider.close()


# --- the exit-time flush is bounded ----------------------------------------------------------------------------------


class UnreachableVast(FakeVastClient):
    """Label writes hang (``hang``) or fail at once (``fail``): an API that cannot be reached at exit."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.release = threading.Event()

    def set_label(self, instance_id: int, label: str) -> None:
        self._record("set_label", (instance_id, label))
        if self.mode == "hang":
            self.release.wait(120)
        raise ServerError("unreachable", status=503)


@pytest.fixture
def unreachable() -> Iterator[list[UnreachableVast]]:
    made: list[UnreachableVast] = []
    yield made
    for fake in made:
        fake.release.set()  # let the abandoned close threads end


def _provider_with_pending_tags(fake: FakeVastClient, node_id: int) -> VastNodeProvider:
    fake.add_instance(node_id, worker_label())
    provider = make_provider(fake, ManualClock())
    provider.set_node_tags(str(node_id), {"ray-node-status": "up-to-date"})
    assert provider.unflushed_node_ids() == [str(node_id)]
    return provider


def test_exit_flush_returns_within_its_budget_and_names_what_was_not_written(
        unreachable: list[UnreachableVast], caplog: pytest.LogCaptureFixture) -> None:
    assert EXIT_FLUSH_BUDGET_S <= 10.0
    hanging, failing = UnreachableVast("hang"), UnreachableVast("fail")
    unreachable += [hanging, failing]
    providers = [_provider_with_pending_tags(hanging, 601), _provider_with_pending_tags(hanging, 602),
                 _provider_with_pending_tags(failing, 603)]
    caplog.set_level(logging.WARNING, logger="skyward_ray.provider.exit_flush")
    started = time.monotonic()
    flush_all_at_exit(providers, budget_s=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"the exit flush took {elapsed:.1f} s with a 1 s budget"
    assert hanging.count("set_label") >= 2 and failing.count("set_label") >= 1  # each provider tried
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                         and r.getMessage().startswith("exit:"))
    for node_id in ("601", "602", "603"):
        assert node_id in warnings, warnings
    assert "within 1 s" in warnings
    assert "skyr1:" not in warnings, "no label (nor anything else of the request) in the warning"


def test_exit_flush_with_a_reachable_api_writes_everything_quietly(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeVastClient()
    provider = _provider_with_pending_tags(fake, 701)
    caplog.set_level(logging.WARNING, logger="skyward_ray.provider.exit_flush")
    flush_all_at_exit([provider], budget_s=5.0)
    assert fake.count("set_label") == 1 and provider.unflushed_node_ids() == []
    assert not [r for r in caplog.records if r.getMessage().startswith("exit:")]


class OnceFailingLabelVast(FakeVastClient):
    """The first label write answers a 5xx (Vast's load balancer under load); the next ones succeed."""

    def __init__(self) -> None:
        super().__init__()
        self.label_failures = 1

    def set_label(self, instance_id: int, label: str) -> None:
        if self.label_failures:
            self.label_failures -= 1
            self._record("set_label", instance_id)
            raise ServerError("Vast answered 502", status=502)
        super().set_label(instance_id, label)


def test_close_retries_a_failed_label_write_so_a_new_monitor_sees_the_latest_tags() -> None:
    fake = OnceFailingLabelVast()
    provider = _provider_with_pending_tags(fake, 801)
    provider.close(timeout_s=5.0)
    assert fake.count("set_label") == 2 and provider.unflushed_node_ids() == []
    successor = make_provider(fake, ManualClock())
    assert successor.non_terminated_nodes({}) == ["801"]
    assert successor.node_tags("801")["ray-node-status"] == "up-to-date"


# --- the dead-man switch signals only its own previous copy ----------------------------------------------------------


def _start(args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            **kwargs)  # type: ignore[call-overload]


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def test_a_pidfile_naming_an_unrelated_process_leaves_it_alive(tmp_path: Path) -> None:
    bystander = _start(["sleep", "30"])
    try:
        pidfile = tmp_path / "deadman.pid"
        pidfile.write_text(f"{bystander.pid}\n")
        assert not deadman.is_deadman(bystander.pid)
        deadman._replace_previous(pidfile)
        with pytest.raises(subprocess.TimeoutExpired):
            bystander.wait(0.5)  # still running after the replacement
        assert pidfile.read_text().strip() == str(os.getpid())
    finally:
        _end(bystander)
    assert bystander.returncode == -signal.SIGKILL, "only our own kill ended it"


def test_a_pidfile_of_a_gone_or_bogus_pid_signals_nothing(tmp_path: Path) -> None:
    pidfile = tmp_path / "deadman.pid"
    for text in ("-1", "0", "not a pid", "4194304"):
        pidfile.write_text(text)
        deadman._replace_previous(pidfile)  # os.kill(-1 or 0, ...) would hit whole process groups
        assert pidfile.read_text().strip() == str(os.getpid())


def test_a_previous_dead_man_watch_is_replaced(tmp_path: Path) -> None:
    pidfile = tmp_path / "deadman.pid"
    env = {**os.environ, "CONTAINER_ID": "12345", "CONTAINER_API_KEY": "instance-key",
           "SKYWARD_INSTANCE_TIMEOUT": "600", "SKYWARD_VAST_URL": "http://127.0.0.1:9"}
    # A head on a closed loopback port: the watch probes, fails, and waits out its 600 s without calling the API.
    previous = _start([sys.executable, "-m", "skyward_ray.provider.deadman", "--head", "127.0.0.1:9",
                       "--interval", "0.2", "--pidfile", str(pidfile)], env=env)
    try:
        wait_until(lambda: pidfile.is_file() and pidfile.read_text().strip() == str(previous.pid), timeout_s=30,
                   what="the previous watch recorded its PID")
        assert deadman.is_deadman(previous.pid)
        deadman._replace_previous(pidfile)
        assert previous.wait(10) == 0, "SIGTERM ends a watch cleanly"
        assert pidfile.read_text().strip() == str(os.getpid())
    finally:
        _end(previous)
