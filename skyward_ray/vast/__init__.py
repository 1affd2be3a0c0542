"""Typed REST client for Vast.ai (httpx + pydantic + tenacity); never imports Ray.

:class:`VastClient` (``client``) is the public face; beside it ``endpoints`` (the catalogue), ``pacing`` (when),
``transport`` (one bounded attempt), ``retry`` (again or not), ``error_map`` (answer -> typed error, ``errors``),
``checks`` (arguments), ``models``/``parsing`` (bodies -> models) and ``credentials`` (key and server).
"""

from skyward_ray.vast.client import VastClient
from skyward_ray.vast.credentials import ApiKey, resolve_api_key, resolve_base_url
from skyward_ray.vast.endpoints import CREATE_INSTANCE, ENDPOINTS, Endpoint, RetryPolicy
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
    "CREATE_INSTANCE",
    "ENDPOINTS",
    "ActionResult",
    "ApiKey",
    "AuthError",
    "BadRequestError",
    "ConnectionFailedError",
    "CreatedInstance",
    "CredentialsError",
    "Endpoint",
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
    "RetryPolicy",
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
