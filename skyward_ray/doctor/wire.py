"""What the Vast API answered, seen from inside our own client: a transport that logs every exchange (a 429's body
and rate headers, a create's body with env values left out), and the raw instance pages our models may not fit.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from skyward_ray.vast.client import VastClient
from skyward_ray.vast.endpoints import LIST_INSTANCES
from skyward_ray.vast.transport import DeadlineTransport

# Headers a 429 is judged by; anything else (cookies, tracing ids) stays out of the report.
_RATE_HEADERS = ("retry-after", "x-ratelimit-reset", "x-ratelimit-limit", "x-ratelimit-remaining", "content-type")
_BODY_CHARS = 200


@dataclass
class Exchange:
    """One HTTP request and its answer, as much as the report needs."""

    at: float  # seconds since the log started, when the request left
    method: str
    path: str
    status: int | None
    seconds: float = 0.0  # until the answer's headers
    body: str | None = None  # 429s only
    headers: dict[str, str] = field(default_factory=dict)  # 429s only
    sent: dict[str, Any] | None = None  # create bodies only


class WireLog(httpx.BaseTransport):
    """An httpx transport that records every exchange of the client it is given to."""

    def __init__(self, inner: httpx.BaseTransport | None = None,
                 on_secret: Callable[[str], None] | None = None) -> None:
        self._inner = inner or DeadlineTransport()  # the client's own: same deadlines, TLS and pool
        self._on_secret = on_secret
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        at = time.monotonic() - self._started
        sent = _create_body(request)
        try:
            response = self._inner.handle_request(request)
        except Exception:
            took = time.monotonic() - self._started - at
            self._record(Exchange(at, request.method, request.url.path, None, took, sent=sent))
            raise
        took = time.monotonic() - self._started - at
        status = response.status_code
        if status != 429 and sent is None:
            self._record(Exchange(at, request.method, request.url.path, status, took))
            return response
        # Small bodies we must look at: a 429's text, and a create's answer (its instance key is a secret to scrub).
        raw = b"".join(response.iter_raw())
        response.close()
        encoded = "content-encoding" in response.headers
        text = raw.decode("utf-8", errors="replace") if not encoded else ""
        if sent is not None and self._on_secret is not None and text:
            try:
                answer = json.loads(text)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and isinstance(answer.get("instance_api_key"), str):
                self._on_secret(answer["instance_api_key"])
        if status == 429:
            headers = {k: v for k, v in response.headers.items() if k.lower() in _RATE_HEADERS}
            body = " ".join(text.split())[:_BODY_CHARS] if not encoded else "(encoded)"
            self._record(Exchange(at, request.method, request.url.path, 429, took, body, headers, sent))
        else:
            self._record(Exchange(at, request.method, request.url.path, status, took, sent=sent))
        return httpx.Response(status, headers=response.headers, stream=httpx.ByteStream(raw), request=request,
                              extensions=response.extensions)

    def close(self) -> None:
        self._inner.close()

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def snapshot(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    def rate_limited(self) -> list[Exchange]:
        return [e for e in self.snapshot() if e.status == 429]

    def last(self, method: str, path: str) -> Exchange | None:
        for exchange in reversed(self.snapshot()):
            if exchange.method == method and exchange.path == path:
                return exchange
        return None

    def creates(self) -> list[Exchange]:
        return [e for e in self.snapshot() if e.sent is not None]


def _create_body(request: httpx.Request) -> dict[str, Any] | None:
    """The JSON body of a ``PUT /api/v0/asks/{id}/`` with env values blanked (a user's env may hold tokens)."""
    if request.method != "PUT" or not request.url.path.startswith("/api/v0/asks/"):
        return None
    try:
        body = json.loads(request.content or b"{}")
    except ValueError:
        return {"unparsable": True}
    if isinstance(body, dict) and isinstance(body.get("env"), dict):
        body["env"] = {key: ("1" if key.startswith("-") else "…") for key in body["env"]}
    if isinstance(body, dict) and isinstance(body.get("onstart"), str):
        body["onstart"] = f"({len(body['onstart'])} characters)"
    return body if isinstance(body, dict) else {"not_an_object": True}


def raw_instance_pages(client: VastClient, max_pages: int) -> Iterator[Any]:
    """The decoded bodies of ``GET /api/v1/instances/``, 25 rows a page in id order, following ``next_token`` until
    there is none or ``max_pages`` were read; a body without a token (or not an object) is the last one."""
    params: dict[str, Any] = {"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}], "limit": 25}
    for _ in range(max_pages):
        body = client.call(LIST_INSTANCES, params=params)
        yield body
        token = body.get("next_token") if isinstance(body, dict) else None
        if not token:
            return
        params["after_token"] = token
