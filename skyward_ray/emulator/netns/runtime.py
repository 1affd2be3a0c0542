"""``NetnsRuntime``: each emulated instance is Linux namespaces with its own sshd, each overlay a bridge.

A public bridge stands for Vast's NAT (isolated ports: the host reaches every instance, instances do not reach each
other over public addresses, nothing leaves the machine); an overlay bridge has no host address. PID 1 of each
instance is its sshd, so ending it ends every process of the instance.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from skyward_ray.emulator.netns.commands import (
    COMMAND_TIMEOUT_S,
    DEFAULT_PATH,
    DEFAULT_PREFIX,
    KILL_TIMEOUT_S,
    POLL_S,
    check_prefix,
    child_pids,
    clean_leftovers,
    find_tools,
    kill_netns_processes,
    link_names,
    netns_names,
    run,
    ssh_banner,
    state_dir_for,
)
from skyward_ray.emulator.netns.instance_files import (
    PortMapping,
    check_hostname,
    check_public_key,
    login_environment,
    merge_authorized_keys,
    parse_port_map,
    parse_public_subnet,
    paths_to_keep_visible,
    port_forward_ruleset,
    write_login_files,
    write_sshd_files,
)
from skyward_ray.emulator.process import log_tail
from skyward_ray.emulator.runtime import InstanceSpec, RuntimeFailure
from skyward_ray.errors import ConfigError, SkywardError

log = logging.getLogger(__name__)

DEFAULT_PUBLIC_SUBNET = "10.213.0.0/16"
_INIT_SCRIPT = Path(__file__).with_name("init.sh")
_BOOT_TIMEOUT_S = 20.0


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
    """Emulated instances as Linux namespaces with sshd (Linux, root). Thread-safe.

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
        self._tools, missing = find_tools()
        if missing:
            raise SkywardError(f"runtime netns: missing {', '.join(missing)}; install them (apt-get install ...)")
        self._names = check_prefix(prefix)
        self.prefix = prefix
        self._state_dir = state_dir_for(prefix, state_dir)
        if boot_timeout_s <= 0:
            raise ConfigError(f"boot_timeout_s={boot_timeout_s!r}: must be a positive number of seconds")
        self._boot_timeout_s = boot_timeout_s
        self._subnet = parse_public_subnet(public_subnet)
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
        self._keep_visible = [str(p) for p in paths_to_keep_visible()]
        self._make_public_bridge()

    def _make_public_bridge(self) -> None:
        try:
            self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
            bridge = self._names.public_bridge
            run(["ip", "link", "add", bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{self._host_address}/{self._subnet.prefixlen}", "dev", bridge])
            run(["ip", "link", "set", bridge, "up"])
        except BaseException:
            clean_leftovers(self.prefix, self._state_dir)
            raise
        log.info("netns runtime %s: public bridge %s at %s", self.prefix, self._names.public_bridge,
                 self._host_address)

    def __repr__(self) -> str:
        return f"NetnsRuntime(prefix={self.prefix!r}, public_subnet='{self._subnet}', instances={len(self._instances)})"

    # -- set-up checks -------------------------------------------------------------------------------------------

    def _refuse_overlapping_subnet(self) -> None:
        """A subnet another interface already has would make the host route one of them wrongly."""
        addresses = json.loads(run(["ip", "-j", "-4", "addr", "show"]) or "[]")
        for link in addresses:
            for info in link.get("addr_info", []):
                network = ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
                if network.overlaps(self._subnet):
                    raise SkywardError(f"public_subnet='{self._subnet}' overlaps {info['local']}/{info['prefixlen']} "
                                       f"on {link['ifname']}; choose another subnet (or run `skyward-ray emulator "
                                       "clean` if that is a leftover of an earlier emulator)")

    def _refuse_leftovers(self) -> None:
        """Two runtimes with one prefix would tear down each other's instances: refuse, and say how to clean up."""
        found = [f"netns {n}" for n in netns_names(self._names)] + [f"link {n}" for n in link_names(self._names)]
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
        ssh_port, forwards = parse_port_map(spec)
        check_hostname(spec.hostname)
        env = login_environment(spec, self._venv_bin)
        with self._locked_instance(spec.instance_id) as inst:
            if inst.process is not None and inst.process.poll() is None:
                merge_authorized_keys(inst.home, [check_public_key(k) for k in spec.authorized_keys])
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
                run(["ip", "link", "del", link], check=False)  # deletes both ends; may not exist
            netns = self._names.netns(instance_id)
            if Path("/run/netns", netns).exists():
                run(["ip", "netns", "del", netns])
            inst.netns_ready, inst.destroyed = False, True
            shutil.rmtree(inst.dir, ignore_errors=True)
            with self._lock:
                self._instances.pop(instance_id, None)
                self._used_addresses.discard(inst.address)  # reusable once the cursor comes round again
        log.info("instance %d destroyed", instance_id)

    def add_authorized_key(self, instance_id: int, public_key: str) -> None:
        key = check_public_key(public_key)
        with self._locked_instance(instance_id) as inst:
            merge_authorized_keys(inst.home, [key])

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
            run(["ip", "link", "add", bridge, "type", "bridge"])
            run(["ip", "link", "set", bridge, "up"])  # no address: the host is not on the overlay
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
                self._add_overlay_interface(overlay, instance_id, interface)
                inst.overlay_id = overlay_id
                overlay.members.add(instance_id)

    def _add_overlay_interface(self, overlay: _Overlay, instance_id: int, interface: ipaddress.IPv4Interface) -> None:
        """``eth0`` in the instance, its peer on the overlay's bridge."""
        veth, netns = self._names.overlay_veth(instance_id), self._names.netns(instance_id)
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        try:
            run(["ip", "link", "set", veth, "master", overlay.bridge])
            run(["ip", "link", "set", veth, "up"])
            run(["ip", "-n", netns, "addr", "add", str(interface), "dev", "eth0"])
            run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        except RuntimeFailure:
            run(["ip", "link", "del", veth], check=False)
            raise

    def delete_overlay(self, overlay_id: int) -> None:
        with self._overlay_lock:
            overlay = self._overlays.pop(overlay_id, None)
            if overlay is None:
                return
            for member in sorted(overlay.members):
                run(["ip", "link", "del", self._names.overlay_veth(member)], check=False)
                inst = self._get(member)
                if inst is not None and inst.overlay_id == overlay_id:
                    inst.overlay_id = None
            run(["ip", "link", "del", overlay.bridge], check=False)

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
        run(["ip", "link", "del", self._names.public_bridge], check=False)
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
        run(["ip", "netns", "add", netns])
        try:
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth1", "netns", netns])
            run(["ip", "link", "set", veth, "master", self._names.public_bridge])
            run(["bridge", "link", "set", "dev", veth, "isolated", "on"])
            run(["ip", "link", "set", veth, "up"])
            run(["ip", "-n", netns, "addr", "add", f"{inst.address}/{self._subnet.prefixlen}", "dev", "eth1"])
            run(["ip", "-n", netns, "link", "set", "eth1", "up"])
            run(["ip", "-n", netns, "link", "set", "lo", "up"])
        except RuntimeFailure:
            run(["ip", "link", "del", veth], check=False)
            run(["ip", "netns", "del", netns], check=False)
            raise
        inst.netns_ready = True

    def _write_instance_files(self, inst: _Instance, spec: InstanceSpec, ssh_port: int, env: dict[str, str]) -> None:
        """Everything sshd and the login shell read, rewritten on each boot (a restart may bring new keys/env)."""
        inst.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        inst.home.mkdir(mode=0o700, exist_ok=True)
        (inst.home / ".ssh").mkdir(mode=0o700, exist_ok=True)
        host_key = inst.dir / "ssh_host_ed25519_key"
        if not host_key.exists():
            run([self._tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", spec.hostname, "-f",
                 str(host_key)])
        merge_authorized_keys(inst.home, [check_public_key(k) for k in spec.authorized_keys])
        write_login_files(inst.home, env, spec.onstart)
        write_sshd_files(inst.dir, inst.address, spec.hostname, ssh_port, host_key)

    def _apply_port_forwards(self, inst: _Instance, forwards: list[PortMapping]) -> None:
        """The non-SSH mappings as nftables redirects inside the namespace, replaced atomically (one ``nft -f``)."""
        ruleset = port_forward_ruleset(self._names.nft_table, inst.address, forwards)
        run(["ip", "netns", "exec", self._names.netns(inst.instance_id), self._tools["nft"], "-f", "-"],
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
                                            start_new_session=True, env={"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"})
        deadline = time.monotonic() + self._boot_timeout_s
        while not ssh_banner(str(inst.address), ssh_port):
            if inst.process.poll() is not None:
                inst.process = None
                raise RuntimeFailure(f"instance {inst.instance_id}: sshd exited during boot: "
                                     f"{' | '.join(log_tail(log_path, 3))}")
            if time.monotonic() >= deadline:
                self._end_processes(inst)
                raise RuntimeFailure(f"instance {inst.instance_id}: sshd did not accept connections on "
                                     f"{inst.address}:{ssh_port} within {self._boot_timeout_s:.0f} s")
            time.sleep(POLL_S)

    def _run_onstart(self, inst: _Instance) -> None:
        """Run ~/onstart.sh as a login shell inside the instance, detached: its PID 1 (sshd) adopts and reaps it."""
        init_pids = child_pids(inst.process.pid) if inst.process else []
        if not init_pids:
            raise RuntimeFailure(f"instance {inst.instance_id}: cannot find its PID 1 to run onstart in")
        argv = [self._tools["nsenter"], "--target", str(init_pids[0]), "--mount", "--uts", "--ipc", "--net", "--pid",
                "--wd=/root", "--", self._tools["setsid"], "-f", "/bin/bash", "--login", "/root/onstart.sh"]
        with open(inst.home / "onstart.log", "ab") as out:
            launcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                        start_new_session=True,
                                        env={"PATH": DEFAULT_PATH, "HOME": "/root", "USER": "root",
                                             "LOGNAME": "root", "SHELL": "/bin/bash", "TERM": "dumb"})
        try:
            launcher.wait(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            raise RuntimeFailure(f"instance {inst.instance_id}: starting onstart timed out") from None

    def _end_processes(self, inst: _Instance) -> None:
        """End the instance's whole PID namespace (SIGKILL to its PID 1, by PID), then any straggler in its netns."""
        process, inst.process = inst.process, None
        if process is not None and process.poll() is None:
            for pid in child_pids(process.pid):  # the namespace's PID 1; its death ends every process in it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                process.wait(timeout=KILL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=KILL_TIMEOUT_S)
        if inst.netns_ready:
            kill_netns_processes(self._names.netns(inst.instance_id))
