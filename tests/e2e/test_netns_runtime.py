"""The netns host runtime on this machine: instances are namespaces with sshd, reached as a Vast client reaches them.

Every check goes through the interfaces users meet: SSH to ``public_ip:<host port of 22/tcp>``, TCP between
instances, the kernel's list of namespaces, links and processes. Runtimes come from ``make_netns_runtime`` (see
conftest), which fails the test if closing leaves anything behind.
"""

from __future__ import annotations

import gc
import shlex
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from skyward_ray.emulator.netns import NetnsRuntime, clean_leftovers
from skyward_ray.emulator.runtime import InstanceSpec, RuntimeFailure
from skyward_ray.errors import ConfigError, SkywardError

if TYPE_CHECKING:
    from support.netns_host import NetnsKit, SshKey

pytestmark = pytest.mark.timeout(180)

VENV_BIN = str(Path(sys.prefix) / "bin")
# Ray's login form (SSHCommandRunner): a login, interactive bash that sources ~/.bashrc itself.
RAY_LOGIN = "bash --login -c -i {}"


def make_spec(instance_id: int, key: SshKey, ssh_port: int = 41022, extra_ports: dict[str, int] | None = None,
              onstart: str | None = None) -> InstanceSpec:
    port_map = {"22/tcp": ssh_port, **(extra_ports or {})}
    env = {"CONTAINER_ID": str(instance_id), "CONTAINER_API_KEY": f"instance-key-{instance_id}",
           "VAST_TCP_PORT_22": str(ssh_port), "USER_VAR": "two words 'quoted' $NOT_EXPANDED",
           "-p 8265:8265": "1"}  # a Docker flag in Vast's env dict: not a variable
    return InstanceSpec(instance_id=instance_id, machine_id=1, hostname=f"C.{instance_id}", num_gpus=1,
                        port_map=port_map, env=env, authorized_keys=(key.public,), onstart=onstart)


def tcp_probe_script(host: str, port: int, timeout_s: float) -> str:
    """A command that, run inside an instance, prints OK [first bytes] or FAIL <error> for one TCP connection."""
    code = (f"import socket\ntry:\n  c = socket.create_connection(({host!r}, {port}), timeout={timeout_s})\n"
            "except OSError as e:\n  print('FAIL', repr(e))\nelse:\n  c.settimeout(2)\n"
            "  try:\n    print('OK', c.recv(64))\n  except OSError:\n    print('OK (silent)')\n")
    return f"python -c {shlex.quote(code)}"


def serve_once_script(port: int, reply: str) -> str:
    """A command that starts, detached inside the instance, a TCP server answering ``reply`` on 0.0.0.0:port."""
    code = (f"import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {port})); s.listen()\n"
            f"while True:\n  c, _ = s.accept(); c.sendall({reply.encode()!r}); c.close()\n")
    return f"setsid -f python -c {shlex.quote(code)} >/dev/null 2>&1 </dev/null"


def wait_for_tcp(host: str, port: int, timeout_s: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1) as conn:
                conn.settimeout(5)
                return conn.recv(64)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_pair(runtime: NetnsRuntime, key: SshKey, **kwargs: object) -> list[tuple[str, int]]:
    """Start instances 1 and 2 concurrently (the market calls from several threads); return their SSH endpoints."""
    specs = [make_spec(1, key, 41022, **kwargs), make_spec(2, key, 42022, **kwargs)]  # type: ignore[arg-type]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(runtime.start, specs))
    return [(runtime.public_ip(s.instance_id, "198.51.100.7"), s.port_map["22/tcp"]) for s in specs]


# ---------------------------------------------------------------------------------------------------------------


def test_login_environment_hostname_and_image_stand_in(netns_runtime: NetnsRuntime, ssh_key: SshKey,
                                                       monkeypatch: pytest.MonkeyPatch, netns_kit: NetnsKit) -> None:
    ssh = netns_kit.ssh
    monkeypatch.setenv("VAST_API_KEY", "account-key-must-not-leak")  # the emulator's own env stays outside
    began = time.monotonic()
    endpoints = start_pair(netns_runtime, ssh_key)
    print(f"\n2 instances ready (concurrently) in {time.monotonic() - began:.2f} s")
    assert [ip for ip, _ in endpoints] == sorted({ip for ip, _ in endpoints})  # distinct addresses
    assert all(ip.startswith(netns_runtime.api_bind_host.rsplit(".", 2)[0]) for ip, _ in endpoints)
    check = ('echo "$(hostname)|$CONTAINER_ID|$CONTAINER_API_KEY|$VAST_TCP_PORT_22|$USER_VAR|${PATH%%:*}|'
             '$(command -v ray)|$VAST_API_KEY"')
    imports = 'python -c "import skyward_ray, sys; print(sys.prefix)"'
    for number, (ip, port) in enumerate(endpoints, start=1):
        expected = (f"C.{number}|{number}|instance-key-{number}|{port}|two words 'quoted' $NOT_EXPANDED|"
                    f"{VENV_BIN}|{VENV_BIN}/ray|")
        began = time.monotonic()
        assert ssh(ip, port, "true", ssh_key).returncode == 0
        print(f"ssh round trip to {ip}:{port}: {time.monotonic() - began:.3f} s")
        plain = ssh(ip, port, check, ssh_key)
        assert plain.returncode == 0, plain.stderr
        assert plain.stdout.splitlines() == [expected]
        login = ssh(ip, port, RAY_LOGIN.format(shlex.quote(f"source ~/.bashrc; {check}; {imports}")), ssh_key)
        assert login.returncode == 0, login.stderr
        assert login.stdout.splitlines() == [expected, sys.prefix]
        # sshd (PID 1) and everything under it started from a clean environment
        environ = ssh(ip, port, "cat /proc/1/environ | tr '\\0' '\\n'; env", ssh_key).stdout
        assert "account-key-must-not-leak" not in environ
        assert "-p 8265" not in environ


def test_tmp_shm_and_home_are_private(netns_runtime: NetnsRuntime, ssh_key: SshKey, tmp_path: Path,
                                      netns_kit: NetnsKit) -> None:
    ssh = netns_kit.ssh
    (a_ip, a_port), (b_ip, b_port) = start_pair(netns_runtime, ssh_key)
    marker = f"netns-private-{tmp_path.name}"
    made = ssh(a_ip, a_port, f"touch /tmp/{marker} /dev/shm/{marker} ~/{marker} && echo $HOME", ssh_key)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "/root"
    seen_in_b = ssh(b_ip, b_port, f"ls /tmp/{marker} /dev/shm/{marker} ~/{marker} 2>&1; true", ssh_key).stdout
    assert seen_in_b.count("No such file") == 3, seen_in_b
    for shared in (Path("/tmp"), Path("/dev/shm"), Path("/root")):
        assert not (shared / marker).exists()
    # The instance still sees the rest of the host's file system (the image stand-in): this venv's python
    assert ssh(b_ip, b_port, f"test -x {sys.executable}", ssh_key).returncode == 0


def test_public_network_isolates_instances_from_each_other(netns_runtime: NetnsRuntime, ssh_key: SshKey,
                                                           netns_kit: NetnsKit) -> None:
    ssh = netns_kit.ssh
    (a_ip, a_port), (b_ip, b_port) = start_pair(netns_runtime, ssh_key)
    # the host reaches both (the SSH above); A cannot reach B's public address, not even B's sshd
    probe = ssh(a_ip, a_port, tcp_probe_script(b_ip, b_port, 2.0), ssh_key)
    assert probe.stdout.startswith("FAIL"), probe.stdout + probe.stderr
    # ...but A reaches the host's address on the bridge (where the emulator API also listens)
    api_host = netns_runtime.api_bind_host
    assert api_host is not None
    with socket.create_server((api_host, 0)) as server:
        port = server.getsockname()[1]
        probe = ssh(a_ip, a_port, tcp_probe_script(api_host, port, 5.0), ssh_key)
        assert probe.stdout.startswith("OK"), probe.stdout + probe.stderr
    routes = ssh(a_ip, a_port, "ip route; ip -br link", ssh_key).stdout
    assert "default" not in routes  # nothing can leave the machine
    assert "eth1" in routes and "eth0" not in routes  # eth0 appears only with an overlay


def test_overlay_members_reach_each_other_on_any_port(netns_runtime: NetnsRuntime, ssh_key: SshKey,
                                                      netns_kit: NetnsKit) -> None:
    ssh = netns_kit.ssh
    (a_ip, a_port), (b_ip, b_port) = start_pair(netns_runtime, ssh_key)
    netns_runtime.create_overlay(7, "10.77.0.0/24")
    netns_runtime.join_overlay(7, 1, "10.77.0.1", 24)
    netns_runtime.join_overlay(7, 2, "10.77.0.2", 24)
    netns_runtime.join_overlay(7, 2, "10.77.0.2", 24)  # a repeated join (after a restart) is a no-op
    assert "10.77.0.1/24" in ssh(a_ip, a_port, "ip -br addr show eth0", ssh_key).stdout
    assert ssh(b_ip, b_port, serve_once_script(45678, "hello from B"), ssh_key).returncode == 0
    probe = ssh(a_ip, a_port, f"for i in $(seq 50); do {tcp_probe_script('10.77.0.2', 45678, 2.0)} | grep OK "
                              "&& exit 0; sleep 0.1; done; exit 1", ssh_key)
    assert probe.returncode == 0 and "hello from B" in probe.stdout, probe.stdout + probe.stderr
    # sshd answers on port 22 of the overlay address (head -> worker SSH over the overlay)
    assert "SSH-2.0" in ssh(a_ip, a_port, tcp_probe_script("10.77.0.2", 22, 5.0), ssh_key).stdout
    # still no way across the public network, and the host is not on the overlay
    assert ssh(a_ip, a_port, tcp_probe_script(b_ip, 45678, 2.0), ssh_key).stdout.startswith("FAIL")
    with pytest.raises(OSError):
        socket.create_connection(("10.77.0.2", 45678), timeout=2).close()

    netns_runtime.delete_overlay(7)
    assert ssh(a_ip, a_port, "ip -br link show eth0", ssh_key).returncode != 0
    with pytest.raises(RuntimeFailure, match="overlay 7 does not exist"):
        netns_runtime.join_overlay(7, 1, "10.77.0.1", 24)


def test_extra_port_mapping_reaches_the_container_port(netns_runtime: NetnsRuntime, ssh_key: SshKey,
                                                       netns_kit: NetnsKit) -> None:
    ssh = netns_kit.ssh
    spec = make_spec(5, ssh_key, 41022, extra_ports={"8265/tcp": 40111, "9000/tcp": 9000})
    netns_runtime.start(spec)
    ip = netns_runtime.public_ip(5, "198.51.100.7")
    assert ssh(ip, 41022, serve_once_script(8265, "dashboard") + "; " + serve_once_script(9000, "same"),
               ssh_key).returncode == 0
    assert wait_for_tcp(ip, 40111) == b"dashboard"  # host port 40111 -> container port 8265
    assert wait_for_tcp(ip, 9000) == b"same"  # an identity mapping
    # the mapping also works from inside the instance to its own public address (hairpin)
    assert "dashboard" in ssh(ip, 41022, tcp_probe_script(ip, 40111, 5.0), ssh_key).stdout
    # only mapped ports are redirected: the container port itself is reachable directly, an unmapped one is not
    with pytest.raises(OSError):
        socket.create_connection((ip, 40112), timeout=2).close()


def test_stop_keeps_disk_start_again_and_added_key(netns_runtime: NetnsRuntime, ssh_key: SshKey,
                                                  tmp_path: Path, netns_kit: NetnsKit) -> None:
    ssh = netns_kit.ssh
    make_ssh_key = netns_kit.make_ssh_key
    spec = make_spec(3, ssh_key, onstart="date +%s%N >> /root/onstart-runs")
    netns_runtime.start(spec)
    ip = netns_runtime.public_ip(3, "198.51.100.7")
    assert ssh(ip, 41022, "echo kept > ~/disk; echo gone > /tmp/scratch", ssh_key).returncode == 0
    second_key = make_ssh_key(tmp_path, "second")
    netns_runtime.add_authorized_key(3, second_key.public)  # POST /instances/{id}/ssh/ on a running instance
    assert ssh(ip, 41022, "true", second_key).returncode == 0
    pids = ssh(ip, 41022, "sleep 600 >/dev/null 2>&1 & echo $!; cat /proc/1/stat | cut -d' ' -f1", ssh_key)
    assert pids.returncode == 0

    netns_runtime.stop(3)
    netns_runtime.stop(3)  # idempotent
    assert ssh(ip, 41022, "true", ssh_key, timeout=30).returncode != 0
    assert not leftovers_processes(netns_kit, netns_runtime.prefix, 3)

    began = time.monotonic()
    netns_runtime.start(spec)
    print(f"\nrestart ready in {time.monotonic() - began:.2f} s")
    again = ssh(ip, 41022, "cat ~/disk; cat /tmp/scratch 2>&1; true", second_key)  # the added key survived
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "kept"
    assert "No such file" in again.stdout  # /tmp is tmpfs: a stopped container loses it
    runs = wait_until_lines(netns_kit, ip, ssh_key, "cat /root/onstart-runs", 2)
    assert len(runs) == 2  # onstart runs at every start


def leftovers_processes(kit: NetnsKit, prefix: str, instance_id: int) -> list[str]:
    return [item for item in kit.leftovers(prefix) if item.startswith("process") and f"-i{instance_id}" in item]


def wait_until_lines(kit: NetnsKit, ip: str, key: SshKey, command: str, count: int,
                     timeout_s: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        lines = kit.ssh(ip, 41022, command, key).stdout.splitlines()
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_destroy_removes_namespace_links_processes_and_files(netns_runtime: NetnsRuntime, ssh_key: SshKey,
                                                             netns_kit: NetnsKit) -> None:
    leftovers = netns_kit.leftovers
    pid_alive = netns_kit.pid_alive
    netns_runtime.start(make_spec(4, ssh_key, onstart="sleep 600"))
    netns_runtime.create_overlay(9, "10.99.0.0/24")
    netns_runtime.join_overlay(9, 4, "10.99.0.1", 24)
    prefix = netns_runtime.prefix
    before = leftovers(prefix)
    assert f"netns {prefix}-i4" in before and f"link {prefix}p4" in before and f"link {prefix}v4" in before
    pids = [int(item.split()[1]) for item in before if item.startswith("process")]
    assert len(pids) >= 3  # unshare, sshd (PID 1), the onstart sleep

    netns_runtime.destroy(4)
    after = leftovers(prefix)
    assert not [item for item in after if "i4" in item or item.endswith(("p4", "v4"))], after
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not any(Path("/var/lib/skyward-ray/emulator", prefix).glob("i4"))
    netns_runtime.destroy(4)  # idempotent
    netns_runtime.stop(4)
    # what remains belongs to the runtime, not the instance: the public bridge and the (empty) overlay bridge
    assert sorted(after) == sorted([f"link {prefix}-pub", f"link {prefix}o9",
                                    f"dir /var/lib/skyward-ray/emulator/{prefix}"])


def test_clean_leftovers_after_a_crash(make_netns_runtime: Callable[..., NetnsRuntime], ssh_key: SshKey,
                                       netns_kit: NetnsKit) -> None:
    leftovers = netns_kit.leftovers
    pid_alive = netns_kit.pid_alive
    runtime = make_netns_runtime()
    prefix = runtime.prefix
    start_pair(runtime, ssh_key)
    runtime.create_overlay(3, "10.33.0.0/24")
    runtime.join_overlay(3, 1, "10.33.0.1", 24)
    with pytest.raises(SkywardError, match="is in use"):  # a second runtime on the same prefix is refused
        NetnsRuntime(prefix=prefix, public_subnet="10.199.0.0/16")
    del runtime  # a crash: nobody calls close()
    gc.collect()
    before = leftovers(prefix)
    pids = [int(item.split()[1]) for item in before if item.startswith("process")]
    assert len(pids) >= 4 and f"link {prefix}-pub" in before

    removed = clean_leftovers(prefix)
    assert f"netns {prefix}-i1" in removed and f"netns {prefix}-i2" in removed
    assert {f"link {prefix}-pub", f"link {prefix}o3", f"link {prefix}p1", f"link {prefix}v1"} <= set(removed)
    assert sum(item.startswith("process") for item in removed) >= len(pids) - 2  # PID 1s take their children along
    assert leftovers(prefix) == []
    assert not [pid for pid in pids if pid_alive(pid)]
    assert clean_leftovers(prefix) == []


def test_concurrent_boots_and_destroys(netns_runtime: NetnsRuntime, ssh_key: SshKey, netns_kit: NetnsKit) -> None:
    """The market calls from a thread pool: six boots, then six destroys, at once."""
    specs = [make_spec(20 + n, ssh_key, 41000 + n) for n in range(6)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(netns_runtime.start, specs))
        addresses = {netns_runtime.public_ip(s.instance_id, "198.51.100.7") for s in specs}
        assert len(addresses) == 6
        assert all(netns_kit.ssh(netns_runtime.public_ip(s.instance_id, ""), s.port_map["22/tcp"], "true",
                                 ssh_key).returncode == 0 for s in specs[::5])
        list(pool.map(netns_runtime.destroy, [s.instance_id for s in specs] * 2))  # each twice, concurrently
    prefix = netns_runtime.prefix
    assert sorted(netns_kit.leftovers(prefix)) == sorted([f"link {prefix}-pub",
                                                         f"dir /var/lib/skyward-ray/emulator/{prefix}"])


def test_ray_head_runs_inside_an_instance(netns_runtime: NetnsRuntime, ssh_key: SshKey, netns_kit: NetnsKit) -> None:
    ssh = netns_kit.ssh
    netns_runtime.start(make_spec(6, ssh_key))
    ip = netns_runtime.public_ip(6, "198.51.100.7")

    def login(command: str) -> str:
        done = ssh(ip, 41022, RAY_LOGIN.format(shlex.quote(f"source ~/.bashrc; {command}")), ssh_key, timeout=120)
        assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout

    began = time.monotonic()
    login(f"ray start --head --port=6379 --node-ip-address={ip} --disable-usage-stats --include-dashboard=false "
          "--num-cpus=1")
    started = time.monotonic()
    # the autoscaler's first report takes a moment after `ray start` returns: poll for it, bounded
    status = login("for i in $(seq 60); do out=$(ray status 2>&1); case $out in *CPU*) break;; esac; sleep 0.5; "
                   'done; echo "$out"')
    assert "0.0/1.0 CPU" in status, status
    login("ray stop")  # inside the instance's own PID namespace: it sees only this instance's Ray
    print(f"\nray start {started - began:.1f} s, status + stop {time.monotonic() - started:.1f} s")
    assert "raylet" not in ssh(ip, 41022, "ps -eo comm", ssh_key).stdout


def test_python_environment_under_a_covered_dir_stays_visible(netns_runtime: NetnsRuntime, ssh_key: SshKey,
                                                              tmp_path: Path, netns_kit: NetnsKit) -> None:
    """A root user's venv often lives under /root (or a test's under /tmp), which every instance covers."""
    stand_in = tmp_path / "venv"
    (stand_in / "bin").mkdir(parents=True)
    (stand_in / "bin" / "marker").write_text("from the host\n")
    netns_runtime._keep_visible = [str(stand_in)]  # what _paths_to_keep_visible() finds for such a venv
    netns_runtime.start(make_spec(7, ssh_key))
    ip = netns_runtime.public_ip(7, "198.51.100.7")
    seen = netns_kit.ssh(ip, 41022, f"cat {stand_in}/bin/marker; ls /tmp", ssh_key)
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.splitlines() == ["from the host", stand_in.parts[2]]  # /tmp is otherwise empty


# ---------------------------------------------------------------------------------------------------------------
# Refusals: clear errors naming what is wrong


def test_refuses_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(SkywardError, match="needs root"):
        NetnsRuntime(prefix="tnorot")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"prefix": "Bad-Prefix"}, "prefix="),
    ({"prefix": "toolong7"}, "prefix="),
    ({"state_dir": "/tmp/somewhere"}, "state_dir="),
    ({"public_subnet": "8.8.0.0/16"}, "public_subnet="),
    ({"public_subnet": "not a subnet"}, "public_subnet="),
])
def test_refuses_bad_settings(netns_host: None, kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        NetnsRuntime(**{"prefix": "tbad", **kwargs})  # type: ignore[arg-type]


def test_bad_specs_fail_the_boot_without_leaking_secrets(netns_runtime: NetnsRuntime, ssh_key: SshKey) -> None:
    no_ssh = InstanceSpec(instance_id=8, machine_id=1, hostname="C.8", num_gpus=0, port_map={"8265/tcp": 40000},
                          env={}, authorized_keys=(ssh_key.public,))
    with pytest.raises(RuntimeFailure, match="22/tcp"):
        netns_runtime.start(no_ssh)
    newline = make_spec(8, ssh_key)
    newline.env["CONTAINER_API_KEY"] = "secret\nvalue"
    with pytest.raises(RuntimeFailure, match="CONTAINER_API_KEY") as failure:
        netns_runtime.start(newline)
    assert "secret" not in str(failure.value)
    with pytest.raises(ConfigError, match="public_key"):
        netns_runtime.add_authorized_key(8, "not a key\nssh-ed25519 AAAA injected")
