"""Errors of the Vast REST client, as types a caller can act on.

Every one is a :class:`~skyward_ray.errors.SkywardError`, so the CLI prints it as one line. The client builds them
from the wire (status, ``error`` code, ``msg``) after scrubbing the API key out of every text, so a message, a repr
or a log line never carries it.

What a caller does with each:

* :class:`AuthError` (401/403): fix the key; never retried.
* :class:`OfferGoneError` (404/410 or ``no_such_ask`` on ``PUT /asks``): try the next offer.
* :class:`NotFoundError` (404): the object is gone.
* :class:`RateLimitedError` (429): already retried until the deadline; slow down.
* :class:`QuotaExceededError` (``search_quota_exceeded``): daily search quota; never retried (resets at 00:00 UTC).
* :class:`BadRequestError` (400): our request was wrong.
* :class:`ServerError` (5xx), :class:`RequestTimeoutError`, :class:`ConnectionFailedError`: transient or not,
  already retried where that is safe. ``outcome_unknown`` says the write may have happened anyway.
* :class:`ProtocolError`: the body could not be understood.
* :class:`CredentialsError`: no usable API key was found.

``new_contract`` is set when a failed create still names an instance: the caller must destroy it (a bid below the
minimum creates a *stopped* instance and returns an error).
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
