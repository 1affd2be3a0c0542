"""Typed views of what the Vast REST API returns: offers, instances, overlays, keys, the account.

The wire is loose (numbers as strings, ``HostPort`` as text, nulls anywhere, new fields without notice); each model
normalises its quirks once, so callers read properties (``ssh_endpoint``, ``state``) instead of raw fields.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from skyward_ray.errors import ConfigError
from skyward_ray.vast.docker_env import env_to_dict
from skyward_ray.vast.wire_model import WireModel


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


# --- Docker options carried in ``env`` (one place for the key shapes Vast uses) -------------------------------------

OVERLAY_NAME_RE = re.compile(r"^[a-z0-9-]{1,64}$")


def validate_overlay_name(name: str) -> str:
    """Vast's CLI keeps ``-n <name>`` only for lowercase letters, digits and ``-``; reject anything else early."""
    if not isinstance(name, str) or not OVERLAY_NAME_RE.fullmatch(name):
        raise ConfigError(f"overlay name {name!r} is not allowed: use 1-64 characters of a-z, 0-9 and '-'")
    return name


def overlay_env_key(name: str) -> str:
    """The ``env`` key that puts a new instance on an overlay: ``{"-n <name>": "1"}``."""
    return f"-n {validate_overlay_name(name)}"


def port_env_key(container_port: int, host_port: int | None = None, proto: str = "tcp") -> str:
    """The ``env`` key that asks Vast to map a port: ``-p 8265:8265`` (Vast picks the public port anyway)."""
    suffix = "" if proto == "tcp" else f"/{proto}"
    return f"-p {host_port or container_port}:{container_port}{suffix}"


class PortBinding(WireModel):
    """One Docker port binding; Vast sends ``HostPort`` as a string."""

    host_ip: str | None = Field(default=None, alias="HostIp")
    host_port: int = Field(alias="HostPort")

    @field_validator("host_port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> Any:
        return int(str(value).strip()) if value is not None else value


class NodeState(enum.StrEnum):
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
    image_runtype: str | None = None
    direct_port_count: int | None = None
    disk_space: float | None = None
    storage_cost: float | None = None
    # Env vars and Docker options the instance was created with; v1 rows send ``[key, value]`` pairs.
    extra_env: dict[str, str] | None = Field(default=None, repr=False)  # user env may hold their secrets
    # Wire fields left out because they did not parse ("name (type)"); empty for a row read whole.
    unparsed_fields: tuple[str, ...] = Field(default=(), exclude=True)

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
        if isinstance(value, list | tuple):
            return None  # exposed port numbers without their public mapping: nothing to connect to yet
        return value

    @field_validator("extra_env", mode="before")
    @classmethod
    def _env_dict(cls, value: Any) -> Any:
        return None if value is None else env_to_dict(value)

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
    def overlay_name(self) -> str | None:
        """The overlay the instance was created on (its ``-n <name>`` env key), if any."""
        for key in self.extra_env or {}:
            flag, _, name = key.partition(" ")
            if flag == "-n" and name:
                return name.strip()
        return None

    def overlay_ip(self, internal_subnet: str) -> str | None:
        """The first of ``local_ipaddrs`` inside the overlay's subnet. Vast documents no such field; the emulator
        lists the overlay address there, real Vast may not (then find it on the node, on ``eth0``)."""
        try:
            network = ipaddress.ip_network(internal_subnet, strict=False)
        except ValueError:
            return None
        for address in self.local_ipaddrs:
            try:
                if ipaddress.ip_address(address) in network:
                    return address
            except ValueError:
                continue
        return None

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


def _shape(row: dict[str, Any], name: str) -> str:
    """A field's name and the type of its value: enough to debug a row, never a value (it may be a secret)."""
    return f"{name} ({type(row[name]).__name__})" if name in row else name


def _mark_unparsed(instance: Instance, problems: tuple[str, ...]) -> Instance:
    instance.unparsed_fields = problems
    instance.model_fields_set.discard("unparsed_fields")  # fields_set keeps meaning "what the wire sent"
    return instance


def tolerant_instance(row: Any) -> tuple[Instance | None, tuple[str, ...]]:
    """An instance row parsed as well as it can be, and the fields that did not parse (``"name (type)"``).

    The fields that fail are left out and the rest parsed again; if even that fails, the row keeps only its ``id``
    and ``label``, so a rental carrying our label is still seen (and destroyed by ``ray down``). None when the row has
    no usable ``id``: nothing could act on it anyway.
    """
    if not isinstance(row, dict):
        return None, (f"row ({type(row).__name__})",)
    try:
        return Instance.model_validate(row), ()
    except ValidationError as exc:
        failed = sorted({str(err["loc"][0]) for err in exc.errors() if err["loc"]})
        problems = tuple(_shape(row, name) for name in failed) or ("row",)
    if failed and "id" not in failed:
        trimmed = {key: value for key, value in row.items() if key not in failed}
        try:
            instance = Instance.model_validate(trimmed)
        except ValidationError:
            pass
        else:
            return _mark_unparsed(instance, problems), problems
    label = row.get("label")
    try:
        minimal = Instance.model_validate({"id": row.get("id"), "label": label if isinstance(label, str) else None})
    except ValidationError:
        return None, problems
    return _mark_unparsed(minimal, problems), problems


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
    name: str | None = None
    user_id: int | None = None

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


class InstanceSshKeys(WireModel):
    """``GET /api/v0/instances/{id}/ssh/``: Vast sends the key list as a JSON *string*, not an array."""

    ssh_keys: list[SshKey] = Field(default_factory=list)

    @field_validator("ssh_keys", mode="before")
    @classmethod
    def _decode_string(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value


class InstancePage(WireModel):
    """One page of ``GET /api/v1/instances/``; ``next_token`` is null on the last page."""

    instances: list[Instance] = Field(default_factory=list)
    next_token: str | None = None
    total_instances: int | None = None
    instances_found: int | None = None

    @field_validator("instances", mode="before")
    @classmethod
    def _null_list(cls, value: Any) -> Any:
        return [] if value is None else value


class ActionResult(WireModel):
    """The body of a write that returns no object (``{"success": true, "msg": ...}``); extra keys are kept."""

    success: bool | None = None
    msg: str | None = None
