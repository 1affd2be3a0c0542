"""Fault and dynamics switches: one pydantic model, readable and writable at runtime through ``/_emulator/faults``.

Every rate is per emulated hour of the market clock (so ``clock.advance`` provokes them deterministically enough for
tests), every probability is per request, and every draw comes from the market's seeded fault RNG.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FailureKind(StrEnum):
    """How a host can fail an instance; each leaves the status fields the way Vast shows that failure."""

    EXITED = "exited"  # the container process exited: actual_status "exited"
    OFFLINE = "offline"  # the host lost its connection: every instance on the machine goes "offline", offers vanish
    STUCK_LOADING = "stuck_loading"  # never leaves "loading"
    OCI_ERROR = "oci_error"  # actual_status "created" and a status_msg with ": OCI runtime create failed:"


class RateLimitConfig(BaseModel):
    """Vast's per-(identity, endpoint) minimum interval between calls."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    min_interval_s: float = Field(default=1.0, ge=0, description="default interval for every endpoint")
    # Overrides by endpoint template, e.g. {"GET /api/v0/instances/{id}/": 2.0, "POST /api/v0/bundles/": 0}.
    per_endpoint: dict[str, float] = Field(default_factory=dict)
    # The 429 body: plain text (Vast's usual), {"detail": ...}, the destroy-style JSON envelope, or a seeded mix.
    body: Literal["text", "detail", "json", "mixed"] = "text"
    retry_after: bool = Field(default=False, description="send Retry-After (the docs say Vast does not)")
    # Vast's real limiter is shared by every key of an account and by its other clients, so a caller also sees 429s
    # it did not earn by its own pace: a share of requests refused whatever the interval (works without ``enabled``).
    random_rate: float = Field(default=0.0, ge=0, le=1, description="P(a 429 whatever the interval) per request")


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

    def merged(self, patch: dict[str, Any]) -> FaultConfig:
        """A copy with ``patch`` applied (nested ``rate_limit`` merged key by key), validated as a whole."""
        data = self.model_dump(mode="json")
        for key, value in patch.items():
            if key == "rate_limit" and isinstance(value, dict):
                data["rate_limit"] = {**data["rate_limit"], **value}
            else:
                data[key] = value
        return FaultConfig.model_validate(data)
