"""What a Vast answer means: the decoded body of a success, or the typed error of a failure, chosen by a table.

Every text that reaches an error passes through :class:`Redactor`, so no message, repr or log line carries the key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from skyward_ray.vast.credentials import ApiKey, redact
from skyward_ray.vast.endpoints import CREATE_INSTANCE, Endpoint
from skyward_ray.vast.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    OfferGoneError,
    ProtocolError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
    VastError,
)

log = logging.getLogger(__name__)

BODY_SNIPPET_CHARS = 300


@dataclass(frozen=True)
class Reply:
    """What came back, fully read: httpx's streamed response keeps no ``content``/``text`` of its own."""

    status: int
    headers: httpx.Headers
    content: bytes
    encoding: str

    @property
    def text(self) -> str:
        try:
            return self.content.decode(self.encoding, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Failure:
    """The parts of a failed answer the error table decides on."""

    endpoint: Endpoint
    status: int
    code: str | None
    text: str


# The first row whose test holds names the error type; order matters (a quota 429 is not a rate limit).
ERROR_TABLE: tuple[tuple[Callable[[Failure], bool], type[VastError]], ...] = (
    (lambda f: f.code == "search_quota_exceeded", QuotaExceededError),
    (lambda f: f.status == 429 or f.code == "rate_limit_exceeded", RateLimitedError),
    (lambda f: f.status in (401, 403) or f.code == "auth_error", AuthError),
    (lambda f: "no_such_ask" in f"{f.code} {f.text}" or (f.endpoint is CREATE_INSTANCE and f.status in (404, 410)),
     OfferGoneError),
    (lambda f: f.status in (404, 410) or f.code in ("no_such_instance", "not_found"), NotFoundError),
    (lambda f: f.status >= 500, ServerError),
    (lambda f: 300 <= f.status < 400, ProtocolError),
    (lambda f: f.status >= 400 or (f.code or "").startswith("invalid"), BadRequestError),
)  # fmt: skip


def error_type(failure: Failure) -> type[VastError]:
    """The row of :data:`ERROR_TABLE` that matches; plain :class:`VastError` for a ``success: false`` we do not know."""
    return next((kind for test, kind in ERROR_TABLE if test(failure)), VastError)


def parse_seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date: Vast sends seconds when it sends anything
    return seconds if seconds is not None and seconds >= 0 else None


def as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


class Redactor:
    """Builds the text of errors with the account key scrubbed out and bodies cut to a snippet."""

    def __init__(self, key: ApiKey) -> None:
        self._key = key

    def scrub(self, text: str) -> str:
        return redact(text, self._key)

    def snippet(self, text: str) -> str:
        text = self.scrub(" ".join(text.split()))
        return text if len(text) <= BODY_SNIPPET_CHARS else text[: BODY_SNIPPET_CHARS - 3] + "..."

    def protocol(self, endpoint: Endpoint, path: str, problem: str) -> ProtocolError:
        return ProtocolError(f"{endpoint.method} {path}: {self.scrub(problem)}", endpoint=str(endpoint))

    def checked(self, endpoint: Endpoint, path: str, reply: Reply) -> Any:
        """The decoded body of a success, or the typed error the response means."""
        try:
            body: Any = json.loads(reply.content)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack allows
            body = None
        status = reply.status
        if 200 <= status < 300:
            if body is None and reply.content.strip() != b"null":
                raise self.protocol(
                    endpoint, path, f"HTTP {status} with a body that is not JSON: {self.snippet(reply.text)!r}"
                )
            if not (isinstance(body, dict) and body.get("success") is False):
                return body
        raise self.error(endpoint, path, reply, body)

    def error(self, endpoint: Endpoint, path: str, reply: Reply, body: Any) -> VastError:
        """The typed error of a failed answer: its type from :data:`ERROR_TABLE`, its fields from the body."""
        code, text, ask_id, new_contract = self._described(reply, body)
        status = reply.status
        described = " ".join(part for part in (f"HTTP {status}", code) if part)
        message = self.scrub(f"{endpoint.method} {path}: {described}" + (f": {text}" if text else ""))
        fields: dict[str, Any] = {
            "status": status,
            "error_code": code,
            "ask_id": ask_id,
            "new_contract": new_contract,
            "retry_after": parse_seconds(reply.headers.get("Retry-After")),
            "endpoint": str(endpoint),
        }
        if new_contract is not None:
            log.warning("%s failed but created instance %d; it must be destroyed", endpoint, new_contract)
            message += f" (instance {new_contract} was created anyway and must be destroyed)"
        kind = error_type(Failure(endpoint, status, code, text))
        if kind is QuotaExceededError:
            return QuotaExceededError(message, reset_at=parse_seconds(reply.headers.get("X-RateLimit-Reset")), **fields)
        if kind is ServerError:
            return ServerError(message, outcome_unknown=endpoint.writes, **fields)
        if kind is ProtocolError:
            where = self.scrub(reply.headers.get("Location", "?"))
            return ProtocolError(f"{message}: redirect to {where}; set VAST_URL to the final server", **fields)
        return kind(message, **fields)

    def _described(self, reply: Reply, body: Any) -> tuple[str | None, str, int | None, int | None]:
        """(error code, message text, ask_id, new_contract) of a failed answer, scrubbed and cut."""
        code: str | None = None
        ask_id = new_contract = None
        if isinstance(body, dict):
            raw_code = body.get("error")
            code = self.snippet(str(raw_code))[:64] if raw_code not in (None, "", False) else None
            text = str(next((body[k] for k in ("msg", "message", "detail") if body.get(k)), ""))
            ask_id, new_contract = as_int(body.get("ask_id")), as_int(body.get("new_contract"))
        elif body is not None:
            text = json.dumps(body)
        else:
            text = reply.text
        return code, self.snippet(text), ask_id, new_contract
