"""The catalogue of Vast REST endpoints the client calls: method, path template, retry policy, write, slow.

An endpoint is the unit of pacing, retrying and request counting; its ``str`` (``"GET /api/v1/instances/"``) is the
key of the pacing table and of :attr:`VastClient.stats`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RetryPolicy(enum.Enum):
    """Which failures of an endpoint may be retried.

    ``IDEMPOTENT``: repeating changes nothing, so 429, 5xx, timeouts and connection errors are retried.
    ``ONCE``: the call creates something, so it is retried only when nothing can have happened (a 429, or a failure
    before the request left); never after a 5xx, a read timeout or a broken connection.
    """

    IDEMPOTENT = "idempotent"
    ONCE = "once"


@dataclass(frozen=True)
class Endpoint:
    """One REST endpoint: the unit of rate limiting, retry policy and request counting."""

    method: str
    template: str
    retry: RetryPolicy = RetryPolicy.IDEMPOTENT
    writes: bool = False  # a failure after sending may have changed state
    slow: bool = False  # Vast may take long to answer: the attempt gets the official client's 120 s

    def __str__(self) -> str:
        return f"{self.method} {self.template}"

    def path(self, **ids: int) -> str:
        return self.template.format(**ids)


SEARCH_OFFERS = Endpoint("POST", "/api/v0/bundles/", slow=True)
CREATE_INSTANCE = Endpoint("PUT", "/api/v0/asks/{id}/", RetryPolicy.ONCE, writes=True, slow=True)
GET_INSTANCE = Endpoint("GET", "/api/v0/instances/{id}/")
LIST_INSTANCES = Endpoint("GET", "/api/v1/instances/")
LIST_INSTANCES_V0 = Endpoint("GET", "/api/v0/instances/")
UPDATE_INSTANCE = Endpoint("PUT", "/api/v0/instances/{id}/", writes=True)  # label, state
DESTROY_INSTANCE = Endpoint("DELETE", "/api/v0/instances/{id}/", writes=True)
DESTROY_INSTANCES = Endpoint("DELETE", "/api/v0/instances/", writes=True)
CHANGE_BID = Endpoint("PUT", "/api/v0/instances/bid_price/{id}/", writes=True)
LIST_OVERLAYS = Endpoint("GET", "/api/v0/overlay/")
CREATE_OVERLAY = Endpoint("POST", "/api/v0/overlay/", RetryPolicy.ONCE, writes=True, slow=True)
JOIN_OVERLAY = Endpoint("PUT", "/api/v0/overlay/", writes=True, slow=True)
DELETE_OVERLAY = Endpoint("DELETE", "/api/v0/overlay/", writes=True)
CURRENT_USER = Endpoint("GET", "/api/v0/users/current/")
LIST_SSH_KEYS = Endpoint("GET", "/api/v0/ssh/")
CREATE_SSH_KEY = Endpoint("POST", "/api/v0/ssh/", RetryPolicy.ONCE, writes=True)
ATTACH_SSH_KEY = Endpoint("POST", "/api/v0/instances/{id}/ssh/", writes=True)
LIST_INSTANCE_SSH_KEYS = Endpoint("GET", "/api/v0/instances/{id}/ssh/")

ENDPOINTS: tuple[Endpoint, ...] = (
    SEARCH_OFFERS, CREATE_INSTANCE, GET_INSTANCE, LIST_INSTANCES, LIST_INSTANCES_V0, UPDATE_INSTANCE,
    DESTROY_INSTANCE, DESTROY_INSTANCES, CHANGE_BID, LIST_OVERLAYS, CREATE_OVERLAY, JOIN_OVERLAY, DELETE_OVERLAY,
    CURRENT_USER, LIST_SSH_KEYS, CREATE_SSH_KEY, ATTACH_SSH_KEY, LIST_INSTANCE_SSH_KEYS,
)  # fmt: skip
ENDPOINT_KEYS = frozenset(str(e) for e in ENDPOINTS)
