"""What every part of the HTTP layer shares: JSON responses, the per-app wire state (counters, rate limiter, worker
pool), request body and path parsing, and :class:`Call` (one parsed request as a route's function receives it)."""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from skyward_ray.emulator.errors import MarketError, bad_request
from skyward_ray.emulator.market import Market
from skyward_ray.emulator.ratelimit import RateLimiter
from skyward_ray.emulator.records import Caller

AUTH_ERROR = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
CLIENT_GONE = 499  # no HTTP status says "the client hung up"; nginx's 499 is the usual stand-in (never sent)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with ``Content-Type: application/json`` exactly (the official CLI compares the header verbatim)."""
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json",
                        headers=headers)


def error_response(exc: MarketError) -> web.Response:
    if isinstance(exc.body, str):
        return web.Response(text=exc.body, status=exc.status, headers=exc.headers)
    return json_response(exc.body, exc.status, exc.headers)


class WireState:
    """Counters and rate-limit memory, shared by every request of one app (guarded by ``lock``)."""

    def __init__(self, market: Market, admin_key: str | None, workers: int, limiter: RateLimiter) -> None:
        self.market = market
        self.admin_key = admin_key
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.statuses: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.limiter = limiter
        self.refused_from: defaultdict[str, Counter[str]] = defaultdict(Counter)  # endpoint -> client address -> 429s
        self.searches: Counter[tuple[str, int]] = Counter()
        self.admin_endpoints: list[str] = []
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emulator-api")

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.statuses.clear()
            self.limiter.refused.clear()
            self.refused_from.clear()

    def counters(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": dict(self.requests), "statuses": {k: dict(v) for k, v in self.statuses.items()},
                    "rate_limited": dict(self.limiter.refused),
                    "rate_limited_from": {k: dict(v) for k, v in self.refused_from.items()}}


WIRE = web.AppKey("wire", WireState)
CALLER = web.RequestKey("caller", object)


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object a request carries ({} when empty); 400 otherwise."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data


def path_ints(request: web.Request) -> dict[str, int]:
    """The integer path parameters (``{id}``, ``{key}``); 400 naming one that is not an integer."""
    ids = {}
    for name, raw in request.match_info.items():
        try:
            ids[name] = int(raw)
        except ValueError:
            raise bad_request(f"{name}: {raw!r} is not an integer") from None
    return ids


@dataclass
class Call:
    """One parsed request, as a route's function receives it (in a worker thread)."""

    market: Market
    wire: WireState
    caller: Caller | None
    ids: dict[str, int] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)

    def who(self) -> Caller:
        """The authenticated caller; 401 on an endpoint that needs one."""
        if self.caller is None:
            raise MarketError(401, AUTH_ERROR)
        return self.caller

    @property
    def id(self) -> int:
        return self.ids["id"]
