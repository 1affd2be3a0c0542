"""Host side of the netns runtime: the names it gives, the commands it runs, and the sweep by name.

Every namespace, link and directory is named with the runtime's prefix, so :func:`clean_leftovers` removes exactly
what a (crashed) runtime made, and kills only processes inside those namespaces, by PID.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from skyward_ray.emulator.process import pid_alive
from skyward_ray.emulator.runtime import RuntimeFailure
from skyward_ray.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "skyr"
DEFAULT_STATE_ROOT = Path("/var/lib/skyward-ray/emulator")
# Directories the instance gets its own copy of; the runtime's state must live outside them.
COVERED_DIRS = (Path("/root"), Path("/tmp"), Path("/dev/shm"))
# Debian's PATH for root, which the image stand-in's bin directory is put in front of.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMMAND_TIMEOUT_S = 30.0
KILL_TIMEOUT_S = 10.0
POLL_S = 0.02
_TOOL_PACKAGES = {  # tool -> Debian package that provides it
    "ip": "iproute2",
    "bridge": "iproute2",
    "nft": "nftables",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "setsid": "util-linux",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
}
_IFNAME_MAX = 15  # IFNAMSIZ - 1
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,5}")


@dataclass(frozen=True)
class Names:
    """Every name the runtime gives, in one place, so the sweep finds exactly what a runtime made."""

    prefix: str

    @property
    def public_bridge(self) -> str:
        return f"{self.prefix}-pub"

    def netns(self, instance_id: int) -> str:
        return f"{self.prefix}-i{instance_id}"

    def public_veth(self, instance_id: int) -> str:
        return self._ifname(f"{self.prefix}p{instance_id}", "instance_id", instance_id)

    def overlay_veth(self, instance_id: int) -> str:
        return self._ifname(f"{self.prefix}v{instance_id}", "instance_id", instance_id)

    def overlay_bridge(self, overlay_id: int) -> str:
        return self._ifname(f"{self.prefix}o{overlay_id}", "overlay_id", overlay_id)

    @property
    def nft_table(self) -> str:
        return f"{self.prefix}_ports"

    def is_netns(self, name: str) -> bool:
        return re.fullmatch(rf"{self.prefix}-i\d+", name) is not None

    def is_link(self, name: str) -> bool:
        return re.fullmatch(rf"{self.prefix}(-pub|[pvo]\d+)", name) is not None

    def is_bridge(self, name: str) -> bool:
        return re.fullmatch(rf"{self.prefix}(-pub|o\d+)", name) is not None

    def _ifname(self, name: str, what: str, value: int) -> str:
        if len(name) > _IFNAME_MAX:
            raise RuntimeFailure(f"{what}={value} is too large for an interface name with prefix {self.prefix!r} "
                                 f"({name!r} is longer than {_IFNAME_MAX} characters)")
        return name


def check_prefix(prefix: str) -> Names:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(f"prefix={prefix!r}: must be 1-6 lowercase letters or digits, starting with a letter "
                          "(it leads every interface name, which Linux limits to 15 characters)")
    return Names(prefix)


def state_dir_for(prefix: str, state_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(state_dir) if state_dir is not None else DEFAULT_STATE_ROOT / prefix
    path = path.absolute()
    for covered in COVERED_DIRS:
        if path == covered or covered in path.parents:
            raise ConfigError(f"state_dir={str(path)!r}: must not be under {covered}, which each instance covers "
                              "with its own copy (its sshd reads its config from there)")
    return path


def run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run a host command (never with a secret in argv); a failure becomes RuntimeFailure naming the command."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              check=False, env={"PATH": DEFAULT_PATH, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"{' '.join(argv)} did not finish within {COMMAND_TIMEOUT_S:.0f} s") from None
    if check and done.returncode != 0:
        raise RuntimeFailure(f"{' '.join(argv)} failed: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def find_tools() -> tuple[dict[str, str], list[str]]:
    """(tool -> path) for every host tool the runtime runs, and the missing ones with the Debian package to install."""
    search = f"{os.environ.get('PATH', '')}:{DEFAULT_PATH}"
    found, missing = {}, []
    for tool, package in _TOOL_PACKAGES.items():
        path = shutil.which(tool, path=search)
        if path is None:
            missing.append(f"{tool} (Debian package {package})")
        else:
            found[tool] = path
    return found, missing


def netns_names(names: Names) -> list[str]:
    run_netns = Path("/run/netns")
    if not run_netns.is_dir():
        return []
    return sorted(entry.name for entry in run_netns.iterdir() if names.is_netns(entry.name))


def link_names(names: Names) -> list[str]:
    links = json.loads(run(["ip", "-j", "link", "show"]) or "[]")
    return sorted(link["ifname"] for link in links if names.is_link(link.get("ifname", "")))


def _netns_pids(netns: str) -> list[int]:
    out = run(["ip", "netns", "pids", netns], check=False)
    return [pid for pid in (int(word) for word in out.split()) if pid != os.getpid() and pid_alive(pid)]


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def kill_netns_processes(netns: str) -> list[int]:
    """SIGKILL every process in ``netns``, by PID, and wait (bounded) until none is left; returns the PIDs killed."""
    killed: list[int] = []
    for _ in range(5):  # a process may fork while we kill its parent; a few rounds settle that
        pids = _netns_pids(netns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        wait_until(lambda: not _netns_pids(netns), KILL_TIMEOUT_S / 5)
    left = _netns_pids(netns)
    if left:
        raise RuntimeFailure(f"processes {left} in network namespace {netns} survived SIGKILL")
    return killed


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(word) for word in (task / "children").read_text().split()]
    return children


def ssh_banner(host: str, port: int) -> bool:
    """True once an sshd answers on host:port with its identification line (a listening socket alone is not enough)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.settimeout(1.0)
            return conn.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def clean_leftovers(prefix: str = DEFAULT_PREFIX, state_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove what netns runtimes with ``prefix`` left (a crashed run), by name; returns what was removed.

    Processes are killed only if they are inside one of those namespaces (``ip netns pids``), by PID: nothing else
    on the machine is touched. ``state_dir`` defaults to the runtime's default for ``prefix``.
    """
    names = check_prefix(prefix)
    directory = state_dir_for(prefix, state_dir)
    removed: list[str] = []
    namespaces = netns_names(names)
    for netns in namespaces:
        removed += [f"process {pid} (in {netns})" for pid in kill_netns_processes(netns)]
    for link in sorted(link_names(names), key=names.is_bridge):  # veths (each takes its peer along), then bridges
        run(["ip", "link", "del", link], check=False)
        removed.append(f"link {link}")
    for netns in namespaces:
        run(["ip", "netns", "del", netns], check=False)
        removed.append(f"netns {netns}")
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(f"dir {directory}")
    if removed:
        log.info("removed leftovers of prefix %s: %s", prefix, ", ".join(removed))
    return removed
