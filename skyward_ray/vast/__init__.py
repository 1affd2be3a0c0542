"""Typed REST client for Vast.ai (httpx + pydantic + tenacity). Never imports Ray.

``VastClient`` (client.py) sends the requests; ``models`` parses and normalises what comes back; ``errors`` types
every failure; ``credentials`` finds the key and server the way the official client does.
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

__all__ = [
    "ActionResult",
    "ApiKey",
    "AuthError",
    "BadRequestError",
    "ConnectionFailedError",
    "CreatedInstance",
    "CredentialsError",
    "Instance",
    "NodeState",
    "NotFoundError",
    "Offer",
    "OfferGoneError",
    "Overlay",
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
]
