"""Fault and dynamics switches: one pydantic model, readable and writable at runtime through ``/_emulator/faults``.

Every rate is per emulated hour of the market clock (so ``clock.advance`` provokes them deterministically enough for
tests), every probability is per request, and every draw comes from the market's seeded fault RNG.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from skyward_ray.emulator.documented import (
    CREATE_PENALTY_S,
    DOCUMENTED_BODY_MIX,
    DOCUMENTED_INTERVALS,
    INFERRED_INTERVALS,
    SEARCH_ENDPOINTS,
    SEARCH_REQUESTS,
    SEARCH_WINDOW_S,
    UNDOCUMENTED_INTERVAL_S,
)


class FailureKind(StrEnum):
    """How a host can fail an instance; each leaves the status fields the way Vast shows that failure."""

    EXITED = "exited"  # the container process exited: actual_status "exited"
    OFFLINE = "offline"  # the host lost its connection: every instance on the machine goes "offline", offers vanish
    STUCK_LOADING = "stuck_loading"  # never leaves "loading"
    OCI_ERROR = "oci_error"  # actual_status "created" and a status_msg with ": OCI runtime create failed:"


RateLimitBody = Literal["documented", "text", "bare", "detail", "json", "mixed"]
# What the switch ``--rate-limits`` / ``rate_limits=`` accepts: the documented limits, none, or the documented limits
# with every interval, the create penalty and the search window multiplied by a factor (``x0.1``).
RATE_LIMIT_MODES = "documented | off | x<scale> (e.g. x0.1)"
DEFAULT_RATE_LIMITS = "documented"


class RateLimitConfig(BaseModel):
    """Vast's per-endpoint, per-identity limits as the emulator enforces them (tables in :mod:`.documented`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = DEFAULT_RATE_LIMITS != "off"
    scale: float = Field(default=1.0, gt=0, le=1000, description="multiplies every documented interval, the create "
                                                                 "penalty and the search window")
    # Endpoints the docs give no limit: None = the inferred default (documented.UNDOCUMENTED_INTERVAL_S, scaled).
    min_interval_s: float | None = Field(default=None, ge=0, description="interval of undocumented endpoints")
    # Overrides by endpoint, in seconds as given (not scaled), e.g. {"GET /api/v0/instances/{id}/": 0}.
    per_endpoint: dict[str, float] = Field(default_factory=dict)
    # The 429 body: Vast's documented mix (mostly plain text), or one form for tests; see documented.py.
    body: RateLimitBody = "documented"
    retry_after: bool = Field(default=False, description="send Retry-After (the docs say Vast does not)")
    # Vast's real limiter is shared by every key of an account and by its other clients, so a caller also sees 429s
    # it did not earn by its own pace: a share of requests refused whatever the interval (works without ``enabled``).
    random_rate: float = Field(default=0.0, ge=0, le=1, description="P(a 429 whatever the interval) per request")

    @model_validator(mode="before")
    @classmethod
    def _apply_mode(cls, data: Any) -> Any:
        """Accept ``mode`` on input too (what a dump shows), so a dump validates back: it sets enabled and scale."""
        if isinstance(data, dict) and "mode" in data:
            data = dict(data)
            enabled, scale = parse_rate_limits(data.pop("mode"))
            data.update(enabled=enabled, scale=scale)
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mode(self) -> str:
        """The switch's spelling of this config: ``documented``, ``off`` or ``x<scale>``."""
        if not self.enabled:
            return "off"
        return "documented" if self.scale == 1.0 else f"x{self.scale:g}"

    def interval(self, endpoint: str) -> float:
        """Seconds one identity must leave between two calls of ``endpoint`` (0: unlimited)."""
        if endpoint in self.per_endpoint:
            return self.per_endpoint[endpoint]
        base = DOCUMENTED_INTERVALS.get(endpoint, INFERRED_INTERVALS.get(endpoint))
        if base is None:
            return self.min_interval_s if self.min_interval_s is not None else UNDOCUMENTED_INTERVAL_S * self.scale
        return round(base * self.scale, 6)

    @property
    def penalty_s(self) -> float:
        return round(CREATE_PENALTY_S * self.scale, 6)

    @property
    def search_window_s(self) -> float:
        return round(SEARCH_WINDOW_S * self.scale, 6)

    def with_mode(self, mode: str) -> RateLimitConfig:
        """A copy switched to ``mode`` (see :data:`RATE_LIMIT_MODES`); the other fields are kept."""
        enabled, scale = parse_rate_limits(mode)
        return self.model_copy(update={"enabled": enabled, "scale": scale})

    def table(self) -> dict[str, Any]:
        """What is enforced now, for the admin API: every limited endpoint with its effective interval."""
        endpoints = {**DOCUMENTED_INTERVALS, **INFERRED_INTERVALS, **self.per_endpoint}
        return {
            "mode": self.mode,
            "enabled": self.enabled,
            "scale": self.scale,
            "intervals_s": {e: self.interval(e) for e in sorted(endpoints)},
            "undocumented_interval_s": self.interval("<undocumented>"),
            "create_penalty_s": self.penalty_s,
            "search": {"endpoints": sorted(SEARCH_ENDPOINTS), "requests": SEARCH_REQUESTS,
                       "window_s": self.search_window_s, "per": "client address"},
            "identity": "API key + client address",
            "inferred": {"intervals_s": dict(INFERRED_INTERVALS), "undocumented_interval_s": UNDOCUMENTED_INTERVAL_S,
                         "body_mix": dict(DOCUMENTED_BODY_MIX)},
            "body": self.body,
            "retry_after": self.retry_after,
            "random_rate": self.random_rate,
        }


def parse_rate_limits(mode: str) -> tuple[bool, float]:
    """``documented`` -> (True, 1.0); ``off`` -> (False, 1.0); ``x0.1`` -> (True, 0.1). ValueError names the value."""
    text = str(mode).strip().lower()
    if text == "documented":
        return True, 1.0
    if text == "off":
        return False, 1.0
    if text.startswith("x"):
        try:
            scale = float(text[1:])
        except ValueError:
            scale = math.nan
        if math.isfinite(scale) and 0 < scale <= 1000:
            return True, scale
    raise ValueError(f"rate_limits: {mode!r} is not allowed; allowed: {RATE_LIMIT_MODES}, the scale > 0 and <= 1000")


class FaultConfig(BaseModel):
    """Everything that can go wrong, all off by default (the ``chaos`` scenario turns most of it on)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    search_quota_per_day: int | None = Field(default=None, ge=0, description="bundles searches per key per UTC day")
    error_5xx_rate: float = Field(default=0.0, ge=0, le=1, description="P(a random 500/502/503/504) per request")
    lost_response_rate: float = Field(
        default=0.0, ge=0, le=1, description="P(the request took effect but the answer is a 504) per mutating request"
    )
    latency_ms: float = Field(default=0.0, ge=0)
    latency_jitter_ms: float = Field(default=0.0, ge=0)
    latency_spike_rate: float = Field(default=0.0, ge=0, le=1)
    latency_spike_ms: float = Field(default=0.0, ge=0)
    offer_taken_rate: float = Field(default=0.0, ge=0, le=1, description="P(a rival rents the offer first) per rent")
    rival_hold_s: float = Field(default=900.0, ge=0, description="how long a rival keeps the GPUs it took")
    outbid_rate_per_hour: float = Field(default=0.0, ge=0, description="rival bids per interruptible instance-hour")
    host_failure_rate_per_hour: float = Field(default=0.0, ge=0, description="failures per live instance-hour")
    host_failure_kinds: list[FailureKind] = Field(default_factory=lambda: list(FailureKind))
    boot_failure_rate: float = Field(default=0.0, ge=0, le=1, description="P(an instance fails while booting)")
    price_drift_pct_per_hour: float = Field(default=0.0, ge=0, description="std-dev of the hourly price random walk")
    credit_drain_multiplier: float = Field(default=1.0, ge=0, description="scales what instances cost per hour")
    # An account without overlay networks: every /api/v0/overlay/ call is refused (the answer is inferred, see
    # documented.OVERLAYS_UNAVAILABLE_BODY).
    overlays_available: bool = True
    # [inferred, off by default] Also list an instance's overlay address first in local_ipaddrs, as this emulator
    # once did. Vast documents only host-side addresses there; the overlay address is on eth0 inside the instance.
    overlay_address_in_local_ipaddrs: bool = False

    def merged(self, patch: dict[str, Any]) -> FaultConfig:
        """A copy with ``patch`` applied (nested ``rate_limit`` merged key by key, where ``mode`` sets ``enabled`` and
        ``scale`` together), validated as a whole."""
        data = self.model_dump(mode="json")
        data["rate_limit"].pop("mode", None)
        for key, value in patch.items():
            if key == "rate_limit" and isinstance(value, dict):
                value = dict(value)
                if "mode" in value:
                    enabled, scale = parse_rate_limits(value.pop("mode"))
                    data["rate_limit"].update(enabled=enabled, scale=scale)
                data["rate_limit"] = {**data["rate_limit"], **value}
            else:
                data[key] = value
        return FaultConfig.model_validate(data)
