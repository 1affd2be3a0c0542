"""Errors of the Vast REST client, as types a caller can act on (retry, try the next offer, fix the key...).

Each is a :class:`~skyward_ray.errors.SkywardError`, so the CLI prints it as one line, built from the wire with the
key scrubbed out. ``outcome_unknown`` says a failed write may have happened anyway; ``new_contract`` names an
instance a failed create still made, which the caller must destroy.
"""

from __future__ import annotations

from skyward_ray.errors import SkywardError


class VastError(SkywardError):
    """A Vast API call failed. Attributes say how, for callers that decide what to do next."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        ask_id: int | None = None,
        new_contract: int | None = None,
        retry_after: float | None = None,
        endpoint: str | None = None,
        outcome_unknown: bool = False,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.ask_id = ask_id
        self.new_contract = new_contract
        self.retry_after = retry_after
        self.endpoint = endpoint  # the endpoint template, e.g. "PUT /api/v0/asks/{id}/"
        # True when a write may have taken effect although it failed (a timeout or a 5xx after the request was sent).
        self.outcome_unknown = outcome_unknown
        self.attempts = attempts

    def __str__(self) -> str:
        if self.attempts > 1:
            return f"{self.message} (after {self.attempts} attempts)"
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, status={self.status!r}, error_code={self.error_code!r})"


class CredentialsError(VastError):
    """No usable API key; the message says where we looked, never a key."""


class AuthError(VastError):
    """401/403: the key is wrong, deleted, or lacks the permission."""


class NotFoundError(VastError):
    """404: no such instance, overlay or key."""


class OfferGoneError(NotFoundError):
    """The offer was rented by someone else (or vanished) between search and rent; try the next one."""


class RateLimitedError(VastError):
    """429 after retrying until the deadline (or a ``Retry-After`` longer than what was left of it)."""


class QuotaExceededError(VastError):
    """The daily search quota (429 ``search_quota_exceeded``); it resets at UTC midnight, so it is never retried.

    Not a :class:`RateLimitedError`: code that retries rate limits must not retry this.
    """

    def __init__(self, message: str, *, reset_at: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.reset_at = reset_at  # epoch seconds from ``X-RateLimit-Reset``, when sent


class BadRequestError(VastError):
    """400 (or another 4xx we have no better type for): the request itself was wrong."""


class ServerError(VastError):
    """5xx from Vast or a gateway in front of it."""


class ProtocolError(VastError):
    """A body we could not parse, or one without what the endpoint promises."""


class TransportError(VastError):
    """No HTTP response at all. ``request_sent`` is False only when the request surely never left."""

    def __init__(self, message: str, *, request_sent: bool = True, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.request_sent = request_sent


class RequestTimeoutError(TransportError):
    """The request timed out (connect, write, read or waiting for a pooled connection)."""


class ConnectionFailedError(TransportError):
    """The connection failed or broke."""
