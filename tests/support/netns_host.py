"""The e2e tests' host side: which tools the netns runtime needs, a free public subnet and a unique name prefix for a
runtime, what the kernel and the disk still hold under a prefix, and SSH into an emulated instance as a client does."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

from skyward_ray.emulator.netns import DEFAULT_STATE_ROOT
from skyward_ray.emulator.process import pid_alive

# What the netns runtime and these tests run; a missing one fails the run with the Debian package to install.
E2E_TOOLS = {"ip": "iproute2", "bridge": "iproute2", "nft": "nftables", "unshare": "util-linux",
             "nsenter": "util-linux", "sshd": "openssh-server", "ssh": "openssh-client",
             "ssh-keygen": "openssh-client"}
SEARCH_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"


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


@dataclass(frozen=True)
class SshKey:
    """A key pair on disk: the private key's path and the public key's text."""

    private_path: Path
    public: str


def make_ssh_key(directory: Path, name: str = "id_ed25519") -> SshKey:
    """A fresh ed25519 key pair without a passphrase in ``directory``."""
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return SshKey(path, path.with_suffix(".pub").read_text().strip())


def ssh(host: str, port: int, command: str, key: SshKey, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as root on an instance the way a client does: key only, no host-key prompt, bounded."""
    argv = ["ssh", "-i", str(key.private_path), "-p", str(port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=5", f"root@{host}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class NetnsKit:
    """The helpers above in one object, handed to tests by the ``netns_kit`` fixture."""

    ssh = staticmethod(ssh)
    make_ssh_key = staticmethod(make_ssh_key)
    leftovers = staticmethod(leftovers)
    pid_alive = staticmethod(pid_alive)
    unique_prefix = staticmethod(unique_prefix)
    free_public_subnet = staticmethod(free_public_subnet)
