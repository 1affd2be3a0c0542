"""Host runtimes: what stands behind an emulated instance. The market decides *when* an instance boots, stops, joins
an overlay or dies; a runtime makes it real (``none``: records only; ``netns``: Linux namespaces with an sshd). The
market calls these methods outside its lock, because they can take a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a runtime needs to bring one instance up."""

    instance_id: int
    machine_id: int
    hostname: str
    num_gpus: int
    # Container port -> public host port, in Vast's key shape: {"22/tcp": 41022, "8265/tcp": 40111}.
    port_map: dict[str, int]
    # The login environment: CONTAINER_ID, CONTAINER_API_KEY, VAST_TCP_PORT_*, plus the user's env (never the
    # account key).
    env: dict[str, str] = field(repr=False)
    authorized_keys: tuple[str, ...] = ()
    onstart: str | None = field(default=None, repr=False)


class RuntimeFailure(Exception):
    """The host could not start the instance; the market marks it ``exited`` with this message."""


class HostRuntime(Protocol):
    """What the market needs from a host runtime. Implementations must be thread-safe."""

    name: str

    @property
    def api_bind_host(self) -> str | None:
        """An extra address the API must also listen on so instances can reach it (netns: the public bridge)."""

    def public_ip(self, instance_id: int, machine_public_ip: str) -> str:
        """The ``public_ipaddr`` an instance shows (netns: its own address on the public bridge)."""

    def start(self, spec: InstanceSpec) -> None:
        """Boot the instance; return once its sshd accepts connections. Raise RuntimeFailure otherwise."""

    def stop(self, instance_id: int) -> None:
        """End the instance's processes (a stopped or interrupted container); idempotent."""

    def destroy(self, instance_id: int) -> None:
        """End everything the instance had: processes, interfaces, files; idempotent."""

    def add_authorized_key(self, instance_id: int, public_key: str) -> None:
        """Let ``public_key`` log in as root (``POST /instances/{id}/ssh/``)."""

    def create_overlay(self, overlay_id: int, subnet: str) -> None: ...

    def join_overlay(self, overlay_id: int, instance_id: int, address: str, prefix_len: int) -> None:
        """Give the instance ``eth0`` with ``address/prefix_len`` on the overlay's own network."""

    def delete_overlay(self, overlay_id: int) -> None: ...

    def close(self) -> None:
        """Remove everything this runtime made."""


class NoneRuntime:
    """Instances are records only: nothing runs, every call succeeds at once. ``eth0`` remembers the overlay address
    each instance would carry on its ``eth0`` (as the netns runtime does), since no API field shows it."""

    name = "none"

    def __init__(self) -> None:
        self.eth0: dict[int, str] = {}  # instance id -> "10.0.1.2/24"

    @property
    def api_bind_host(self) -> str | None:
        return None

    def public_ip(self, instance_id: int, machine_public_ip: str) -> str:
        return machine_public_ip

    def start(self, spec: InstanceSpec) -> None:
        return None

    def stop(self, instance_id: int) -> None:
        return None

    def destroy(self, instance_id: int) -> None:
        self.eth0.pop(instance_id, None)

    def add_authorized_key(self, instance_id: int, public_key: str) -> None:
        return None

    def create_overlay(self, overlay_id: int, subnet: str) -> None:
        return None

    def join_overlay(self, overlay_id: int, instance_id: int, address: str, prefix_len: int) -> None:
        self.eth0[instance_id] = f"{address}/{prefix_len}"

    def delete_overlay(self, overlay_id: int) -> None:
        return None

    def close(self) -> None:
        return None
