"""Where a pool's Ray cluster comes from: attach to one that exists, or launch one and own it.

A :class:`Launcher` turns a :class:`~skyward_ray.sky.spec.PoolSpec` into a :class:`ClusterHandle` and removes what it
made; the pool never tears down a cluster it did not create. :class:`AttachLauncher` and :class:`LocalLauncher` live
here; :class:`~skyward_ray.sky.vast_launcher.VastLauncher` launches the pool's own cluster on Vast.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from skyward_ray.errors import ConfigError, SkywardError

if TYPE_CHECKING:
    from skyward_ray.sky.spec import PoolSpec

log = logging.getLogger(__name__)


class LaunchError(SkywardError):
    """A pool could not get a Ray cluster (nothing to attach to, or the launch failed)."""


@dataclass(frozen=True)
class ClusterHandle:
    """A Ray cluster a pool can connect to."""

    address: str  # what ray.init(address=...) takes
    created: bool  # True when the launcher made the cluster, so the pool's exit must remove it
    nodes: int | None = None  # how many nodes the launcher brought up; None when unknown (attach)
    driver_ip: str | None = None  # the address this driver registers with (the local raylet's IP), if it matters
    image_installed: bool = False  # True when the launcher ran the image's setup commands on every node
    description: str = ""


class Launcher(Protocol):
    """Brings up a Ray cluster for a pool and takes it down again. ``down`` must be safe to call twice."""

    def up(self, spec: PoolSpec) -> ClusterHandle: ...

    def down(self) -> None: ...


def cluster_address_file() -> Path:
    """Where ``ray start`` records the address of the cluster this machine belongs to (honours ``RAY_TMPDIR``)."""
    from ray._common.utils import get_ray_address_file  # private, but it is the one place Ray computes this path

    return Path(get_ray_address_file(None))


def discover_address(explicit: str | None) -> str | None:
    """The cluster to attach to, if any: ``address=``, then ``RAY_ADDRESS``, then this node's own cluster."""
    if explicit:
        return explicit
    if os.environ.get("RAY_ADDRESS", "").strip():
        return os.environ["RAY_ADDRESS"].strip()
    try:
        recorded = cluster_address_file().read_text().strip()
    except OSError:
        return None
    return recorded or None


class AttachLauncher:
    """Use an existing cluster as it is: connect, and leave it exactly as found.

    Chosen when an address was given (``address=``, ``RAY_ADDRESS``), this process is already connected, or the
    script runs on a node of a Ray cluster (``ray submit``).
    """

    def __init__(self, address: str) -> None:
        self.address = address

    def up(self, spec: PoolSpec) -> ClusterHandle:
        return ClusterHandle(address=self.address, created=False, description=f"attached to {self.address}")

    def down(self) -> None:
        return None


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _ray_tmpdir(path: str) -> Iterator[None]:
    """Point Ray's default temp dir at ``path`` while a local cluster starts or stops.

    ``cluster_utils.Cluster`` writes, and on shutdown deletes, the machine-wide "current cluster" file in the default
    temp dir; other Ray users on this machine (``ray.init(address="auto")``) read it. Redirecting it keeps a local
    pool from hijacking or deleting theirs.
    """
    with _ENV_LOCK:
        previous = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = path
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = previous


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalLauncher:
    """N Ray nodes on this machine, one raylet each, with their own IPs 127.0.0.2, 127.0.0.3, ...

    Every port is picked free (no fixed 6379), the dashboard is off, and all state lives in a private temp dir that
    :meth:`down` removes, so several local clusters and other Ray users can share the machine. ``gpus_per_node`` adds
    logical GPUs (Ray sets ``CUDA_VISIBLE_DEVICES`` for them) to test GPU scheduling without GPUs.
    """

    def __init__(
        self,
        nodes: int | None = None,
        cpus_per_node: int = 1,
        gpus_per_node: int | Sequence[int] = 0,
        first_ip: str = "127.0.0.2",
        object_store_mb: int = 80,
    ) -> None:
        if nodes is not None and (isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1):
            raise ConfigError(f"LocalLauncher.nodes: {nodes!r} is not allowed; allowed: an integer >= 1 or None")
        address = ipaddress.IPv4Address(first_ip)
        if not address.is_loopback or address == ipaddress.IPv4Address("127.0.0.1"):
            raise ConfigError(
                f"LocalLauncher.first_ip: {first_ip!r} is not allowed; allowed: a loopback address other than "
                "127.0.0.1 (Ray rewrites 127.0.0.1 to the machine's routable IP)"
            )
        self.nodes = nodes
        self.cpus_per_node = cpus_per_node
        self.gpus_per_node = gpus_per_node
        self.first_ip = address
        self.object_store_bytes = object_store_mb * 1024 * 1024
        self._cluster: Any = None
        self._tmp: str | None = None

    def _gpus(self, index: int) -> int:
        if isinstance(self.gpus_per_node, int):
            return self.gpus_per_node
        return self.gpus_per_node[index] if index < len(self.gpus_per_node) else 0

    def up(self, spec: PoolSpec) -> ClusterHandle:
        from ray.cluster_utils import Cluster

        if self._cluster is not None:
            raise LaunchError("this LocalLauncher already runs a cluster; take it down first")
        count = self.nodes or spec.nodes
        # Short path: Ray puts unix sockets under it (108-byte limit).
        self._tmp = tempfile.mkdtemp(prefix="skyr-", dir="/tmp")
        temp_dir = os.path.join(self._tmp, "ray")
        ips = [str(self.first_ip + i) for i in range(count)]
        common = {"include_dashboard": False, "num_cpus": self.cpus_per_node, "temp_dir": temp_dir,
                  "object_store_memory": self.object_store_bytes, "dashboard_agent_listen_port": None}
        try:
            with _ray_tmpdir(self._tmp):
                self._cluster = Cluster(
                    initialize_head=True,
                    head_node_args={**common, "node_ip_address": ips[0], "num_gpus": self._gpus(0),
                                    "gcs_server_port": free_port(ips[0])},
                )
                for index, ip in enumerate(ips[1:], start=1):
                    self._cluster.add_node(**common, node_ip_address=ip, num_gpus=self._gpus(index))
                self._cluster.wait_for_nodes()
        except BaseException:
            self.down()
            raise
        address = self._cluster.address
        log.info("local Ray cluster up: %d node(s) %s, GCS %s", count, ", ".join(ips), address)
        return ClusterHandle(address=address, created=True, nodes=count, driver_ip=ips[0],
                             description=f"local Ray cluster of {count} node(s) at {address}")

    @property
    def temp_dir(self) -> str | None:
        """The private directory holding this cluster's sessions, sockets and logs (removed by :meth:`down`)."""
        return self._tmp

    def pids(self) -> list[int]:
        """Process ids of every Ray process this launcher started (for leak checks)."""
        if self._cluster is None:
            return []
        return [
            info.process.pid
            for node in self._cluster.list_all_nodes()
            for infos in node.all_processes.values()
            for info in infos
            if info.process is not None
        ]

    def down(self) -> None:
        cluster, self._cluster = self._cluster, None
        tmp, self._tmp = self._tmp, None
        try:
            if cluster is not None:
                with _ray_tmpdir(tmp or ""):
                    cluster.shutdown()
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
