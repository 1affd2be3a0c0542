"""The node-side helpers: the overlay address finder, the dead-man switch, the remote install decision and the
default start commands."""

from __future__ import annotations

import ipaddress
import shlex
from pathlib import Path

import pytest

from skyward_ray.emulator.testing import ManualClock
from skyward_ray.provider import deadman
from skyward_ray.provider.overlay_ip import (
    container_env,
    export_lines,
    find_overlay_address,
    wait_for_overlay_address,
)
from skyward_ray.provider.remote_install import SHIP_MARKER, already_installed, tree_hash
from skyward_ray.provider.start_commands import (
    HEAD_START_RAY_COMMANDS,
    WORKER_START_RAY_COMMANDS,
    fill_default_start_commands,
)

ADDRESSES = [("lo", ipaddress.IPv4Interface("127.0.0.1/8")), ("eth1", ipaddress.IPv4Interface("172.17.0.5/16")),
             ("eth0", ipaddress.IPv4Interface("10.8.0.3/24"))]


# --- overlay_ip -----------------------------------------------------------------------------------------------------


def test_overlay_address_is_the_one_inside_the_subnet() -> None:
    assert find_overlay_address("10.8.0.0/24", ADDRESSES) == ("10.8.0.3", "eth0")
    assert find_overlay_address("10.9.0.0/24", ADDRESSES) is None


def test_waits_for_the_overlay_interface_to_come_up() -> None:
    reads = iter([ADDRESSES[:2], ADDRESSES[:2], ADDRESSES])
    clock = iter(range(100))
    found = wait_for_overlay_address("10.8.0.0/24", 10, read=lambda: next(reads), sleep=lambda s: None,
                                     clock=lambda: float(next(clock)))
    assert found == ("10.8.0.3", "eth0")


def test_gives_up_after_the_wait() -> None:
    ticks = iter(range(100))
    assert wait_for_overlay_address("10.8.0.0/24", 3, read=lambda: ADDRESSES[:2], sleep=lambda s: None,
                                    clock=lambda: float(next(ticks))) is None


def test_export_lines_set_node_ip_and_interfaces_but_keep_the_users_choice() -> None:
    lines = export_lines("10.8.0.3", "eth0", environ={"NCCL_SOCKET_IFNAME": "ib0"})
    assert "export SKYWARD_NODE_IP=10.8.0.3" in lines
    assert "export GLOO_SOCKET_IFNAME=eth0" in lines
    assert not any(line.startswith("export NCCL_SOCKET_IFNAME") for line in lines)


def test_container_env_falls_back_to_pid_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    environ = tmp_path / "environ"
    environ.write_bytes(b"PATH=/bin\0SKYWARD_OVERLAY_SUBNET=10.8.0.0/24\0EMPTY=\0")
    monkeypatch.delenv("SKYWARD_OVERLAY_SUBNET", raising=False)
    assert container_env("SKYWARD_OVERLAY_SUBNET", proc_environ=str(environ)) == "10.8.0.0/24"
    assert container_env("EMPTY", proc_environ=str(environ)) is None
    monkeypatch.setenv("SKYWARD_OVERLAY_SUBNET", "10.1.0.0/24")
    assert container_env("SKYWARD_OVERLAY_SUBNET", proc_environ=str(environ)) == "10.1.0.0/24"


# --- start commands -------------------------------------------------------------------------------------------------


def test_start_commands_put_ray_on_the_overlay_and_fail_without_it() -> None:
    for command in (*HEAD_START_RAY_COMMANDS, WORKER_START_RAY_COMMANDS[0]):
        shlex.split(command)  # well-formed shell words
        assert "python -m skyward_ray.provider.overlay_ip --export)\" || exit 1" in command
        assert "--node-ip-address=$SKYWARD_NODE_IP" in command
        assert "--resources" not in command  # Ray passes them in RAY_OVERRIDE_RESOURCES
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in HEAD_START_RAY_COMMANDS[0]
    assert "--address=$RAY_HEAD_IP:6379" in WORKER_START_RAY_COMMANDS[0]
    assert "skyward_ray.provider.deadman" in WORKER_START_RAY_COMMANDS[1]
    assert not any("deadman" in c for c in HEAD_START_RAY_COMMANDS)  # the head holds the account key: no switch


def test_fill_default_start_commands_only_fills_missing_keys() -> None:
    config = {"head_start_ray_commands": ["mine"]}
    assert fill_default_start_commands(config) == ["worker_start_ray_commands"]
    assert config["head_start_ray_commands"] == ["mine"]


# --- deadman --------------------------------------------------------------------------------------------------------


def test_dead_man_switch_fires_after_the_timeout_without_the_head() -> None:
    ticks = ManualClock(start=0.0)
    answers = iter([True, True] + [False] * 100)
    fired_at: list[float] = []
    fired = deadman.watch(lambda: next(answers), 60, lambda: fired_at.append(ticks.now) or True, interval_s=10,
                          clock=ticks, sleep=ticks.sleep)
    assert fired and fired_at == [70.0]  # last success at t=10, then 60 s of silence


def test_dead_man_switch_keeps_quiet_while_the_head_answers_now_and_then() -> None:
    ticks = ManualClock(start=0.0)
    pattern = iter(([False] * 4 + [True]) * 20)
    stop_after = 100

    def stop() -> bool:
        return ticks.now >= stop_after * 10

    fired = deadman.watch(lambda: next(pattern), 60, lambda: True, interval_s=10, clock=ticks,
                          sleep=ticks.sleep, should_stop=stop)
    assert not fired


def test_dead_man_switch_retries_the_self_destroy_until_it_succeeds() -> None:
    ticks = ManualClock(start=0.0)
    results = iter([False, False, True])
    calls: list[float] = []

    def destroy() -> bool:
        calls.append(ticks.now)
        return next(results)

    assert deadman.watch(lambda: False, 30, destroy, interval_s=10, clock=ticks, sleep=ticks.sleep)
    assert len(calls) == 3


def test_dead_man_switch_is_off_without_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYWARD_INSTANCE_TIMEOUT", "0")
    assert deadman.main(["--head", "10.8.0.1:6379"]) == 0


def test_dead_man_switch_needs_the_instance_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYWARD_INSTANCE_TIMEOUT", "300")
    monkeypatch.delenv("CONTAINER_API_KEY", raising=False)
    monkeypatch.setattr(deadman, "container_env", lambda name: {"SKYWARD_INSTANCE_TIMEOUT": "300"}.get(name))
    assert deadman.main(["--head", "10.8.0.1:6379"]) == 1


@pytest.mark.parametrize("text", ["10.8.0.1", ":6379", "host:port"])
def test_head_address_must_be_host_and_port(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        deadman.parse_address(text)


# --- remote install -------------------------------------------------------------------------------------------------


def _package(root: Path, content: str) -> Path:
    package = root / "skyward_ray"
    (package / "provider").mkdir(parents=True)
    (package / "__init__.py").write_text(content)
    (package / "provider" / "x.py").write_text("x = 1\n")
    (package / "provider" / "__pycache__").mkdir()
    (package / "provider" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0cache")
    return package


def test_tree_hash_covers_sources_not_caches(tmp_path: Path) -> None:
    first = _package(tmp_path / "a", "__version__ = '1'\n")
    second = _package(tmp_path / "b", "__version__ = '1'\n")
    (second / "provider" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"other cache")
    assert tree_hash(first) == tree_hash(second)
    (second / "provider" / "x.py").write_text("x = 2\n")
    assert tree_hash(first) != tree_hash(second)


def test_install_is_skipped_for_the_same_code_or_a_dev_install_of_the_same_version(tmp_path: Path) -> None:
    shipped = _package(tmp_path / "ship", "__version__ = '0.1.0'\n")
    (shipped.parent / SHIP_MARKER).write_text("x")
    digest = tree_hash(shipped)
    same = dict(want_hash=digest, want_version="0.1.0", want_ray="2.60.0")
    assert already_installed(shipped, "0.1.0", "2.60.0", **same)  # the same code, already there
    dev = _package(tmp_path / "dev", "__version__ = '0.1.0'  # edited\n")
    assert "development install" in (already_installed(dev, "0.1.0", "2.60.0", **same) or "")
    assert already_installed(dev, "0.1.0", "2.59.0", **same) is None  # another Ray: install
    assert already_installed(None, None, "2.60.0", **same) is None  # nothing there: install
    old_ship = _package(tmp_path / "old", "__version__ = '0.1.0'  # older build\n")
    (old_ship.parent / SHIP_MARKER).write_text("x")
    assert already_installed(old_ship, "0.1.0", "2.60.0", **same) is None  # an older shipped copy: replace it


# --- lists spaced across processes ------------------------------------------------------------------------------------


def test_list_stamp_spaces_lists_of_every_process_with_one_identity(tmp_path: Path) -> None:
    from skyward_ray.provider.list_stamp import ListStamp

    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    def stamp(identity: str) -> ListStamp:  # a new object per call: as a new process would make it
        return ListStamp(identity, 1.5, directory=tmp_path, clock=lambda: now[0], sleep=sleep)

    assert stamp("https://vast#abc").wait_turn() == 0.0
    now[0] += 0.4
    assert stamp("https://vast#abc").wait_turn() == pytest.approx(1.1)  # the next process waits for the rest
    assert stamp("https://vast#other").wait_turn() == 0.0  # another key: its own book
    now[0] += 5
    assert stamp("https://vast#abc").wait_turn() == 0.0
    assert slept == [pytest.approx(1.1)]
    assert all("abc" not in path.name for path in tmp_path.iterdir()), "the file name is a hash"


def test_list_stamp_is_best_effort(tmp_path: Path) -> None:
    from skyward_ray.provider.list_stamp import ListStamp

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    assert ListStamp("x", 1.5, directory=blocker, sleep=lambda _: None).wait_turn() == 0.0
