"""Typed REST client for Vast.ai (httpx + pydantic + tenacity). Never imports Ray.

``VastClient`` (client.py) sends the requests; ``models`` parses and normalises what comes back; ``errors`` types
every failure; ``credentials`` finds the key and server the way the official client does; ``pacing`` keeps every
client of the process within Vast's documented per-endpoint limits.
"""

from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import ApiKey, resolve_api_key, resolve_base_url
from skyward_ray.vast.errors import (
    AuthError,
    BadRequestError,
    ConnectionFailedError,
    CredentialsError,
    NotFoundError,
    OfferGoneError,
    ProtocolError,
    QuotaExceededError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
    VastError,
)
from skyward_ray.vast.models import (
    ActionResult,
    CreatedInstance,
    Instance,
    NodeState,
    Offer,
    Overlay,
    SshKey,
    User,
    node_state,
)
from skyward_ray.vast.pacing import LaneStatus, PaceLimits, Pacer, resolve_rate_scale, shared_pacer

__all__ = [
    "ActionResult",
    "ApiKey",
    "AuthError",
    "BadRequestError",
    "ConnectionFailedError",
    "CreatedInstance",
    "CredentialsError",
    "Instance",
    "LaneStatus",
    "NodeState",
    "NotFoundError",
    "Offer",
    "OfferGoneError",
    "Overlay",
    "PaceLimits",
    "Pacer",
    "ProtocolError",
    "QuotaExceededError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "SshKey",
    "TransportError",
    "User",
    "VastClient",
    "VastError",
    "node_state",
    "resolve_api_key",
    "resolve_base_url",
    "resolve_rate_scale",
    "shared_pacer",
]
