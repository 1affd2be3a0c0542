"""The SSH runner reaches Vast's mapped port on every path Ray uses: commands, the initialization-commands override,
rsync, and the remote-shell string; it prefers the direct endpoint and falls back to the proxy. From the head, a node
whose overlay address nobody knows is found on the overlay itself (scan + identification over SSH), with no wait."""

from __future__ import annotations

import socket
import subprocess

import pytest
from support.ssh_runner_fakes import DIRECT, OVERLAY, PROXY, FakeEndpoints, FakeProvider, make_runner, ssh_option

from skyward_ray.emulator.testing import ManualClock
from skyward_ray.provider.command_runner import IDENTIFY, SCAN_EVERY_S, Endpoint, parse_identity, tcp_scan


def test_command_goes_to_the_direct_endpoint_with_its_port() -> None:
    runner, process, _ = make_runner(FakeEndpoints({False: [DIRECT, PROXY]}), {DIRECT, PROXY})
    assert runner.run("uptime", with_output=True) == b"ok"
    cmd = process.commands[-1]
    assert f"root@{DIRECT[0]}" in cmd
    assert ssh_option(cmd, "Port") == str(DIRECT[1])
    assert ssh_option(cmd, "ControlPath") is not None
    assert runner.endpoint == DIRECT


def test_falls_back_to_the_proxy_when_the_direct_port_does_not_answer() -> None:
    runner, process, probed = make_runner(FakeEndpoints({False: [DIRECT, PROXY]}), {PROXY})
    runner.run("uptime", with_output=True)
    assert probed == [DIRECT, PROXY]
    assert f"root@{PROXY[0]}" in process.commands[-1]
    assert ssh_option(process.commands[-1], "Port") == str(PROXY[1])


def test_initialization_commands_path_keeps_port_and_control_path() -> None:
    runner, process, _ = make_runner(FakeEndpoints({False: [DIRECT]}), {DIRECT})
    # What Ray's updater does for initialization_commands: a fresh SSHOptions from the key would drop Port.
    runner.run("echo init", with_output=True, ssh_options_override_ssh_key="/keys/id_ed25519", run_env="host")
    cmd = process.commands[-1]
    assert ssh_option(cmd, "Port") == str(DIRECT[1])
    assert ssh_option(cmd, "ControlPath") is not None
    assert cmd[cmd.index("-i") + 1] == "/keys/id_ed25519"


def test_rsync_carries_the_port_in_its_ssh_command() -> None:
    runner, process, _ = make_runner(FakeEndpoints({False: [DIRECT]}), {DIRECT})
    runner.run_rsync_up("/local/dir/", "~/remote/")
    runner.run_rsync_up("/local/other/", "~/other/")
    # The first rsync makes sure the node has rsync, once; both copies then go over the mapped port.
    ensure = [cmd for cmd in process.commands if any("command -v rsync" in part for part in cmd)]
    assert len(ensure) == 1 and ssh_option(ensure[0], "Port") == str(DIRECT[1])
    cmd = process.commands[-2]
    assert cmd[0] == "rsync"
    rsh = cmd[cmd.index("--rsh") + 1]
    assert f"Port={DIRECT[1]}" in rsh
    assert cmd[-1] == f"root@{DIRECT[0]}:~/remote/"


def test_remote_shell_string_has_the_port_and_key() -> None:
    runner, _, _ = make_runner(FakeEndpoints({False: [PROXY]}), {PROXY})
    assert runner.remote_shell_command_str() == (
        f"ssh -o IdentitiesOnly=yes -i /keys/id_ed25519 -p {PROXY[1]} root@{PROXY[0]}\n"
    )


def test_head_to_worker_uses_the_overlay_endpoint_first() -> None:
    endpoints = FakeEndpoints({True: [OVERLAY, DIRECT], False: [DIRECT]})
    runner, process, _ = make_runner(endpoints, {OVERLAY, DIRECT}, use_internal_ip=True)
    runner.run("uptime", with_output=True)
    assert f"root@{OVERLAY[0]}" in process.commands[-1]
    assert ssh_option(process.commands[-1], "Port") == "22"


def test_nothing_answers_yet_so_each_attempt_looks_again_until_one_does() -> None:
    endpoints = FakeEndpoints({False: [DIRECT, PROXY]})
    reachable: set[Endpoint] = set()
    runner, process, _ = make_runner(endpoints, reachable)
    runner.run("uptime", with_output=True)  # sshd not up: tries the first candidate, stays unpinned
    assert runner.endpoint is None and f"root@{DIRECT[0]}" in process.commands[-1]
    reachable.add(PROXY)  # only the proxy comes up
    runner.run("uptime", with_output=True)
    assert runner.endpoint == PROXY and f"root@{PROXY[0]}" in process.commands[-1]
    calls = endpoints.calls
    runner.run("uptime", with_output=True)  # pinned: no more lookups
    assert endpoints.calls == calls


@pytest.mark.parametrize("key", [None])
def test_remote_shell_string_without_key(key: str | None) -> None:
    runner, _, _ = make_runner(FakeEndpoints({False: [DIRECT]}), {DIRECT}, key=key)
    assert runner.remote_shell_command_str() == f"ssh -o IdentitiesOnly=yes -p {DIRECT[1]} root@{DIRECT[0]}\n"


def test_overlay_address_unknown_to_the_api_is_read_on_the_node_once() -> None:
    endpoints = FakeEndpoints({True: [DIRECT]}, unknown_subnet="10.8.0.0/24")
    runner, process, _ = make_runner(endpoints, {DIRECT}, use_internal_ip=True)
    runner.run("uptime", with_output=True)
    runner.run("uptime", with_output=True)
    assert endpoints.learned == [["10.8.0.3", "127.0.0.1", "172.17.0.5"]]
    reads = [cmd for cmd in process.commands if any("fib_trie" in part for part in cmd)]
    assert len(reads) == 1 and ssh_option(reads[0], "Port") == str(DIRECT[1])


def test_overlay_address_known_means_no_extra_command() -> None:
    runner, process, _ = make_runner(FakeEndpoints({False: [DIRECT]}), {DIRECT})
    runner.run("uptime", with_output=True)
    assert len(process.commands) == 1


def test_a_booting_node_is_polled_every_second_not_every_five(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray waits 5 s between looks at a booting node's address; ours looks every IP_POLL_S (the snapshot is cached)."""
    from skyward_ray.provider import command_runner

    endpoints = FakeEndpoints({False: []})
    runner, _, _ = make_runner(endpoints, {DIRECT})
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            endpoints.by_internal[False] = [DIRECT]  # the node is up after the second look

    monkeypatch.setattr(command_runner.time, "sleep", sleep)
    assert runner._wait_for_ip(deadline=command_runner.time.time() + 60) == DIRECT[0]
    assert sleeps == [command_runner.IP_POLL_S] * 2
    assert command_runner.IP_POLL_S < 5


def test_waiting_for_an_address_stops_when_the_node_is_terminated(monkeypatch: pytest.MonkeyPatch) -> None:
    from skyward_ray.provider import command_runner

    runner, _, _ = make_runner(FakeEndpoints({False: []}), set())
    monkeypatch.setattr(command_runner.time, "sleep", lambda _: None)
    monkeypatch.setattr(FakeProvider, "is_terminated", lambda self, node_id: True)
    assert runner._wait_for_ip(deadline=command_runner.time.time() + 60) is None


# --- finding a node on the overlay (the API does not say where it is) -------------------------------------------------


def test_head_finds_a_worker_on_the_overlay_by_asking_who_answers() -> None:
    """The worker's public port is unreachable from the head; its overlay address is unknown to the API. The runner
    scans the overlay, asks each answering address which instance it is, and pins the one that is this node; the
    other node it met is reported too, so its own runner need not look."""
    search = ["10.8.0.2", "10.8.0.3", "10.8.0.4"]
    endpoints = FakeEndpoints({True: [DIRECT], False: [DIRECT]}, unknown_subnet="10.8.0.0/24", search=search)
    reachable = {("10.8.0.3", 22), ("10.8.0.4", 22)}
    runner, process, probed = make_runner(endpoints, reachable, use_internal_ip=True)
    process.identities = {"10.8.0.3": b"SKYWARD-ID 4243\n10.8.0.3\n127.0.0.1\n",
                          "10.8.0.4": b"Welcome to vast.ai\nSKYWARD-ID 4242\n10.8.0.4\n172.17.0.5\n"}
    assert runner.run("uptime", with_output=True) == b"ok"
    assert runner.endpoint == ("10.8.0.4", 22)
    assert not any(f"root@{DIRECT[0]}" in cmd for cmd in process.commands)  # never the public endpoint
    assert ssh_option(process.commands[-1], "Port") == "22" and "root@10.8.0.4" in process.commands[-1]
    assert endpoints.learned_by == {"4243": ["10.8.0.3", "127.0.0.1"], "4242": ["10.8.0.4", "172.17.0.5"]}
    identify = [cmd for cmd in process.commands if IDENTIFY in cmd]
    assert [ssh_option(cmd, "Port") for cmd in identify] == ["22", "22"]
    assert all(ssh_option(cmd, "BatchMode") == "yes" for cmd in identify)
    assert not any("fib_trie" in part for cmd in process.commands if IDENTIFY not in cmd for part in cmd)
    assert probed[:3] == [("10.8.0.2", 22), ("10.8.0.3", 22), ("10.8.0.4", 22)]


def test_a_node_not_on_the_overlay_yet_is_waited_for_without_a_public_fallback() -> None:
    clock = ManualClock(100.0)
    endpoints = FakeEndpoints({True: [DIRECT]}, unknown_subnet="10.8.0.0/24", search=["10.8.0.2", "10.8.0.3"])
    reachable: set[Endpoint] = set()
    runner, process, probed = make_runner(endpoints, reachable, use_internal_ip=True, clock=clock)
    assert runner._get_node_ip() is None  # Ray's wait polls again; no public endpoint it cannot reach
    scanned = len(probed)
    clock.now += SCAN_EVERY_S / 2
    assert runner._get_node_ip() is None and len(probed) == scanned + 1  # no second scan yet (the DIRECT probe)
    reachable.add(("10.8.0.3", 22))
    process.identities["10.8.0.3"] = b"SKYWARD-ID 4242\n10.8.0.3\n"
    clock.now += SCAN_EVERY_S
    assert runner._get_node_ip() == "10.8.0.3" and runner.endpoint == ("10.8.0.3", 22)


def test_a_reachable_public_endpoint_still_serves_when_the_overlay_search_finds_nothing() -> None:
    endpoints = FakeEndpoints({True: [DIRECT]}, unknown_subnet="10.8.0.0/24", search=["10.8.0.2"])
    runner, _, _ = make_runner(endpoints, {DIRECT}, use_internal_ip=True)
    assert runner._get_node_ip() == DIRECT[0] and runner.endpoint == DIRECT


def test_identify_prints_the_container_id_and_addresses() -> None:
    out = subprocess.run(["sh", "-c", IDENTIFY], capture_output=True, text=True, timeout=10,
                         env={"CONTAINER_ID": "31337", "PATH": "/usr/bin:/bin"}).stdout
    identity = parse_identity(out)
    assert identity is not None and identity[0] == "31337" and "127.0.0.1" in identity[1]
    assert parse_identity("SKYWARD-ID \n127.0.0.1\n") is None  # the node did not say who it is


def test_tcp_scan_reports_only_what_accepts() -> None:
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
        open_ep = listening.getsockname()
        shut_ep = closed.getsockname()
        assert tcp_scan([shut_ep, open_ep, ("192.0.2.1", 22)], timeout_s=2.0) == [open_ep]
