"""``ray dashboard``'s SSH call (a port forward, no command) runs outside Ray's shared SSH connection, so the forward
ends with the command; every other call keeps the shared connection."""

from __future__ import annotations

from test_provider_command_runner import DIRECT, FakeEndpoints, _option, _runner


def test_a_forward_without_a_command_has_its_own_connection_and_ends_with_it() -> None:
    runner, process, _ = _runner(FakeEndpoints({False: [DIRECT]}), {DIRECT})
    runner.run(None, port_forward=[(18265, 8265)])
    forward = process.commands[-1]
    assert forward[forward.index("-L") + 1] == "18265:localhost:8265"
    assert _option(forward, "ControlMaster") == "no" and _option(forward, "ControlPath") == "none"
    assert _option(forward, "ControlPersist") is None
    assert _option(forward, "Port") == str(DIRECT[1])

    runner.run("uptime")  # everything else still shares Ray's connection
    shared = process.commands[-1]
    assert _option(shared, "ControlMaster") == "auto" and _option(shared, "ControlPersist") == "10s"
    assert _option(shared, "ControlPath") not in (None, "none")
