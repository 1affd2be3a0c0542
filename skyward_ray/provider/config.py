"""The schema of a Vast cluster YAML's ``provider:`` section and of each node type's ``node_config``: strict pydantic
models whose errors name the field, the value and what is allowed. The placement fields are inherited from
:class:`~skyward_ray.placement.PlacementOptions`; ``cluster_configs/REFERENCE.md`` is generated from these models."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from skyward_ray.errors import ConfigError
from skyward_ray.placement.gpus import resolve_gpu
from skyward_ray.placement.options import Allocation, PlacementOptions, config_error_from
from skyward_ray.provider.tags import MAX_CREATE_LABEL_LENGTH, LabelTooLongError, check_create_label_fits
from skyward_ray.vast.credentials import resolve_base_url
from skyward_ray.vast.models import validate_overlay_name

PROVIDER_MODULE = "skyward_ray.provider.VastNodeProvider"
HEAD_KIND = "head"
WORKER_KIND = "worker"


class InterruptedPolicy(enum.StrEnum):
    """What happens to a worker whose interruptible instance was outbid (Vast stops it)."""

    REPLACE = "replace"  # destroy it and report it terminated, so the autoscaler rents a replacement
    REBID = "rebid"  # raise its bid (min_bid * bid_multiplier, at most max_bid) and keep it


class VastNodeConfig(BaseModel):
    """One node type's ``node_config``: what each node of the type rents."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accelerator: str = Field(description='GPU model, e.g. "RTX 4090", "H100" (every H100 variant), "A100"')
    gpus: int = Field(1, ge=1, le=64, description="GPUs per node (an offer of exactly this many GPUs)")
    allocation: Allocation | None = Field(
        None,
        description="on-demand, spot or spot-if-available (underscores accepted); default: on-demand for the head, "
        "spot-if-available for workers",
    )
    include_variants: bool = Field(False, description='also rent variants ("RTX 4090" -> "RTX 4090D")')
    env: dict[str, str] = Field(
        default_factory=dict,
        description="extra container environment variables (visible in Vast's console: never put secrets here)",
    )
    ports: list[int] = Field(default_factory=list, description="extra container TCP ports to map (Vast -p)")
    onstart: str | None = Field(None, description="extra shell run at container start, after ours")

    @field_validator("allocation", mode="before")
    @classmethod
    def _allocation(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            return Allocation.parse(value)
        except ConfigError:
            allowed = ", ".join(member.value for member in Allocation)
            raise ValueError(f"allowed: {allowed} (underscores accepted)") from None

    @field_validator("accelerator")
    @classmethod
    def _accelerator(cls, value: str) -> str:
        try:
            resolve_gpu(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("accelerator: ")) from None
        return " ".join(value.split())

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or key.startswith("-"):
                raise ValueError(f"env key {key!r}: use plain variable names; Docker options are set by the provider")
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 1 <= port <= 65535 or port == 22:
                raise ValueError(f"port {port}: use TCP ports 1-65535 other than 22 (SSH is always mapped)")
        return value

    def allocation_for(self, kind: str) -> Allocation:
        """The explicit allocation, else on-demand for a head (never outbid) and spot-if-available for workers."""
        if self.allocation is not None:
            return self.allocation
        return Allocation.ON_DEMAND if kind == HEAD_KIND else Allocation.SPOT_IF_AVAILABLE

    @property
    def accelerator_resource(self) -> str:
        """Ray's resource for the accelerator model: ``accelerator_type:<name>`` with spaces as hyphens, as Ray
        names its own (``A100``, ``H100``, ``RTX-PRO-6000``), from the canonical name of the GPU table."""
        label = resolve_gpu(self.accelerator, include_variants=self.include_variants).label
        return "accelerator_type:" + re.sub(r"\s+", "-", label.strip())

    @classmethod
    def from_config(cls, data: Any, *, section: str) -> Self:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{section}: {data!r} is not allowed (use a mapping with at least 'accelerator')")
        try:
            return cls(**data)
        except ValidationError as exc:
            raise config_error_from(exc, section=section, model=cls) from None


class NodeTypeShape(BaseModel):
    """One node type as the head's placement needs it (copied from ``available_node_types`` by bootstrap_config).

    ``kind`` says whether it is the head's type; ``min_workers``/``max_workers`` count *workers* of the type, so a
    single node type can serve as the head and as its workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["head", "worker"]
    min_workers: int = Field(0, ge=0)
    max_workers: int = Field(0, ge=0)
    node_config: VastNodeConfig


class VastProviderConfig(PlacementOptions):
    """The ``provider:`` section. Placement fields come from :class:`PlacementOptions`; these add Ray's and ours."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True, populate_by_name=True)

    # --- Ray's own keys ---------------------------------------------------------------------------------------------
    type: Literal["external"] = Field(description="always external (Ray loads the class named by module)")
    module: Literal["skyward_ray.provider.VastNodeProvider"] = Field(description=f"always {PROVIDER_MODULE}")
    use_internal_ips: bool = Field(False, description="Ray: reach the head at its internal (overlay) IP; leave false")
    use_external_head_ip: bool = Field(False, description="Ray: with use_internal_ips, reach the head externally")
    disable_node_updaters: bool = Field(False, description="Ray: no SSH setup of nodes; must stay false here")
    disable_launch_config_check: bool = Field(True, description="Ray: keep workers whose node_config changed")
    foreground_node_launch: bool = Field(False, description="Ray v1: launch nodes in the autoscaler thread")
    worker_liveness_check: bool = Field(True, description="Ray v1: restart workers without heartbeats")
    cache_stopped_nodes: bool = Field(False, description="Ray: reuse stopped nodes; not supported, must be false")
    config_cache_path: str | None = Field(None, alias="_config_cache_path", description="set by Ray; ignore")

    # --- the Vast API --------------------------------------------------------------------------------------------
    api_url: str | None = Field(
        None, description="Vast API base URL; set by bootstrap_config from VAST_URL when left out (default Vast)"
    )
    api_key_file: str | None = Field(
        None, description="file holding the API key (the head's copy is set by ray up); else the usual lookup"
    )
    api_min_interval_s: float = Field(0.0, ge=0.0, description="client-side minimum seconds between calls of one "
                                      "endpoint (Vast limits per endpoint; 429s are retried anyway)")
    api_rate_scale: float = Field(
        1.0, gt=0.0, description="multiplies Vast's documented per-endpoint intervals the client paces itself to "
        "(1 = as documented; below 1 only against a test server that scales its limits the same way)"
    )
    search_ttl_s: float = Field(
        30.0, gt=0.0, le=300.0, description="an offer search's answer is shared by every launch for this long, and "
        "while a scale-up planned on it is still renting (at most 3x as long); Vast allows 10 searches per minute"
    )

    # --- behaviour -------------------------------------------------------------------------------------------------
    cache_ttl_s: float = Field(4.0, gt=0.0, le=300.0, description="at most one instance list per this many seconds")
    instance_list: Literal["unpaged", "paged"] = Field(
        "unpaged", description="how the snapshot lists instances: unpaged (GET /api/v0/instances/, one call; the "
        "paged list is used when the server lacks it) or paged (GET /api/v1/instances/, 25 a call, 1 call/s)"
    )
    tag_flush_delay_s: float = Field(1.0, ge=0.0, le=60.0, description="tag writes are batched for this long")
    interrupted_policy: InterruptedPolicy = Field(
        InterruptedPolicy.REPLACE, description="outbid workers: replace (destroy, autoscaler re-rents) or rebid"
    )
    loading_timeout_s: float = Field(
        900.0, gt=0.0, description="an instance not running this long after its rental is destroyed, its machine "
        "avoided for avoid_machine_s"
    )
    ssh_timeout_s: float = Field(
        600.0, gt=0.0, description="a node Ray cannot SSH into this long (waiting-for-ssh) is destroyed, its machine "
        "avoided for avoid_machine_s"
    )
    avoid_machine_s: float = Field(
        1800.0, gt=0.0, description="a machine whose instance failed, stuck loading or never took SSH is avoided "
        "this long (not forever: a cluster confined to one physical cluster must not run out of machines)"
    )
    overlay_timeout: int = Field(120, ge=1, description="seconds for the overlay to appear after it is created")
    instance_timeout: int = Field(
        300, ge=0, description="a worker that cannot reach its head this long destroys itself (0: never)"
    )
    rent_concurrency: int = Field(16, ge=1, le=64, description="rentals in flight at once within one launch")
    ssh_proxy: bool = Field(True, description="fall back to Vast's SSH proxy (ssh_host:ssh_port) when the direct "
                            "port does not answer")
    overlay_name: str | None = Field(None, description="overlay name; default derived from the cluster name")

    # --- set by bootstrap_config ---------------------------------------------------------------------------------
    ssh_public_key: str | None = Field(None, description="set by bootstrap_config: the auth key's public half")
    node_types: dict[str, NodeTypeShape] = Field(
        default_factory=dict, description="set by bootstrap_config: the cluster's node types, for head placement"
    )

    @field_validator("interrupted_policy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return InterruptedPolicy(value.strip().lower())
            except ValueError:
                raise ValueError(f"allowed: {', '.join(p.value for p in InterruptedPolicy)}") from None
        return value

    @field_validator("overlay_name")
    @classmethod
    def _overlay(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_overlay_name(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:  # the client's rule: no query (a key there would ride along to the head in clear text)
            return resolve_base_url(value)
        except ConfigError:
            raise ValueError("use an http(s) URL without query, such as https://console.vast.ai") from None

    @field_validator("disable_node_updaters", "cache_stopped_nodes")
    @classmethod
    def _must_be_false(cls, value: bool) -> bool:
        if value:
            raise ValueError("allowed: false (Ray sets Vast nodes up over SSH; stopped instances are destroyed)")
        return value

    @field_validator("interrupted_policy")
    @classmethod
    def _rebid_needs_cap(cls, value: InterruptedPolicy, info: ValidationInfo) -> InterruptedPolicy:
        if value is InterruptedPolicy.REBID and info.data.get("max_bid") is None:
            raise ValueError("rebid needs max_bid, the highest bid to raise to; set max_bid or use replace")
        return value

    @property
    def placement(self) -> PlacementOptions:
        """Only the placement fields, for the planner."""
        fields = PlacementOptions.model_fields
        return PlacementOptions(**{name: getattr(self, name) for name in fields})

    @classmethod
    def from_config(  # type: ignore[override]
        cls, data: Mapping[str, Any] | None = None, *, section: str | None = "provider", **overrides: Any
    ) -> Self:
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{section}: {data!r} is not allowed (use a mapping)")
        try:
            return cls(**{**(data or {}), **overrides})
        except ValidationError as exc:
            raise config_error_from(exc, section=section, model=cls) from None


def overlay_name_for(cluster_name: str) -> str:
    """The overlay of a cluster: its name in Vast's alphabet (lowercase ``[a-z0-9-]``) plus a short hash of the exact
    name, so that "My_Cluster" and "my-cluster" never share an overlay."""
    import hashlib

    slug = re.sub(r"[^a-z0-9]+", "-", cluster_name.lower()).strip("-")[:40] or "cluster"
    digest = hashlib.sha256(cluster_name.encode()).hexdigest()[:6]
    return validate_overlay_name(f"skyr-{slug}-{digest}")


def node_config_section(node_type: str) -> str:
    return f"available_node_types.{node_type}.node_config"


def check_head_node_type(cluster_config: Mapping[str, Any]) -> str:
    """``head_node_type`` names one of ``available_node_types`` (a mapping, checked by the caller); returns it.

    ``skyward-ray validate`` runs it before Ray's own preparation, whose message names neither value nor choices."""
    head_type = cluster_config.get("head_node_type")
    node_types = cluster_config.get("available_node_types") or {}
    if not isinstance(head_type, str) or head_type not in node_types:
        raise ConfigError(f"head_node_type: {head_type!r} is not allowed (use one of {sorted(map(str, node_types))})")
    return head_type


def validate_cluster_config(cluster_config: Mapping[str, Any]) -> tuple[VastProviderConfig, dict[str, NodeTypeShape]]:
    """Validate ``provider:`` and every node type's ``node_config``; return them typed. Raises ConfigError."""
    provider = VastProviderConfig.from_config(cluster_config.get("provider"))
    node_types = cluster_config.get("available_node_types")
    if not isinstance(node_types, Mapping) or not node_types:
        raise ConfigError("available_node_types: missing or empty (allowed: a mapping of node type -> settings)")
    head_type = check_head_node_type(cluster_config)
    shapes: dict[str, NodeTypeShape] = {}
    for name, settings in node_types.items():
        if not isinstance(settings, Mapping):
            raise ConfigError(f"available_node_types.{name}: {settings!r} is not allowed (use a mapping)")
        node_config = VastNodeConfig.from_config(settings.get("node_config"), section=node_config_section(name))
        kind = HEAD_KIND if name == head_type else WORKER_KIND
        cluster_max = int(cluster_config.get("max_workers", 0))
        # Ray's defaults: a worker type may use the whole cluster's max_workers, the head's type none of it.
        max_workers = min(int(settings.get("max_workers", 0 if kind == HEAD_KIND else cluster_max)), cluster_max)
        shapes[name] = NodeTypeShape(
            kind=kind,  # type: ignore[arg-type]
            min_workers=int(settings.get("min_workers", 0)),
            max_workers=max_workers,
            node_config=node_config,
        )
    check_overlay_for_workers(provider.use_overlay, shapes)
    check_labels_fit(cluster_config.get("cluster_name"), shapes)
    return provider, shapes


def check_labels_fit(cluster_name: Any, shapes: Mapping[str, NodeTypeShape]) -> None:
    """A rental's label (256 characters at most on create) must hold the cluster's and node type's names."""
    if not isinstance(cluster_name, str):
        return  # Ray's own schema check reports a missing or non-string cluster_name
    for name in shapes:
        try:
            check_create_label_fits(cluster_name, name)
        except LabelTooLongError:
            raise ConfigError(
                f"cluster_name: {cluster_name!r} with node type {name!r} is too long for the label Vast accepts on a "
                f"rental ({MAX_CREATE_LABEL_LENGTH} characters for the names and tags together): use shorter names"
            ) from None


NO_OVERLAY_REASON = (
    "on Vast, instances on different machines sit behind NAT and cannot reach each other's Ray ports"
)


def check_overlay_for_workers(use_overlay: bool, shapes: Mapping[str, NodeTypeShape]) -> None:
    """Workers need the overlay: without it the head and its workers cannot reach each other. A single-node
    cluster (no worker of any type) may go without one."""
    if use_overlay:
        return
    for name, shape in shapes.items():
        count = shape.max_workers or shape.min_workers
        if count > 0:
            key = "max_workers" if shape.max_workers else "min_workers"
            raise ConfigError(
                f"provider.use_overlay: false is not allowed with workers (available_node_types.{name}.{key}: "
                f"{count}): {NO_OVERLAY_REASON}; allowed: use_overlay: true (the default), or no workers "
                "(max_workers: 0) for a single-node cluster"
            )
