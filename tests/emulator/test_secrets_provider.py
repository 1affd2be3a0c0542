"""The account API key never leaves the laptop and the head's key file, searched everywhere.

One provider lifecycle against the emulator, driven in Ray's call patterns (``ray up`` for the head, the head's own
provider launching workers, tag writes, an outbid, a failed host, a refused launch, ``ray down``), with every logger
at DEBUG (httpx and httpcore included). Then the key is searched for in: every log record (message, arguments,
traceback), every label the market ever saw (live and ledger), every onstart script and instance environment (the
wire rows and what the host runtime was asked to start), the config ``ray up`` uploads to the head, the reprs of
everything we hold, and the text of every exception the run produced. The emulator's own count of create requests
that carried an account key must stay 0.

The instance-scoped ``CONTAINER_API_KEY`` each instance gets may stop or destroy its own instance and nothing else
(403 for everything else), and the dead-man switch uses exactly that key: tested over HTTP with our client and with
``deadman.py`` itself (its watch loop, and its ``main`` in a process with an instance's environment).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import (
    TAG_RAY_NODE_STATUS,
)
from support.ray_launch_tags import head_tags, request_id, worker_tags

from skyward_ray.emulator.server import EmulatorServer
from skyward_ray.emulator.testing import RecordingRuntime, running_emulator, wait_until
from skyward_ray.provider import deadman
from skyward_ray.provider.bootstrap import REMOTE_KEY_PATH, bootstrap_config
from skyward_ray.provider.node_provider import VastNodeProvider
from skyward_ray.provider.tags import is_cluster_label
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import AuthError

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "secrets"
# Long and distinctive, so a leak anywhere is a plain substring match; also its halves, for a key split in two.
ACCOUNT_KEY = "acct-5ecret-7e1f0c2a9b8d4e6f-a1b2c3d4e5f60718293a4b5c6d7e8f90-NEVER-LEAK"
HEAD_CONFIG = {"accelerator": "RTX 4090"}
WORKER_CONFIG = {"accelerator": "RTX 4090", "allocation": "spot", "env": {"MY_SETTING": "on"},
                 "onstart": "echo worker-onstart"}
NODE_TYPES = {
    "head": {"kind": "head", "node_config": HEAD_CONFIG},
    "gpu": {"kind": "worker", "min_workers": 0, "max_workers": 3, "node_config": WORKER_CONFIG},
}


def leaks(text: str, secret: str = ACCOUNT_KEY) -> bool:
    return secret in text or secret[: len(secret) // 2] in text or secret[len(secret) // 2 :] in text


@pytest.fixture
def runtime() -> RecordingRuntime:
    return RecordingRuntime()


@pytest.fixture
def emulator(runtime: RecordingRuntime) -> Iterator[EmulatorServer]:
    with running_emulator(seed=3, boot_delay_s=0.2, api_key=ACCOUNT_KEY, runtime=runtime) as emu:
        yield emu


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "head" / "vast_api_key"
    path.parent.mkdir()
    path.write_text(ACCOUNT_KEY + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def providers(emulator: EmulatorServer, key_file: Path) -> Iterator[list[VastNodeProvider]]:
    made: list[VastNodeProvider] = []
    yield made
    for provider in made:
        provider.close()


def new_provider(emulator: EmulatorServer, key_file: Path, made: list[VastNodeProvider],
                 **overrides: Any) -> VastNodeProvider:
    """A provider that finds the key the way the head's does: through ``api_key_file`` (the 0600 mount)."""
    config = {"type": "external", "module": "skyward_ray.provider.VastNodeProvider", "api_url": emulator.url,
              "api_key_file": str(key_file), "cache_ttl_s": 0.2, "tag_flush_delay_s": 0.05, "ssh_proxy": False,
              "min_reliability": 0.9, "node_types": NODE_TYPES, "loading_timeout_s": 1.5, **overrides}
    provider = VastNodeProvider(config, CLUSTER)
    made.append(provider)
    return provider


def state(emulator: EmulatorServer) -> dict[str, Any]:
    return httpx.get(f"{emulator.admin_url}/state/", timeout=10).json()


def ours(emulator: EmulatorServer) -> list[dict[str, Any]]:
    return [i for i in state(emulator)["instances"] if is_cluster_label(i.get("label"), CLUSTER)]


def reconcile(provider: VastNodeProvider) -> dict[str, bool]:
    return {n: provider.is_running(n) for n in provider.non_terminated_nodes({}) if provider.node_tags(n)}


def all_log_text(records: list[logging.LogRecord]) -> str:
    """Everything a handler could print: formatted message, raw args and any traceback."""
    formatter = logging.Formatter()
    parts = []
    for record in records:
        parts.append(formatter.format(record))
        parts.append(repr(record.args))
        parts.append(repr(record.msg))
    return "\n".join(parts)


def test_the_account_key_is_nowhere_after_a_whole_lifecycle(
    emulator: EmulatorServer, runtime: RecordingRuntime, key_file: Path, providers: list[VastNodeProvider],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: ours, httpx, httpcore, the emulator, Ray
    errors: list[BaseException] = []

    # ray up: the laptop's provider creates the head and writes its status tags.
    laptop = new_provider(emulator, key_file, providers)
    laptop.create_node(HEAD_CONFIG, head_tags(CLUSTER), 1)
    (head,) = wait_until(lambda: laptop.non_terminated_nodes(head_tags(CLUSTER)), timeout_s=10, what="the head listed")
    wait_until(lambda: laptop.is_running(head), timeout_s=10, what="the head running")
    for status in ("waiting-for-ssh", "syncing-files", "setting-up", "up-to-date"):
        laptop.set_node_tags(head, {TAG_RAY_NODE_STATUS: status})
    assert laptop.flush_tags()

    # The head's monitor: workers from two launcher threads, their installs, one outbid, one failed host.
    monitor = new_provider(emulator, key_file, providers)
    created: list[str] = []

    def launch(index: int) -> None:
        try:
            created.extend(monitor.create_node_with_resources_and_labels(
                WORKER_CONFIG, worker_tags(CLUSTER, request_id(index)), 1, {"GPU": 1}, {}) or {})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(created) == 3, errors
    wait_until(lambda: sum(reconcile(monitor).values()) == 4, timeout_s=15, what="head and 3 workers running")
    for worker in created:
        monitor.set_node_tags(worker, {TAG_RAY_NODE_STATUS: "up-to-date"})
    assert monitor.flush_tags()
    outbid, failed, kept = created
    httpx.post(f"{emulator.admin_url}/instances/{outbid}/outbid/", json={}, timeout=10).raise_for_status()
    httpx.post(f"{emulator.admin_url}/instances/{failed}/fail/", json={"kind": "exited"},
               timeout=10).raise_for_status()
    wait_until(lambda: set(reconcile(monitor)) == {head, kept}, timeout_s=15, what="outbid and failed workers gone")

    # A launch that cannot be placed, and one whose node_config would put the key into the instance's env.
    for bad_config in ({"accelerator": "H200", "gpus": 64}, {**WORKER_CONFIG, "env": {"TOKEN": ACCOUNT_KEY}}):
        try:
            monitor.create_node_with_resources_and_labels(bad_config, worker_tags(CLUSTER, request_id(9)), 1,
                                                          {"GPU": 1}, {})
        except NodeLaunchException as exc:
            errors.append(exc)
    assert len(errors) == 2 and all(isinstance(e, NodeLaunchException) for e in errors)
    assert "account API key" in errors[1].description  # refused before anything was sent
    # An API error with the key in play: a wrong key's 401 (the key text is the client's secret, and scrubbed).
    with VastClient(api_key=ACCOUNT_KEY + "x", base_url=emulator.url, retry_deadline_s=0) as wrong:
        with pytest.raises(AuthError) as caught:
            wrong.list_instances()
        errors.append(caught.value)

    # ray down.
    down = new_provider(emulator, key_file, providers)
    for _ in range(20):
        remaining = down.non_terminated_nodes({})
        if not remaining:
            break
        down.terminate_nodes(remaining)
    down.cleanup_cluster_resources()
    dump = state(emulator)
    assert dump["instances"] == [] and dump["overlays"] == []

    # --- the search ------------------------------------------------------------------------------------------------
    assert dump["account_key_leaks"] == 0
    assert not leaks(json.dumps(dump)), "the emulator's state (labels, ledger, env, onstart) carries the key"
    assert len(dump["ledger"]) >= 4
    assert runtime.specs, "the runtime started no instance"
    for spec in runtime.specs:
        assert not leaks(json.dumps(spec.env)) and not leaks(spec.onstart or "")
        assert spec.env["CONTAINER_API_KEY"] != ACCOUNT_KEY  # instances get their own scoped key
    worker_env = next(s.env for s in runtime.specs if s.env.get("MY_SETTING") == "on")
    assert set(worker_env) >= {"CONTAINER_ID", "CONTAINER_API_KEY", "SKYWARD_CLUSTER", "SKYWARD_VAST_URL",
                               "SKYWARD_INSTANCE_TIMEOUT"}
    log_text = all_log_text(caplog.records)
    assert any(r.levelno == logging.DEBUG for r in caplog.records) and "HTTP Request" in log_text
    assert not leaks(log_text), "a log record carries the key"
    for exc in errors:
        assert not leaks(f"{exc}\n{exc!r}\n{getattr(exc, 'description', '')}\n{exc.__cause__!r}")
    for provider in providers:
        assert not leaks(repr(provider)) and not leaks(repr(provider.client)) and not leaks(repr(provider.config))
        assert not leaks(str(provider.config.model_dump()))


def test_ray_up_uploads_no_key_to_the_head_and_mounts_it_0600(
    emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bootstrap_config (against the emulator) then prepare_for_head_node: the config JSON Ray uploads as
    ``~/ray_bootstrap_config.yaml`` holds no key; the key travels only as a 0600 file mount to the head."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VAST_API_KEY", ACCOUNT_KEY)
    monkeypatch.setenv("VAST_URL", emulator.url)
    os.umask(0o022)
    config = yaml.safe_load((REPO / "cluster_configs" / "vast-multinode.yaml").read_text())
    config["auth"] = {"ssh_user": "root"}  # bootstrap generates the key pair (ssh-keygen)
    bootstrapped = bootstrap_config(prepare_config(config))
    assert not leaks(json.dumps(bootstrapped, default=str))
    staged = Path(bootstrapped["file_mounts"][REMOTE_KEY_PATH])
    assert staged.read_text().strip() == ACCOUNT_KEY
    assert stat.S_IMODE(staged.stat().st_mode) == 0o600 and stat.S_IMODE(staged.parent.stat().st_mode) == 0o700

    # What Ray's _set_up_config_for_head_node does with it (commands.py 3.2 step 4), then our hook.
    head_config = json.loads(json.dumps(bootstrapped))
    head_config["file_mounts"] = {remote: remote for remote in head_config["file_mounts"]}
    provider = VastNodeProvider(bootstrapped["provider"], bootstrapped["cluster_name"], start_threads=False)
    uploaded = json.dumps(provider.prepare_for_head_node(head_config))
    assert not leaks(uploaded)
    assert json.loads(uploaded)["provider"]["api_key_file"] == REMOTE_KEY_PATH
    assert REMOTE_KEY_PATH not in json.loads(uploaded)["file_mounts"]  # never synced on to workers
    # The SSH key the account got is the public half only.
    keys = httpx.get(f"{emulator.url}/api/v0/ssh/", headers={"Authorization": f"Bearer {ACCOUNT_KEY}"},
                     timeout=10).json()
    assert keys and all("PRIVATE" not in k["key"] for k in keys)


# --- the instance-scoped key and the dead-man switch ---------------------------------------------------------------


@pytest.fixture
def two_instances(emulator: EmulatorServer, runtime: RecordingRuntime) -> tuple[int, int, str]:
    """Two running instances of the account; returns their ids and the first one's CONTAINER_API_KEY, taken from
    the environment its host runtime started it with (as the dead-man switch reads it on the node)."""
    with VastClient(api_key=ACCOUNT_KEY, base_url=emulator.url) as client:
        offers = client.search_offers({"gpu_name": {"eq": "RTX 4090"}, "rentable": {"eq": True},
                                       "num_gpus": {"eq": 1}, "limit": 2, "order": [["dph_total", "asc"]]})
        ids = [client.create_instance(o.id, image="vastai/base", disk_gb=10, label=f"scoped-{n}").new_contract
               for n, o in enumerate(offers[:2])]
        wait_until(lambda: all((i := client.get_instance(n)) and i.ready for n in ids), timeout_s=10,
                   what="both instances running")
    mine, other = ids
    spec = next(s for s in runtime.specs if s.instance_id == mine)
    return mine, other, spec.env["CONTAINER_API_KEY"]


def test_the_scoped_key_may_only_stop_or_destroy_its_own_instance(
    emulator: EmulatorServer, two_instances: tuple[int, int, str],
) -> None:
    mine, other, scoped_key = two_instances
    with VastClient(api_key=scoped_key, base_url=emulator.url, retry_deadline_s=0) as scoped:
        refused = {
            "destroy another": lambda: scoped.destroy_instance(other),
            "stop another": lambda: scoped.stop_instance(other),
            "read another": lambda: scoped.get_instance(other),
            "read itself": lambda: scoped.get_instance(mine),
            "list": scoped.list_instances,
            "label itself": lambda: scoped.set_label(mine, "x"),
            "start itself": lambda: scoped.start_instance(mine),
            "rebid itself": lambda: scoped.change_bid(mine, 1.0),
            "bulk destroy": lambda: scoped.destroy_instances([mine, other]),
            "overlays": scoped.list_overlays,
            "create overlay": lambda: scoped.create_overlay(1, "x"),
            "account": scoped.current_user,
            "ssh keys": scoped.list_ssh_keys,
            "rent": lambda: scoped.create_instance(1, image="i", disk_gb=1, label="l"),
        }
        for what, call in refused.items():
            with pytest.raises(AuthError) as caught:
                call()
            assert caught.value.status == 403, what
            assert scoped_key not in str(caught.value) and scoped_key not in repr(caught.value), what
        scoped.stop_instance(mine)
        assert scoped.destroy_instance(mine) is True
    remaining = {i["id"] for i in state(emulator)["instances"]}
    assert remaining == {other}, "only the key's own instance may go"


def closed_port() -> int:
    """A loopback port nothing listens on (the head's GCS port, after the head died)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_deadman_watch_destroys_its_own_instance_when_the_head_is_gone(
    emulator: EmulatorServer, two_instances: tuple[int, int, str], caplog: pytest.LogCaptureFixture,
) -> None:
    mine, other, scoped_key = two_instances
    head = ("127.0.0.1", closed_port())
    fired = deadman.watch(lambda: deadman.reachable(head, timeout_s=0.5), 0.5,
                          lambda: deadman.destroy_self(emulator.url, mine, scoped_key), interval_s=0.1)
    assert fired
    assert {i["id"] for i in state(emulator)["instances"]} == {other}
    # The same switch aimed at another instance cannot take it down, and says so without the key.
    assert deadman.destroy_self(emulator.url, other, scoped_key) is False
    assert {i["id"] for i in state(emulator)["instances"]} == {other}
    assert scoped_key not in caplog.text and ACCOUNT_KEY not in caplog.text


def test_deadman_process_with_an_instance_environment_destroys_it(
    emulator: EmulatorServer, two_instances: tuple[int, int, str], tmp_path: Path,
) -> None:
    """``python -m skyward_ray.provider.deadman`` as the worker start command runs it, with the environment Vast
    gives the container (CONTAINER_ID, CONTAINER_API_KEY) plus ours (SKYWARD_VAST_URL, SKYWARD_INSTANCE_TIMEOUT)."""
    mine, other, scoped_key = two_instances
    env = {**os.environ, "CONTAINER_ID": str(mine), "CONTAINER_API_KEY": scoped_key,
           "SKYWARD_VAST_URL": emulator.url, "SKYWARD_INSTANCE_TIMEOUT": "1"}
    env.pop("VAST_API_KEY", None)
    # The pidfile is redirected: the real one (/tmp/skyward-deadman.pid) names a PID to SIGTERM.
    program = ("import sys; from pathlib import Path; import skyward_ray.provider.deadman as d; "
               f"d.PIDFILE = Path({str(tmp_path / 'deadman.pid')!r}); "
               f"sys.exit(d.main(['--head', '127.0.0.1:{closed_port()}', '--interval', '0.2']))")
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert {i["id"] for i in state(emulator)["instances"]} == {other}
    assert scoped_key not in result.stdout + result.stderr
    assert "destroying this instance" in result.stderr


def test_deadman_without_its_scoped_key_does_nothing(tmp_path: Path) -> None:
    """No CONTAINER_API_KEY (never the account key as a fallback): the switch stays off and says why."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONTAINER_API_KEY", "VAST_API_KEY")}
    env.update({"CONTAINER_ID": "123", "SKYWARD_VAST_URL": "http://127.0.0.1:9", "SKYWARD_INSTANCE_TIMEOUT": "1",
                "VAST_API_KEY": ACCOUNT_KEY})
    program = ("import sys; from pathlib import Path; import skyward_ray.provider.deadman as d; "
               f"d.PIDFILE = Path({str(tmp_path / 'deadman.pid')!r}); "
               "sys.exit(d.main(['--head', '127.0.0.1:9', '--interval', '0.1']))")
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "CONTAINER_API_KEY" in result.stderr and ACCOUNT_KEY not in result.stderr
