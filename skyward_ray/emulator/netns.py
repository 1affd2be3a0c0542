"""The ``netns`` host runtime: every emulated instance is a set of Linux namespaces with its own sshd.

What it builds, and why each piece looks the way it does:

* One **public bridge** (``<prefix>-pub``, host address = first address of ``public_subnet``) stands for Vast's NAT.
  Each instance has its own address there on ``eth1`` (Vast: eth1 is the bridge to the internet), through a veth whose
  bridge port is *isolated*: the host (laptop, emulator API) reaches every instance, instances cannot reach each other
  over their public addresses, as on Vast. Instances have no default route, so nothing leaves the machine.
* Each running instance is its own network namespace (``<prefix>-i<id>``) plus PID, UTS, IPC and mount namespaces
  (``unshare``) whose PID 1 is an sshd: root, key only, listening on ``public_ip:<host port of 22/tcp>`` (what a client
  dials) and on port 22 of every address (what a container's sshd does, so peers reach it over the overlay). A private
  HOME is bound over /root; /tmp and /dev/shm are tmpfs, so Ray's session directories never collide (pitfalls 15-19
  of the Ray reference: ``ray stop`` inside an instance sees only that instance's processes).
* The login environment (``~/.ssh/environment`` for plain ``ssh host cmd``; ``~/.profile`` and ``~/.bashrc`` for the
  ``bash --login -c -i`` Ray uses, because Debian's /etc/profile resets PATH for root) carries the spec's env and a PATH
  led by this Python environment's bin directory: the venv running the emulator is the image stand-in. Where that
  environment (or its base interpreter, e.g. pyenv's under /root) lives in a covered directory, it is bound back in
  at the same path.
* Other ``-p`` mappings (container port -> host port) are nftables redirects inside the namespace (Debian package
  ``nftables``); nothing runs per mapping.
* Each **overlay** is its own bridge (``<prefix>o<id>``) with no host address (the laptop is not on Vast's overlay);
  joining adds ``eth0`` in the instance. Members reach each other on every port.

Everything is named with the prefix, so :func:`clean_leftovers` can remove what a crashed run left, by name, and kill
only processes inside those namespaces, by PID. Needs Linux and root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from skyward_ray.emulator.runtime import InstanceSpec, RuntimeFailure
from skyward_ray.errors import ConfigError, SkywardError

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "skyr"
DEFAULT_PUBLIC_SUBNET = "10.213.0.0/16"
DEFAULT_STATE_ROOT = Path("/var/lib/skyward-ray/emulator")
# Directories the instance gets its own copy of; the runtime's state must live outside them.
_COVERED_DIRS = (Path("/root"), Path("/tmp"), Path("/dev/shm"))
_INIT_SCRIPT = Path(__file__).with_name("netns_init.sh")
# Debian's PATH for root, which the image stand-in's bin directory is put in front of.
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
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
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PORT_KEY_RE = re.compile(r"(\d{1,5})/(tcp|udp)")
_KEY_TYPE_RE = re.compile(r"(ssh-|ecdsa-|sk-)\S+ \S+")
_BOOT_TIMEOUT_S = 20.0
_KILL_TIMEOUT_S = 10.0
_COMMAND_TIMEOUT_S = 30.0
_POLL_S = 0.02


# ----------------------------------------------------------------------------------------------------------------
# Names: one place for every name this runtime gives, so clean_leftovers finds exactly what a runtime made.


@dataclass(frozen=True)
class _Names:
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


def _check_prefix(prefix: str) -> _Names:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(f"prefix={prefix!r}: must be 1-6 lowercase letters or digits, starting with a letter "
                          "(it leads every interface name, which Linux limits to 15 characters)")
    return _Names(prefix)


def _state_dir_for(prefix: str, state_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(state_dir) if state_dir is not None else DEFAULT_STATE_ROOT / prefix
    path = path.absolute()
    for covered in _COVERED_DIRS:
        if path == covered or covered in path.parents:
            raise ConfigError(f"state_dir={str(path)!r}: must not be under {covered}, which each instance covers "
                              "with its own copy (its sshd reads its config from there)")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Host commands and processes


def _run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run a host command (never with a secret in argv); a failure becomes RuntimeFailure naming the command."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S,
                              check=False, env={"PATH": _DEFAULT_PATH, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"{' '.join(argv)} did not finish within {_COMMAND_TIMEOUT_S:.0f} s") from None
    if check and done.returncode != 0:
        raise RuntimeFailure(f"{' '.join(argv)} failed: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def _find_tools() -> tuple[dict[str, str], list[str]]:
    search = f"{os.environ.get('PATH', '')}:{_DEFAULT_PATH}"
    found, missing = {}, []
    for tool, package in _TOOL_PACKAGES.items():
        path = shutil.which(tool, path=search)
        if path is None:
            missing.append(f"{tool} (Debian package {package})")
        else:
            found[tool] = path
    return found, missing


def _netns_names(names: _Names) -> list[str]:
    run_netns = Path("/run/netns")
    if not run_netns.is_dir():
        return []
    return sorted(entry.name for entry in run_netns.iterdir() if names.is_netns(entry.name))


def _link_names(names: _Names) -> list[str]:
    links = json.loads(_run(["ip", "-j", "link", "show"]) or "[]")
    return sorted(link["ifname"] for link in links if names.is_link(link.get("ifname", "")))


def _is_live(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie holds no namespace and cannot be killed further)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _netns_pids(netns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", netns], check=False)
    return [pid for pid in (int(word) for word in out.split()) if pid != os.getpid() and _is_live(pid)]


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def _kill_netns_processes(netns: str) -> list[int]:
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
        _wait_until(lambda: not _netns_pids(netns), _KILL_TIMEOUT_S / 5)
    left = _netns_pids(netns)
    if left:
        raise RuntimeFailure(f"processes {left} in network namespace {netns} survived SIGKILL")
    return killed


def _child_pids(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(word) for word in (task / "children").read_text().split()]
    return children


def _write(path: Path, text: str, mode: int) -> None:
    """Write a file with ``mode`` from its first byte (some hold the instance's CONTAINER_API_KEY)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(text)


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _paths_to_keep_visible() -> list[Path]:
    """The Python environment running the emulator (and this package's source) where an instance covers it.

    An instance covers /root, /tmp and /dev/shm, but a root user's venv (or checkout) often lives under /root; its
    interpreter and ``ray`` must stay reachable inside, at the same paths, for the image stand-in to work.
    """
    candidates = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent,
                  Path(__file__).resolve().parents[2]}
    covered = [p for p in candidates if any(c in p.parents for c in _COVERED_DIRS) and p.is_dir()]
    return sorted(p for p in covered if not any(other in p.parents for other in covered))


# ----------------------------------------------------------------------------------------------------------------
# Spec checks (the market builds specs; a bad one fails this instance's boot with a clear message)


@dataclass(frozen=True)
class _PortMapping:
    container_port: int
    protocol: str
    host_port: int


def _parse_port_map(spec: InstanceSpec) -> tuple[int, list[_PortMapping]]:
    """(host port of sshd, the other mappings) from ``spec.port_map``."""
    mappings: list[_PortMapping] = []
    for key, host_port in spec.port_map.items():
        match = _PORT_KEY_RE.fullmatch(str(key))
        if not match or not 1 <= int(match[1]) <= 65535:
            raise RuntimeFailure(f"port_map key {key!r}: expected '<port>/tcp' or '<port>/udp' with a port 1-65535")
        if isinstance(host_port, bool) or not isinstance(host_port, int) or not 1 <= host_port <= 65535:
            raise RuntimeFailure(f"port_map[{key!r}]={host_port!r}: expected a host port 1-65535")
        mappings.append(_PortMapping(int(match[1]), match[2], host_port))
    ssh = [m for m in mappings if (m.container_port, m.protocol) == (22, "tcp")]
    if not ssh:
        raise RuntimeFailure(f"port_map={spec.port_map!r}: has no '22/tcp', so the instance's sshd has no host port")
    used = [(m.host_port, m.protocol) for m in mappings]
    if len(set(used)) != len(used):
        raise RuntimeFailure(f"port_map={spec.port_map!r}: two container ports share one host port")
    return ssh[0].host_port, [m for m in mappings if m is not ssh[0]]


def _parse_public_subnet(public_subnet: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(public_subnet)
    except ValueError:
        subnet = None
    if subnet is None or not subnet.is_private or subnet.is_loopback or subnet.is_link_local \
            or not 8 <= subnet.prefixlen <= 28:
        raise ConfigError(f"public_subnet={public_subnet!r}: must be a private IPv4 network such as "
                          "'10.213.0.0/16', with a prefix length of 8-28")
    return subnet


def _login_environment(spec: InstanceSpec, venv_bin: str) -> dict[str, str]:
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
    env["PATH"] = f"{venv_bin}:{env.get('PATH', _DEFAULT_PATH)}"
    return env


def _check_public_key(public_key: str) -> str:
    key = public_key.strip() if isinstance(public_key, str) else ""
    if not _KEY_TYPE_RE.match(key) or "\n" in key or "\r" in key:
        raise ConfigError("public_key: expected one OpenSSH public key line such as 'ssh-ed25519 AAAA... comment'")
    return key


# ----------------------------------------------------------------------------------------------------------------
# The runtime


@dataclass
class _Instance:
    """What the runtime holds for one instance; ``lock`` serialises its slow operations (start/stop/destroy)."""

    instance_id: int
    address: ipaddress.IPv4Address
    dir: Path
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    netns_ready: bool = False
    destroyed: bool = False  # set under ``lock``; a caller that waited on the lock must take a fresh record
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)  # the `unshare` holding the PID ns
    overlay_id: int | None = None  # guarded by the runtime's overlay lock

    @property
    def home(self) -> Path:
        return self.dir / "home"


@dataclass
class _Overlay:
    overlay_id: int
    subnet: ipaddress.IPv4Network
    bridge: str
    members: set[int] = field(default_factory=set)


class NetnsRuntime:
    """Emulated instances as Linux namespaces with sshd (see the module docstring). Thread-safe.

    Locks: ``_lock`` guards the tables (short holds, never around a command); each instance's own lock serialises
    its boot/stop/destroy, so instances boot in parallel; ``_overlay_lock`` guards overlay membership and is always
    taken after an instance lock, never before.
    """

    name = "netns"

    def __init__(self, prefix: str = DEFAULT_PREFIX, state_dir: str | os.PathLike[str] | None = None,
                 public_subnet: str = DEFAULT_PUBLIC_SUBNET, boot_timeout_s: float = _BOOT_TIMEOUT_S) -> None:
        if not sys.platform.startswith("linux"):
            raise SkywardError(f"runtime netns needs Linux (network namespaces); this is {sys.platform}. "
                               "Use --runtime none")
        if os.geteuid() != 0:
            raise SkywardError("runtime netns needs root (it creates network namespaces, bridges and an sshd per "
                               "instance); run as root or use --runtime none")
        self._tools, missing = _find_tools()
        if missing:
            raise SkywardError(f"runtime netns: missing {', '.join(missing)}; install them (apt-get install ...)")
        self._names = _check_prefix(prefix)
        self.prefix = prefix
        self._state_dir = _state_dir_for(prefix, state_dir)
        if boot_timeout_s <= 0:
            raise ConfigError(f"boot_timeout_s={boot_timeout_s!r}: must be a positive number of seconds")
        self._boot_timeout_s = boot_timeout_s
        self._subnet = _parse_public_subnet(public_subnet)
        self._host_address = next(self._subnet.hosts())
        self._refuse_leftovers()
        self._refuse_overlapping_subnet()

        self._lock = threading.Lock()
        self._overlay_lock = threading.Lock()
        self._closed = False
        self._instances: dict[int, _Instance] = {}
        self._overlays: dict[int, _Overlay] = {}
        self._used_addresses: set[ipaddress.IPv4Address] = {self._host_address}
        self._next_host = int(self._host_address) + 1
        self._venv_bin = str(Path(sys.prefix) / "bin")
        self._keep_visible = [str(p) for p in _paths_to_keep_visible()]
        try:
            self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
            bridge = self._names.public_bridge
            _run(["ip", "link", "add", bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self._host_address}/{self._subnet.prefixlen}", "dev", bridge])
            _run(["ip", "link", "set", bridge, "up"])
        except BaseException:
            clean_leftovers(prefix, self._state_dir)
            raise
        log.info("netns runtime %s: public bridge %s at %s", prefix, self._names.public_bridge, self._host_address)

    def __repr__(self) -> str:
        return f"NetnsRuntime(prefix={self.prefix!r}, public_subnet='{self._subnet}', instances={len(self._instances)})"

    # -- set-up checks -------------------------------------------------------------------------------------------

    def _refuse_overlapping_subnet(self) -> None:
        """A subnet another interface already has would make the host route one of them wrongly."""
        addresses = json.loads(_run(["ip", "-j", "-4", "addr", "show"]) or "[]")
        for link in addresses:
            for info in link.get("addr_info", []):
                network = ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
                if network.overlaps(self._subnet):
                    raise SkywardError(f"public_subnet='{self._subnet}' overlaps {info['local']}/{info['prefixlen']} "
                                       f"on {link['ifname']}; choose another subnet (or run `skyward-ray emulator "
                                       "clean` if that is a leftover of an earlier emulator)")

    def _refuse_leftovers(self) -> None:
        """Two runtimes with one prefix would tear down each other's instances: refuse, and say how to clean up."""
        found = [f"netns {n}" for n in _netns_names(self._names)] + [f"link {n}" for n in _link_names(self._names)]
        if self._state_dir.exists() and any(self._state_dir.iterdir()):
            found.append(f"dir {self._state_dir}")
        if found:
            raise SkywardError(f"runtime netns: prefix {self.prefix!r} is in use ({', '.join(found[:4])}"
                               f"{', ...' if len(found) > 4 else ''}): another emulator is running, or an earlier one "
                               "crashed; stop it, or run `skyward-ray emulator clean`")

    # -- HostRuntime ---------------------------------------------------------------------------------------------

    @property
    def api_bind_host(self) -> str | None:
        return str(self._host_address)

    def public_ip(self, instance_id: int, machine_public_ip: str) -> str:
        return str(self._instance(instance_id).address)

    def start(self, spec: InstanceSpec) -> None:
        ssh_port, forwards = _parse_port_map(spec)
        if not _HOSTNAME_RE.fullmatch(spec.hostname):
            raise RuntimeFailure(f"hostname={spec.hostname!r}: expected 1-64 letters, digits, '.', '_' or '-'")
        env = _login_environment(spec, self._venv_bin)
        with self._locked_instance(spec.instance_id) as inst:
            if inst.process is not None and inst.process.poll() is None:
                self._merge_authorized_keys(inst, [_check_public_key(k) for k in spec.authorized_keys])
                return  # already running: starting a running container changes nothing else
            began = time.monotonic()
            self._ensure_netns(inst)
            self._write_instance_files(inst, spec, ssh_port, env)
            self._apply_port_forwards(inst, forwards)
            try:
                self._boot(inst, ssh_port, spec.hostname)
                if spec.onstart:
                    self._run_onstart(inst)
            except BaseException:
                self._end_processes(inst)  # a failed boot leaves no half-started instance running
                raise
            log.info("instance %d ready at %s:%d in %.2f s", inst.instance_id, inst.address, ssh_port,
                     time.monotonic() - began)

    def stop(self, instance_id: int) -> None:
        inst = self._get(instance_id)
        if inst is None:
            return
        with inst.lock:
            if not inst.destroyed:
                self._end_processes(inst)

    def destroy(self, instance_id: int) -> None:
        inst = self._get(instance_id)
        if inst is None:
            return
        with inst.lock:
            if inst.destroyed:
                return
            self._end_processes(inst)
            with self._overlay_lock:
                overlay = self._overlays.get(inst.overlay_id) if inst.overlay_id is not None else None
                if overlay is not None:
                    overlay.members.discard(instance_id)
                inst.overlay_id = None
            for link in (self._names.public_veth(instance_id), self._names.overlay_veth(instance_id)):
                _run(["ip", "link", "del", link], check=False)  # deletes both ends; may not exist
            netns = self._names.netns(instance_id)
            if Path("/run/netns", netns).exists():
                _run(["ip", "netns", "del", netns])
            inst.netns_ready, inst.destroyed = False, True
            shutil.rmtree(inst.dir, ignore_errors=True)
            with self._lock:
                self._instances.pop(instance_id, None)
                self._used_addresses.discard(inst.address)  # reusable once the cursor comes round again
        log.info("instance %d destroyed", instance_id)

    def add_authorized_key(self, instance_id: int, public_key: str) -> None:
        key = _check_public_key(public_key)
        with self._locked_instance(instance_id) as inst:
            self._merge_authorized_keys(inst, [key])

    def create_overlay(self, overlay_id: int, subnet: str) -> None:
        self._check_open()
        try:
            network = ipaddress.IPv4Network(subnet)
        except ValueError:
            raise ConfigError(f"subnet={subnet!r}: expected an IPv4 network such as '10.0.0.0/24'") from None
        bridge = self._names.overlay_bridge(overlay_id)
        with self._overlay_lock:
            if overlay_id in self._overlays:
                return
            _run(["ip", "link", "add", bridge, "type", "bridge"])
            _run(["ip", "link", "set", bridge, "up"])  # no address: the host is not on the overlay
            self._overlays[overlay_id] = _Overlay(overlay_id, network, bridge)

    def join_overlay(self, overlay_id: int, instance_id: int, address: str, prefix_len: int) -> None:
        try:
            interface = ipaddress.IPv4Interface(f"{address}/{prefix_len}")
        except ValueError:
            raise ConfigError(f"address={address!r}, prefix_len={prefix_len!r}: expected an IPv4 address and a "
                              "prefix length 0-32") from None
        with self._locked_instance(instance_id) as inst:
            self._ensure_netns(inst)
            with self._overlay_lock:
                overlay = self._overlays.get(overlay_id)
                if overlay is None:
                    raise RuntimeFailure(f"overlay {overlay_id} does not exist on this host")
                if inst.overlay_id == overlay_id:
                    return  # joined before (e.g. before a stop): interfaces outlive the processes
                if inst.overlay_id is not None:
                    raise RuntimeFailure(f"instance {instance_id} is already on overlay {inst.overlay_id}; an "
                                         "instance has one overlay interface (eth0)")
                veth, netns = self._names.overlay_veth(instance_id), self._names.netns(instance_id)
                _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
                try:
                    _run(["ip", "link", "set", veth, "master", overlay.bridge])
                    _run(["ip", "link", "set", veth, "up"])
                    _run(["ip", "-n", netns, "addr", "add", str(interface), "dev", "eth0"])
                    _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
                except RuntimeFailure:
                    _run(["ip", "link", "del", veth], check=False)
                    raise
                inst.overlay_id = overlay_id
                overlay.members.add(instance_id)

    def delete_overlay(self, overlay_id: int) -> None:
        with self._overlay_lock:
            overlay = self._overlays.pop(overlay_id, None)
            if overlay is None:
                return
            for member in sorted(overlay.members):
                _run(["ip", "link", "del", self._names.overlay_veth(member)], check=False)
                inst = self._get(member)
                if inst is not None and inst.overlay_id == overlay_id:
                    inst.overlay_id = None
            _run(["ip", "link", "del", overlay.bridge], check=False)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            instance_ids = list(self._instances)
        for instance_id in instance_ids:
            try:
                self.destroy(instance_id)
            except RuntimeFailure as exc:  # go on: the sweep by name below removes what is left
                log.warning("closing: destroying instance %d failed: %s", instance_id, exc)
        for overlay_id in list(self._overlays):
            self.delete_overlay(overlay_id)
        _run(["ip", "link", "del", self._names.public_bridge], check=False)
        shutil.rmtree(self._state_dir, ignore_errors=True)
        missed = clean_leftovers(self.prefix, self._state_dir)  # by name: whatever a failed step above left
        if missed:
            log.warning("closing netns runtime %s also removed: %s", self.prefix, ", ".join(missed))

    # -- internals ----------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeFailure("the netns runtime is closed")

    def _get(self, instance_id: int) -> _Instance | None:
        with self._lock:
            return self._instances.get(instance_id)

    def _instance(self, instance_id: int) -> _Instance:
        """The instance's record, made (with its public address) on first use; addresses are not reused soon."""
        if isinstance(instance_id, bool) or not isinstance(instance_id, int) or instance_id < 0:
            raise ConfigError(f"instance_id={instance_id!r}: expected a non-negative integer")
        self._names.public_veth(instance_id)  # fail early if the id cannot name an interface
        with self._lock:
            self._check_open()
            inst = self._instances.get(instance_id)
            if inst is None:
                inst = _Instance(instance_id, self._allocate_address(), self._state_dir / f"i{instance_id}")
                self._instances[instance_id] = inst
            return inst

    @contextlib.contextmanager
    def _locked_instance(self, instance_id: int) -> Iterator[_Instance]:
        """The instance's record (made on first use) with its lock held; never one a concurrent destroy retired."""
        while True:
            inst = self._instance(instance_id)
            with inst.lock:
                if inst.destroyed:
                    continue
                self._check_open()
                yield inst
                return

    def _allocate_address(self) -> ipaddress.IPv4Address:
        first, last = int(self._host_address) + 1, int(self._subnet.broadcast_address) - 1
        for _ in range(last - first + 1):
            candidate = ipaddress.IPv4Address(self._next_host)
            self._next_host = self._next_host + 1 if self._next_host < last else first
            if candidate not in self._used_addresses:
                self._used_addresses.add(candidate)
                return candidate
        raise RuntimeFailure(f"public_subnet {self._subnet} has no free address left")

    def _ensure_netns(self, inst: _Instance) -> None:
        """The instance's network namespace with ``lo`` and ``eth1`` on the public bridge (isolated port)."""
        if inst.netns_ready:
            return
        netns, veth = self._names.netns(inst.instance_id), self._names.public_veth(inst.instance_id)
        _run(["ip", "netns", "add", netns])
        try:
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth1", "netns", netns])
            _run(["ip", "link", "set", veth, "master", self._names.public_bridge])
            _run(["bridge", "link", "set", "dev", veth, "isolated", "on"])
            _run(["ip", "link", "set", veth, "up"])
            _run(["ip", "-n", netns, "addr", "add", f"{inst.address}/{self._subnet.prefixlen}", "dev", "eth1"])
            _run(["ip", "-n", netns, "link", "set", "eth1", "up"])
            _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        except RuntimeFailure:
            _run(["ip", "link", "del", veth], check=False)
            _run(["ip", "netns", "del", netns], check=False)
            raise
        inst.netns_ready = True

    def _write_instance_files(self, inst: _Instance, spec: InstanceSpec, ssh_port: int, env: dict[str, str]) -> None:
        """Everything sshd and the login shell read, rewritten on each boot (a restart may bring new keys/env)."""
        ssh_dir = inst.home / ".ssh"
        inst.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        inst.home.mkdir(mode=0o700, exist_ok=True)
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        host_key = inst.dir / "ssh_host_ed25519_key"
        if not host_key.exists():
            _run([self._tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", spec.hostname, "-f",
                  str(host_key)])
        self._merge_authorized_keys(inst, [_check_public_key(k) for k in spec.authorized_keys])
        # Plain `ssh host cmd`: sshd puts these in the session's environment (PermitUserEnvironment).
        _write(ssh_dir / "environment", "".join(f"{k}={v}\n" for k, v in env.items()), 0o600)
        # Login shells: Debian's /etc/profile resets root's PATH, so ~/.profile and ~/.bashrc set it again.
        exports = "".join(f"export {k}={_sh_quote(v)}\n" for k, v in env.items())
        _write(inst.home / ".container_env", "# written by the emulator at every boot\n" + exports, 0o600)
        profile, bashrc = inst.home / ".profile", inst.home / ".bashrc"
        if not profile.exists():
            _write(profile, '[ -f "$HOME/.container_env" ] && . "$HOME/.container_env"\n'
                            '[ -n "$BASH_VERSION" ] && [ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"\n', 0o644)
        if not bashrc.exists():
            _write(bashrc, '[ -f "$HOME/.container_env" ] && . "$HOME/.container_env"\n', 0o644)
        (inst.home / ".no_auto_tmux").touch()
        if spec.onstart:
            _write(inst.home / "onstart.sh", spec.onstart if spec.onstart.endswith("\n") else spec.onstart + "\n",
                   0o700)
        _write(inst.dir / "hosts", f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                                   f"{inst.address}\t{spec.hostname}\n", 0o644)
        _write(inst.dir / "sshd_config", "\n".join([
            f"ListenAddress {inst.address}:{ssh_port}",
            "ListenAddress 0.0.0.0:22",
            f"HostKey {host_key}",
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
            "",
        ]), 0o600)

    def _merge_authorized_keys(self, inst: _Instance, keys: Iterable[str]) -> None:
        path = inst.home / ".ssh" / "authorized_keys"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        present = path.read_text().splitlines() if path.exists() else []
        merged = present + [k for k in dict.fromkeys(keys) if k not in present]
        if merged != present or not path.exists():
            _write(path, "".join(f"{k}\n" for k in merged), 0o600)

    def _apply_port_forwards(self, inst: _Instance, forwards: list[_PortMapping]) -> None:
        """nftables redirects for the non-SSH mappings, replacing the previous set atomically (one ``nft -f``)."""
        table = self._names.nft_table
        incoming = "".join(f'    iifname "eth1" {m.protocol} dport {m.host_port} redirect to :{m.container_port}\n'
                           for m in forwards if m.host_port != m.container_port)
        hairpin = "".join(f"    ip daddr {inst.address} {m.protocol} dport {m.host_port} redirect to "
                          f":{m.container_port}\n" for m in forwards if m.host_port != m.container_port)
        ruleset = (f"table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n"
                   "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n"
                   f"{incoming}  }}\n"
                   "  chain output {\n    type nat hook output priority -100; policy accept;\n"
                   f"{hairpin}  }}\n}}\n")
        _run(["ip", "netns", "exec", self._names.netns(inst.instance_id), self._tools["nft"], "-f", "-"],
             stdin=ruleset)

    def _boot(self, inst: _Instance, ssh_port: int, hostname: str) -> None:
        netns = self._names.netns(inst.instance_id)
        argv = ["ip", "netns", "exec", netns, self._tools["unshare"], "--pid", "--fork", "--mount-proc", "--uts",
                "--ipc", "--mount", "--kill-child", "/bin/sh", str(_INIT_SCRIPT), str(inst.dir),
                hostname, self._tools["sshd"], *self._keep_visible]
        log_path = inst.dir / "sshd.log"
        with open(log_path, "ab") as log_file:
            # A clean environment: the emulator's own (which may hold an account key) must not reach the instance.
            inst.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                            start_new_session=True, env={"PATH": _DEFAULT_PATH, "LANG": "C.UTF-8"})
        deadline = time.monotonic() + self._boot_timeout_s
        while not _ssh_banner(str(inst.address), ssh_port):
            if inst.process.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                inst.process = None
                raise RuntimeFailure(f"instance {inst.instance_id}: sshd exited during boot: {' | '.join(tail)}")
            if time.monotonic() >= deadline:
                self._end_processes(inst)
                raise RuntimeFailure(f"instance {inst.instance_id}: sshd did not accept connections on "
                                     f"{inst.address}:{ssh_port} within {self._boot_timeout_s:.0f} s")
            time.sleep(_POLL_S)

    def _run_onstart(self, inst: _Instance) -> None:
        """Run ~/onstart.sh as a login shell inside the instance, detached: its PID 1 (sshd) adopts and reaps it."""
        init_pids = _child_pids(inst.process.pid) if inst.process else []
        if not init_pids:
            raise RuntimeFailure(f"instance {inst.instance_id}: cannot find its PID 1 to run onstart in")
        argv = [self._tools["nsenter"], "--target", str(init_pids[0]), "--mount", "--uts", "--ipc", "--net", "--pid",
                "--wd=/root", "--", self._tools["setsid"], "-f", "/bin/bash", "--login", "/root/onstart.sh"]
        with open(inst.home / "onstart.log", "ab") as out:
            launcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                        start_new_session=True,
                                        env={"PATH": _DEFAULT_PATH, "HOME": "/root", "USER": "root",
                                             "LOGNAME": "root", "SHELL": "/bin/bash", "TERM": "dumb"})
        try:
            launcher.wait(timeout=_COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            raise RuntimeFailure(f"instance {inst.instance_id}: starting onstart timed out") from None

    def _end_processes(self, inst: _Instance) -> None:
        """End the instance's whole PID namespace (SIGKILL to its PID 1, by PID), then any straggler in its netns."""
        process, inst.process = inst.process, None
        if process is not None and process.poll() is None:
            for pid in _child_pids(process.pid):  # the namespace's PID 1; its death ends every process in it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                process.wait(timeout=_KILL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=_KILL_TIMEOUT_S)
        if inst.netns_ready:
            _kill_netns_processes(self._names.netns(inst.instance_id))


def _ssh_banner(host: str, port: int) -> bool:
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
    names = _check_prefix(prefix)
    directory = _state_dir_for(prefix, state_dir)
    removed: list[str] = []
    namespaces = _netns_names(names)
    for netns in namespaces:
        removed += [f"process {pid} (in {netns})" for pid in _kill_netns_processes(netns)]
    for link in sorted(_link_names(names), key=names.is_bridge):  # veths (each takes its peer along), then bridges
        _run(["ip", "link", "del", link], check=False)
        removed.append(f"link {link}")
    for netns in namespaces:
        _run(["ip", "netns", "del", netns], check=False)
        removed.append(f"netns {netns}")
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(f"dir {directory}")
    if removed:
        log.info("removed leftovers of prefix %s: %s", prefix, ", ".join(removed))
    return removed

