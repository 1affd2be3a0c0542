"""What an emulated instance's sshd and login shells read, built from its spec, and the checks on that spec.

The market builds specs; a bad one fails this instance's boot with a clear message. The venv running the emulator is
the image stand-in: its bin directory leads the login PATH, and where it lives under a covered directory it is bound
back in at the same path.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from skyward_ray.emulator.netns.commands import COVERED_DIRS, DEFAULT_PATH
from skyward_ray.emulator.runtime import InstanceSpec, RuntimeFailure
from skyward_ray.errors import ConfigError

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PORT_KEY_RE = re.compile(r"(\d{1,5})/(tcp|udp)")
_KEY_TYPE_RE = re.compile(r"(ssh-|ecdsa-|sk-)\S+ \S+")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SSHD_OPTIONS = (
    "PidFile none",
    "PermitRootLogin prohibit-password",
    "PubkeyAuthentication yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "UsePAM no",
    "AuthorizedKeysFile .ssh/authorized_keys",
    "PermitUserEnvironment yes",
    "StrictModes yes",
    "UseDNS no",
    "PrintMotd no",
    "PrintLastLog no",
    "X11Forwarding no",
    "MaxStartups 64",
    "MaxSessions 64",
    "Subsystem sftp internal-sftp",
    "LogLevel INFO",
)


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    protocol: str
    host_port: int


def parse_port_map(spec: InstanceSpec) -> tuple[int, list[PortMapping]]:
    """(host port of sshd, the other mappings) from ``spec.port_map``."""
    mappings: list[PortMapping] = []
    for key, host_port in spec.port_map.items():
        match = _PORT_KEY_RE.fullmatch(str(key))
        if not match or not 1 <= int(match[1]) <= 65535:
            raise RuntimeFailure(f"port_map key {key!r}: expected '<port>/tcp' or '<port>/udp' with a port 1-65535")
        if isinstance(host_port, bool) or not isinstance(host_port, int) or not 1 <= host_port <= 65535:
            raise RuntimeFailure(f"port_map[{key!r}]={host_port!r}: expected a host port 1-65535")
        mappings.append(PortMapping(int(match[1]), match[2], host_port))
    ssh = [m for m in mappings if (m.container_port, m.protocol) == (22, "tcp")]
    if not ssh:
        raise RuntimeFailure(f"port_map={spec.port_map!r}: has no '22/tcp', so the instance's sshd has no host port")
    used = [(m.host_port, m.protocol) for m in mappings]
    if len(set(used)) != len(used):
        raise RuntimeFailure(f"port_map={spec.port_map!r}: two container ports share one host port")
    return ssh[0].host_port, [m for m in mappings if m is not ssh[0]]


def check_hostname(hostname: str) -> None:
    if not _HOSTNAME_RE.fullmatch(hostname):
        raise RuntimeFailure(f"hostname={hostname!r}: expected 1-64 letters, digits, '.', '_' or '-'")


def parse_public_subnet(public_subnet: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(public_subnet)
    except ValueError:
        subnet = None
    if subnet is None or not subnet.is_private or subnet.is_loopback or subnet.is_link_local \
            or not 8 <= subnet.prefixlen <= 28:
        raise ConfigError(f"public_subnet={public_subnet!r}: must be a private IPv4 network such as "
                          "'10.213.0.0/16', with a prefix length of 8-28")
    return subnet


def login_environment(spec: InstanceSpec, venv_bin: str) -> dict[str, str]:
    """The instance's login environment: the spec's variables, and this venv's bin first on PATH (image stand-in).

    Keys that are not variable names (Vast's env also carries Docker flags such as ``-p 8265:8265``) are not
    variables inside a container either, so they are left out.
    """
    env: dict[str, str] = {"LANG": "C.UTF-8"}
    for key, value in spec.env.items():
        if not _ENV_NAME_RE.fullmatch(key):
            continue
        if "\n" in str(value) or "\0" in str(value):
            raise RuntimeFailure(f"env[{key!r}]: a value with a newline or NUL cannot be a container variable")
        env[key] = str(value)
    env["PATH"] = f"{venv_bin}:{env.get('PATH', DEFAULT_PATH)}"
    return env


def check_public_key(public_key: str) -> str:
    key = public_key.strip() if isinstance(public_key, str) else ""
    if not _KEY_TYPE_RE.match(key) or "\n" in key or "\r" in key:
        raise ConfigError("public_key: expected one OpenSSH public key line such as 'ssh-ed25519 AAAA... comment'")
    return key


def paths_to_keep_visible() -> list[Path]:
    """The Python environment running the emulator (and this package's source) where an instance covers it.

    An instance covers /root, /tmp and /dev/shm, but a root user's venv (or checkout) often lives under /root; its
    interpreter and ``ray`` must stay reachable inside, at the same paths, for the image stand-in to work.
    """
    candidates = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent,
                  Path(__file__).resolve().parents[3]}
    covered = [p for p in candidates if any(c in p.parents for c in COVERED_DIRS) and p.is_dir()]
    return sorted(p for p in covered if not any(other in p.parents for other in covered))


def write_file(path: Path, text: str, mode: int) -> None:
    """Write a file with ``mode`` from its first byte (some hold the instance's CONTAINER_API_KEY)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(text)


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def write_login_files(home: Path, env: dict[str, str], onstart: str | None) -> None:
    """The login environment for plain ``ssh host cmd`` and for login shells, and the onstart script."""
    # Plain `ssh host cmd`: sshd puts these in the session's environment (PermitUserEnvironment).
    write_file(home / ".ssh" / "environment", "".join(f"{k}={v}\n" for k, v in env.items()), 0o600)
    # Login shells: Debian's /etc/profile resets root's PATH, so ~/.profile and ~/.bashrc set it again.
    exports = "".join(f"export {k}={_sh_quote(v)}\n" for k, v in env.items())
    write_file(home / ".container_env", "# written by the emulator at every boot\n" + exports, 0o600)
    profile, bashrc = home / ".profile", home / ".bashrc"
    if not profile.exists():
        write_file(profile, '[ -f "$HOME/.container_env" ] && . "$HOME/.container_env"\n'
                            '[ -n "$BASH_VERSION" ] && [ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"\n', 0o644)
    if not bashrc.exists():
        write_file(bashrc, '[ -f "$HOME/.container_env" ] && . "$HOME/.container_env"\n', 0o644)
    (home / ".no_auto_tmux").touch()
    if onstart:
        write_file(home / "onstart.sh", onstart if onstart.endswith("\n") else onstart + "\n", 0o700)


def write_sshd_files(directory: Path, address: ipaddress.IPv4Address, hostname: str, ssh_port: int,
                     host_key: Path) -> None:
    """/etc/hosts and sshd_config: sshd listens on the public address's host port and on port 22 everywhere."""
    write_file(directory / "hosts", f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                                    f"{address}\t{hostname}\n", 0o644)
    lines = [f"ListenAddress {address}:{ssh_port}", "ListenAddress 0.0.0.0:22", f"HostKey {host_key}",
             *_SSHD_OPTIONS, ""]
    write_file(directory / "sshd_config", "\n".join(lines), 0o600)


def merge_authorized_keys(home: Path, keys: Iterable[str]) -> None:
    path = home / ".ssh" / "authorized_keys"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    present = path.read_text().splitlines() if path.exists() else []
    merged = present + [k for k in dict.fromkeys(keys) if k not in present]
    if merged != present or not path.exists():
        write_file(path, "".join(f"{k}\n" for k in merged), 0o600)


def port_forward_ruleset(table: str, address: ipaddress.IPv4Address, forwards: list[PortMapping]) -> str:
    """nftables redirects for the non-SSH mappings, replacing the table's previous set (one ``nft -f``)."""
    incoming = "".join(f'    iifname "eth1" {m.protocol} dport {m.host_port} redirect to :{m.container_port}\n'
                       for m in forwards if m.host_port != m.container_port)
    hairpin = "".join(f"    ip daddr {address} {m.protocol} dport {m.host_port} redirect to "
                      f":{m.container_port}\n" for m in forwards if m.host_port != m.container_port)
    return (f"table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n"
            "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n"
            f"{incoming}  }}\n"
            "  chain output {\n    type nat hook output priority -100; policy accept;\n"
            f"{hairpin}  }}\n}}\n")
