"""Typed views of what the Vast REST API returns.

The wire is loose (numbers as strings, ``HostPort`` as text, trailing whitespace, nulls anywhere, fields added
without notice), so every model here accepts unknown fields and normalises the known quirks in one place. Callers
read the properties (``ssh_endpoint``, ``state``, ``overlay_ip``) instead of re-deriving them from raw fields.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class WireModel(BaseModel):
    """Base for wire objects: tolerant of unknown fields, so a new Vast field never breaks a parse."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


class Offer(WireModel):
    """One rentable bundle from ``POST /api/v0/bundles/``; ``id`` is the ask id that ``PUT /asks/{id}/`` rents."""

    id: int
    machine_id: int
    host_id: int | None = None
    cluster_id: int | None = None
    gpu_name: str
    num_gpus: int
    gpu_ram: float | None = None  # MB per GPU
    gpu_total_ram: float | None = None
    cuda_max_good: float | None = None
    compute_cap: int | None = None
    dph_total: float
    dph_base: float | None = None
    min_bid: float | None = None
    storage_cost: float | None = None  # $/GB/month
    reliability: float | None = None
    reliability2: float | None = None
    verification: str | None = None
    vericode: int | None = None
    hosting_type: int | None = None
    geolocation: str | None = None
    inet_up: float | None = None
    inet_down: float | None = None
    disk_space: float | None = None
    direct_port_count: int | None = None
    cpu_cores: int | None = None
    cpu_ram: float | None = None
    public_ipaddr: str | None = None
    rentable: bool | None = None
    rented: bool | None = None
    is_bid: bool | None = None

    @field_validator("public_ipaddr", "geolocation", "verification", mode="before")
    @classmethod
    def _strip_text(cls, value: Any) -> Any:
        value = _blank_to_none(value)
        return value.strip() if isinstance(value, str) else value

    @field_validator("cluster_id", "host_id", "direct_port_count", "cpu_cores", "compute_cap", mode="before")
    @classmethod
    def _intish(cls, value: Any) -> Any:
        value = _blank_to_none(value)
        if isinstance(value, str):
            return int(float(value))
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @property
    def effective_reliability(self) -> float:
        """``reliability2`` is what Vast filters on; fall back to ``reliability``, else 0."""
        for value in (self.reliability2, self.reliability):
            if value is not None:
                return value
        return 0.0

    @property
    def country_code(self) -> str | None:
        """The two-letter code that ends Vast's free-text location ("California, US" -> "US")."""
        if not self.geolocation:
            return None
        tail = self.geolocation.rsplit(",", 1)[-1].strip()
        return tail[-2:].upper() if len(tail) >= 2 else None

    @property
    def verified(self) -> bool:
        return self.verification == "verified" or self.vericode == 1

    @property
    def datacenter(self) -> bool:
        return self.hosting_type == 1


class PortBinding(WireModel):
    """One Docker port binding; Vast sends ``HostPort`` as a string."""

    host_ip: str | None = Field(default=None, alias="HostIp")
    host_port: int = Field(alias="HostPort")

    @field_validator("host_port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> Any:
        return int(str(value).strip()) if value is not None else value


class NodeState(str, enum.Enum):
    """What an instance means to a provider, derived from Vast's several status fields in ONE place
    (:meth:`Instance.state`)."""

    PENDING = "pending"
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # an interruptible instance stopped by an outbid (or a bid rejected at create)
    FAILED = "failed"  # will never become usable: exited, offline, unknown, OCI failure, stopped on-demand
    GONE = "gone"  # destroyed or never existed


_PENDING_STATUSES = frozenset({None, "", "created", "loading", "rebooting", "restarting", "scheduling"})
_FAILED_STATUSES = frozenset({"exited", "unknown", "offline", "error"})
_STOPPED_STATUSES = frozenset({"stopped", "frozen", "inactive"})
OCI_FAILURE_MARKER = ": OCI runtime create failed:"


class Instance(WireModel):
    """One rented instance (``GET /api/v0/instances/{id}/`` or a row of ``GET /api/v1/instances/``)."""

    id: int
    machine_id: int | None = None
    host_id: int | None = None
    cluster_id: int | None = None
    actual_status: str | None = None
    intended_status: str | None = None
    cur_state: str | None = None
    next_state: str | None = None
    status_msg: str | None = None
    label: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    public_ipaddr: str | None = None
    local_ipaddrs: list[str] = Field(default_factory=list)
    ports: dict[str, list[PortBinding]] | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    dph_total: float | None = None
    min_bid: float | None = None
    is_bid: bool | None = None
    geolocation: str | None = None
    start_date: float | None = None
    image_uuid: str | None = None
    extra_env: list[list[str]] | dict[str, str] | None = None

    @field_validator("public_ipaddr", "ssh_host", "label", "actual_status", "intended_status", "cur_state",
                     "next_state", mode="before")
    @classmethod
    def _strip_text(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("public_ipaddr", "ssh_host", mode="after")
    @classmethod
    def _empty_address(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("ssh_port", "machine_id", "host_id", "cluster_id", "num_gpus", mode="before")
    @classmethod
    def _intish(cls, value: Any) -> Any:
        value = _blank_to_none(value)
        if isinstance(value, str):
            return int(float(value))
        return value

    @field_validator("local_ipaddrs", mode="before")
    @classmethod
    def _split_addresses(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return value.split()
        return value

    @field_validator("ports", mode="before")
    @classmethod
    def _drop_empty_ports(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: bindings for key, bindings in value.items() if bindings}
        return value

    @model_validator(mode="after")
    def _no_blank_label(self) -> Instance:
        if self.label == "":
            self.label = None
        return self

    def host_port(self, container_port: int, proto: str = "tcp") -> int | None:
        """The public port Vast mapped to ``container_port``, or None while unmapped."""
        bindings = (self.ports or {}).get(f"{container_port}/{proto}") or []
        return bindings[0].host_port if bindings else None

    @property
    def ssh_direct(self) -> tuple[str, int] | None:
        port = self.host_port(22)
        if self.public_ipaddr and port:
            return self.public_ipaddr, port
        return None

    @property
    def ssh_proxy(self) -> tuple[str, int] | None:
        if self.ssh_host and self.ssh_port:
            return self.ssh_host, self.ssh_port
        return None

    @property
    def ssh_endpoint(self) -> tuple[str, int] | None:
        """Where to SSH: the direct mapping of 22/tcp when there is one, else Vast's proxy gateway."""
        return self.ssh_direct or self.ssh_proxy

    @property
    def interrupted(self) -> bool:
        """dstack's outbid test: all three state fields say stopped, on an interruptible instance."""
        stopped = {self.cur_state, self.intended_status, self.next_state} == {"stopped"}
        return bool(self.is_bid) and (stopped or self.actual_status in _STOPPED_STATUSES)

    @property
    def state(self) -> NodeState:
        """The one mapping from Vast's status fields to a provider's view of the node."""
        status = (self.actual_status or "").lower() or None
        if self.status_msg and OCI_FAILURE_MARKER in self.status_msg:
            return NodeState.FAILED
        if self.interrupted:
            return NodeState.INTERRUPTED
        if status in _FAILED_STATUSES:
            return NodeState.FAILED
        if status in _STOPPED_STATUSES:
            return NodeState.FAILED  # a stopped on-demand instance is not coming back by itself
        if status == "running":
            return NodeState.RUNNING
        if status in _PENDING_STATUSES:
            return NodeState.PENDING
        return NodeState.PENDING

    @property
    def ready(self) -> bool:
        """Running with an SSH endpoint: the moment Ray may install itself."""
        return self.state is NodeState.RUNNING and self.ssh_endpoint is not None


def node_state(instance: Instance | None) -> NodeState:
    """State of a possibly-missing instance (``{"instances": null}`` means destroyed)."""
    return NodeState.GONE if instance is None else instance.state


class Overlay(WireModel):
    """One overlay network from ``GET /api/v0/overlay/`` (a bare array on the wire)."""

    overlay_id: int
    name: str
    cluster_id: int | None = None
    internal_subnet: str | None = None
    instances: list[int] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _subnet_alias(cls, data: Any) -> Any:
        # The CLI's own test mock says ``subnet``; the CLI code reads ``internal_subnet``.
        if isinstance(data, dict) and "internal_subnet" not in data and "subnet" in data:
            data = {**data, "internal_subnet": data["subnet"]}
        return data

    @field_validator("instances", mode="before")
    @classmethod
    def _null_instances(cls, value: Any) -> Any:
        return [] if value is None else value


class SshKey(WireModel):
    """An account SSH key; the list endpoint says ``key``, the create endpoint ``public_key``."""

    id: int
    public_key: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _key_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("public_key") is None and "key" in data:
            data = {**data, "public_key": data["key"]}
        return data


class User(WireModel):
    """``GET /api/v0/users/current/``; ``credit`` is the money left. The ``api_key`` field is never kept."""

    id: int
    username: str | None = None
    email: str | None = None
    credit: float | None = None
    balance: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            data = {k: v for k, v in data.items() if k != "api_key"}
        return data


class CreatedInstance(WireModel):
    """The body of a successful ``PUT /asks/{id}/``: ``new_contract`` is the new instance id."""

    new_contract: int
    instance_api_key: str | None = Field(default=None, repr=False)
