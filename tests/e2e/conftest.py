"""Shared e2e fixtures: the host checks (which FAIL, never skip), netns runtimes that are always torn down, SSH.

Every runtime made here gets its own name prefix and its own public subnet, so e2e runs on one machine (or a live
emulator with the default ``skyr`` prefix) never collide, and the leftover check after each test can look for exactly
that prefix. The leftover check is independent of the runtime's own bookkeeping: it asks the kernel and the disk.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import string
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rayup_kit import pid_alive

from skyward_ray.emulator.netns import DEFAULT_STATE_ROOT, NetnsRuntime, clean_leftovers
from skyward_ray.emulator.server import EmulatorServer

# What the netns runtime and these tests run; a missing one fails the run with the Debian package to install.
E2E_TOOLS = {"ip": "iproute2", "bridge": "iproute2", "nft": "nftables", "unshare": "util-linux",
             "nsenter": "util-linux", "sshd": "openssh-server", "ssh": "openssh-client",
             "ssh-keygen": "openssh-client"}
_SEARCH_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"


@pytest.fixture(scope="session")
def netns_host() -> None:
    """Fail loudly (not skip) when this machine cannot run the netns runtime: a skipped e2e test proves nothing."""
    problems = []
    if not sys.platform.startswith("linux"):
        problems.append(f"needs Linux, this is {sys.platform}")
    elif os.geteuid() != 0:
        problems.append("needs root (network namespaces, bridges, sshd)")
    problems += [f"missing {tool} (apt-get install {package})" for tool, package in E2E_TOOLS.items()
                 if shutil.which(tool, path=_SEARCH_PATH) is None]
    if problems:
        pytest.fail("e2e host check failed: " + "; ".join(problems), pytrace=False)


def _in_use_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
            for link in json.loads(out or "[]") for a in link.get("addr_info", [])]


def free_public_subnet() -> str:
    """A /16 in 10.220-10.249 that no interface uses (other e2e runs may hold some; 10.213 is the default's)."""
    used = _in_use_networks()
    for second in sorted(range(220, 250), key=lambda _: secrets.randbelow(1000)):
        candidate = ipaddress.IPv4Network(f"10.{second}.0.0/16")
        if not any(candidate.overlaps(net) for net in used):
            return str(candidate)
    raise AssertionError("no free 10.220-249.0.0/16 for a test runtime")


def unique_prefix() -> str:
    """``t`` + 5 random characters: 6 in all, the longest prefix the runtime accepts."""
    return "t" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


def leftovers(prefix: str) -> list[str]:
    """What the kernel and the disk still hold under ``prefix``: namespaces, their processes, links, the state dir."""
    found = []
    run_netns = Path("/run/netns")
    for entry in sorted(run_netns.iterdir()) if run_netns.is_dir() else []:
        if entry.name.startswith(f"{prefix}-"):
            found.append(f"netns {entry.name}")
            pids = subprocess.run(["ip", "netns", "pids", entry.name], capture_output=True, text=True).stdout.split()
            found += [f"process {pid} in {entry.name}" for pid in pids]
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout or "[]")
    found += [f"link {link['ifname']}" for link in links if link["ifname"].startswith(prefix)]
    if (DEFAULT_STATE_ROOT / prefix).exists():
        found.append(f"dir {DEFAULT_STATE_ROOT / prefix}")
    return found


@pytest.fixture
def make_netns_runtime(netns_host: None) -> Iterator[Callable[..., NetnsRuntime]]:
    """Make runtimes with fresh prefixes and subnets; at teardown close each, and fail the test if anything is left.

    A test that drops a runtime on purpose (a simulated crash) cleans up with ``clean_leftovers`` itself; the
    teardown still sweeps every prefix it handed out, so a failing test never leaves namespaces or processes.
    """
    made: list[tuple[str, NetnsRuntime | None]] = []

    def make(**kwargs: object) -> NetnsRuntime:
        prefix = str(kwargs.pop("prefix", unique_prefix()))
        made.append((prefix, None))
        runtime = NetnsRuntime(prefix=prefix, public_subnet=str(kwargs.pop("public_subnet", free_public_subnet())),
                               **kwargs)  # type: ignore[arg-type]
        made[-1] = (prefix, runtime)
        return runtime

    yield make

    problems = []
    for prefix, runtime in made:
        if runtime is not None:
            with contextlib.suppress(Exception):
                runtime.close()
        left = leftovers(prefix)
        if left:
            problems.append(f"{prefix}: {left}")
            clean_leftovers(prefix)
    if problems:
        pytest.fail("runtime left things behind after close(): " + "; ".join(problems), pytrace=False)


@pytest.fixture
def netns_runtime(make_netns_runtime: Callable[..., NetnsRuntime]) -> NetnsRuntime:
    return make_netns_runtime()


@pytest.fixture
def make_netns_emulator(make_netns_runtime: Callable[..., NetnsRuntime]) -> Iterator[Callable[..., EmulatorServer]]:
    """Start in-process emulators (``EmulatorServer(**kwargs)``), each on a fresh netns runtime; at teardown stop each
    (it destroys what its runtime holds), then ``make_netns_runtime`` checks that nothing is left."""
    servers: list[EmulatorServer] = []

    def make(**kwargs: Any) -> EmulatorServer:
        server = EmulatorServer(runtime=make_netns_runtime(), **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in reversed(servers):
        server.stop()


@dataclass(frozen=True)
class SshKey:
    private_path: Path
    public: str


def make_ssh_key(directory: Path, name: str = "id_ed25519") -> SshKey:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return SshKey(path, path.with_suffix(".pub").read_text().strip())


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    return make_ssh_key(tmp_path_factory.mktemp("ssh"))


def ssh(host: str, port: int, command: str, key: SshKey, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as root on an instance the way a client does: key only, no host-key prompt, bounded."""
    argv = ["ssh", "-i", str(key.private_path), "-p", str(port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=5", f"root@{host}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class NetnsKit:
    """The helpers above, as a fixture: test modules must not import ``conftest`` (several exist under tests/)."""

    ssh = staticmethod(ssh)
    make_ssh_key = staticmethod(make_ssh_key)
    leftovers = staticmethod(leftovers)
    pid_alive = staticmethod(pid_alive)
    unique_prefix = staticmethod(unique_prefix)
    free_public_subnet = staticmethod(free_public_subnet)


@pytest.fixture(scope="session")
def netns_kit() -> NetnsKit:
    return NetnsKit()
