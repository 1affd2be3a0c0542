"""The market's records: plain mutable dataclasses the state keeps and returns; the HTTP layer renders them.

Also the typed requests the state accepts (:class:`RentalOrder`, :class:`EnvRequest`) and who is calling
(:class:`Caller`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skyward_ray.emulator.errors import instance_key_refused


@dataclass(eq=False)  # an entity: compared and hashed by identity
class Machine:
    """One host machine and its GPUs. Static fields come from the scenario; the rest changes as the market runs."""

    machine_id: int
    host_id: int
    cluster_id: int | None
    geolocation: str  # free text ending in the country code
    gpu_name: str
    num_gpus: int
    gpu_ram: int  # MB per GPU
    gpu_arch: str
    compute_cap: int
    cuda_max_good: float
    driver_version: str
    reliability2: float
    verification: str  # "verified" | "unverified" | "deverified"
    hosting_type: int  # 1 datacenter, 0 community
    disk_space: float  # GB, whole machine
    inet_up: float
    inet_down: float
    gpu_price: float  # on-demand $/h per GPU (dph_base = gpu_price * n)
    bid_price: float  # interruptible floor $/h per GPU (min_bid = bid_price * n)
    storage_cost: float  # $/GB/month
    direct_port_count: int
    direct_port_start: int
    public_ipaddr: str
    cpu_name: str
    cpu_cores: int
    cpu_ghz: float
    cpu_ram: int  # MB, whole machine
    mobo_name: str
    pci_gen: float
    pcie_bw: float
    disk_bw: float
    disk_name: str
    os_version: str
    static_ip: bool
    total_flops: float  # per GPU
    dlperf: float  # per GPU
    gpu_mem_bw: float
    gpu_max_power: float
    bw_nvlink: float
    external: bool
    duration_s: float  # how long the host keeps the machine listed, from market start
    inet_up_cost: float
    inet_down_cost: float
    # --- mutable market state ---
    free_gpus: int = 0
    listed: bool = True  # False while offline
    base_gpu_price: float = 0.0
    base_bid_price: float = 0.0
    used_ports: set[int] = field(default_factory=set)
    rival_holds: list[tuple[float, int]] = field(default_factory=list)  # (release at, GPUs) taken by other renters
    offer_rows: list[dict[str, Any]] | None = None  # cached search rows; None = rebuild

    def __post_init__(self) -> None:
        if not self.free_gpus:
            self.free_gpus = self.num_gpus
        self.base_gpu_price = self.base_gpu_price or self.gpu_price
        self.base_bid_price = self.base_bid_price or self.bid_price

    @property
    def direct_port_end(self) -> int:
        return self.direct_port_start + self.direct_port_count - 1

    @property
    def vericode(self) -> int:
        return 1 if self.verification == "verified" else 0

    @property
    def country_code(self) -> str:
        return self.geolocation.strip()[-2:].upper()


@dataclass
class Overlay:
    overlay_id: int
    name: str
    cluster_id: int
    user_id: int
    internal_subnet: str  # "10.a.b.0/24"
    members: dict[int, str] = field(default_factory=dict)  # instance id -> address, in join order
    next_host: int = 1  # addresses are handed out .1, .2, ... and never reused within one overlay


@dataclass
class Instance:
    """One rental. ``actual_status`` etc. are exactly what the wire shows; the rest drives the lifecycle."""

    instance_id: int
    user_id: int
    machine: Machine
    offer_id: int
    num_gpus: int
    is_bid: bool
    bid: float | None  # $/h for the whole offer, when interruptible
    dph_base: float  # on-demand $/h at rental time
    disk: float  # GB
    storage_cost: float
    image: str
    env_pairs: list[list[str]]  # extra_env as Vast shows it: [[key, value], ...]
    user_env: dict[str, str]  # the env entries that are not docker flags
    port_map: dict[str, int]  # "22/tcp" -> host port
    label: str | None
    onstart: str | None
    runtype: str
    args: list[str] | None
    api_key: str  # CONTAINER_API_KEY: may only stop or destroy this instance
    created_at: float  # emulated clock seconds
    hostname: str
    identity_ports: dict[str, int] = field(default_factory=dict)  # "70000/tcp" -> host port P (mapped to P inside)
    authorized_keys: list[str] = field(default_factory=list)
    instance_keys: list[dict[str, Any]] = field(default_factory=list)  # keys attached with POST /instances/{id}/ssh/
    actual_status: str | None = None
    intended_status: str = "running"
    cur_state: str = "running"
    next_state: str = "running"
    status_msg: str | None = None
    loading_at: float = 0.0
    ready_at: float = 0.0
    booting: bool = False  # the runtime's start() is in flight
    boot_gen: int = 0  # bumped by every stop/restart so a late start() result is ignored
    boot_fault: str | None = None  # a FailureKind value to apply when the boot completes
    stuck: bool = False
    running_since: float | None = None
    public_ipaddr: str | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    rival_bid: float | None = None  # the highest competing bid, once outbid
    stop_reason: str | None = None  # "user" | "outbid" | "bid_too_low" | "credit": who may resume it, and how
    joined_overlays: set[int] = field(default_factory=set)  # overlays the runtime has actually wired
    keys_applied: int = 0  # how many of authorized_keys the runtime already has
    overlay_ids: list[int] = field(default_factory=list)
    cost: float = 0.0

    @property
    def hourly_price(self) -> float:
        """What a running instance costs per hour: the bid for interruptible ones, else the on-demand price."""
        base = self.bid if (self.is_bid and self.bid is not None) else self.dph_base
        return base + self.storage_hourly

    @property
    def storage_hourly(self) -> float:
        return self.disk * self.storage_cost / 30 / 24


@dataclass
class AccountSshKey:
    key_id: int
    user_id: int
    public_key: str
    created_at: float  # epoch


@dataclass
class User:
    user_id: int
    api_key: str
    username: str
    email: str
    credit: float
    ssh_keys: dict[int, AccountSshKey] = field(default_factory=dict)
    credit_exhausted: bool = False


@dataclass
class LedgerEntry:
    """One instance ever created, kept after it is destroyed: tests and benchmarks audit spend and ghosts here."""

    instance_id: int
    user_id: int
    machine_id: int
    offer_id: int
    gpu_name: str
    num_gpus: int
    is_bid: bool
    price: float  # $/h at rental: the bid, or dph_total for on-demand
    label: str | None
    created_at: float  # epoch
    destroyed_at: float | None = None
    cost: float = 0.0
    end_reason: str | None = None


@dataclass(frozen=True)
class Caller:
    """Who is calling: a user's account key, or an instance's CONTAINER_API_KEY (``instance_scope`` set)."""

    user: User
    instance_scope: int | None = None

    def require_account_key(self) -> None:
        if self.instance_scope is not None:
            raise instance_key_refused(self.instance_scope)

    def require_instance(self, instance_id: int) -> None:
        if self.instance_scope is not None and self.instance_scope != instance_id:
            raise instance_key_refused(self.instance_scope)


@dataclass
class EnvRequest:
    """A create request's ``env``, split into what Vast does with each part."""

    pairs: list[list[str]]  # as extra_env shows it
    variables: dict[str, str]
    ports: list[str]  # "8080/tcp"
    overlays: list[str]
    hostname: str | None


@dataclass
class RentalOrder:
    """A create body once checked against create_instance.yaml's ``x-input-validation``."""

    image: str  # the image, else the template id it names
    disk: float
    label: str | None
    onstart: str | None
    args: list[str] | None
    bid: float | None  # $/h for the whole offer; None rents on demand
    runtype: str
    env: EnvRequest
