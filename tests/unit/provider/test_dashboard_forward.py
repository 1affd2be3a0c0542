"""``ray dashboard``'s SSH call (a port forward, no command) runs outside Ray's shared SSH connection, so the forward
ends with the command; every other call keeps the shared connection."""

from __future__ import annotations

from support.ssh_runner_fakes import DIRECT, FakeEndpoints, make_runner, ssh_option


def test_a_forward_without_a_command_has_its_own_connection_and_ends_with_it() -> None:
    runner, process, _ = make_runner(FakeEndpoints({False: [DIRECT]}), {DIRECT})
    runner.run(None, port_forward=[(18265, 8265)])
    forward = process.commands[-1]
    assert forward[forward.index("-L") + 1] == "18265:localhost:8265"
    assert ssh_option(forward, "ControlMaster") == "no" and ssh_option(forward, "ControlPath") == "none"
    assert ssh_option(forward, "ControlPersist") is None
    assert ssh_option(forward, "Port") == str(DIRECT[1])

    runner.run("uptime")  # everything else still shares Ray's connection
    shared = process.commands[-1]
    assert ssh_option(shared, "ControlMaster") == "auto" and ssh_option(shared, "ControlPersist") == "10s"
    assert ssh_option(shared, "ControlPath") not in (None, "none")
