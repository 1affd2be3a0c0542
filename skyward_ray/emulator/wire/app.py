"""The aiohttp application: registers the route table and runs each request through the wire rules before its
route's function: admin auth, counters, latency, API-key auth (401 ``auth_error``), Vast's documented rate limits
(:mod:`skyward_ray.emulator.ratelimit`; 429 bodies as Vast sends them), then the injected faults."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from skyward_ray.emulator.errors import MarketError
from skyward_ray.emulator.market import Market
from skyward_ray.emulator.ratelimit import RateLimiter
from skyward_ray.emulator.wire import injection
from skyward_ray.emulator.wire.kit import (
    AUTH_ERROR,
    CALLER,
    CLIENT_GONE,
    WIRE,
    Call,
    WireState,
    error_response,
    json_response,
    path_ints,
    read_body,
)
from skyward_ray.emulator.wire.routes import ADMIN_PREFIX, ADMIN_ROUTES, ANONYMOUS_OK, VAST_ROUTES, Route

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "<unmatched>"
    path = resource.canonical
    return path if path.endswith("/") else path + "/"


def _api_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.query.get("api_key") or None


@web.middleware
async def _wire_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    wire = request.app[WIRE]
    if request.path.startswith(ADMIN_PREFIX):
        if wire.admin_key and request.headers.get("Authorization", "") != f"Bearer {wire.admin_key}":
            return json_response({"success": False, "error": "auth_error", "msg": "Invalid admin key"}, 401)
        return await _guarded(handler, request)
    endpoint = f"{request.method} {_template(request)}"
    with wire.lock:
        wire.requests[endpoint] += 1
    response = await _api_request(request, handler, wire, endpoint)
    with wire.lock:
        wire.statuses[endpoint][str(response.status)] += 1
    return response


async def _api_request(request: web.Request, handler: Handler, wire: WireState,
                       endpoint: str) -> web.StreamResponse:
    market = wire.market
    await injection.add_latency(market)
    key = _api_key(request)
    caller = market.authenticate(key)
    if (key is not None and caller is None) or (caller is None and endpoint not in ANONYMOUS_OK):
        return json_response(AUTH_ERROR, 401)
    request[CALLER] = caller
    address = request.remote or "unknown"
    refusal = wire.limiter.check(market.faults.rate_limit, endpoint, key, address)
    if refusal is not None:
        with wire.lock:
            wire.refused_from[endpoint][address] += 1
        return injection.rate_limited(market, refusal.threshold)
    refused = injection.before_handler(market, wire, endpoint, key or address)
    if refused is not None:
        return refused
    return injection.after_handler(market, request.method, await _guarded(handler, request))


async def _guarded(handler: Handler, request: web.Request) -> web.StreamResponse:
    try:
        return await handler(request)
    except ConnectionResetError:  # the client hung up mid-request: one line, not aiohttp's traceback
        log.warning("client %s hung up during %s %s", request.remote, request.method, request.path)
        return web.Response(status=CLIENT_GONE)
    except MarketError as exc:
        return error_response(exc)
    except web.HTTPNotFound:
        return json_response({"success": False, "error": "not_found", "msg": f"No such endpoint: {request.path}"},
                             404)
    except web.HTTPMethodNotAllowed:
        return json_response({"success": False, "error": "method_not_allowed",
                              "msg": f"{request.method} is not allowed on {request.path}"}, 405)


def _handler(route: Route) -> Handler:
    """Parse the request into a :class:`Call`, serve it (in a worker thread unless inline: market calls may wait on
    the host runtime) and send what it returns as JSON."""

    async def handle(request: web.Request) -> web.StreamResponse:
        wire = request.app[WIRE]
        body = await read_body(request) if route.reads_body else {}
        call = Call(market=wire.market, wire=wire, caller=request.get(CALLER),  # type: ignore[arg-type]
                    ids=path_ints(request), body=body, query=dict(request.query))
        if route.inline:
            return json_response(route.serve(call))
        result = await asyncio.get_running_loop().run_in_executor(wire.pool, route.serve, call)
        return json_response(result)

    return handle


def build_app(market: Market, *, admin_key: str | None = None, workers: int = 16,
              limiter: RateLimiter | None = None) -> web.Application:
    """The aiohttp application serving ``market`` (``limiter``: a rate limiter with a test clock)."""
    app = web.Application(middlewares=[_wire_middleware], client_max_size=8 * 1024 * 1024)
    wire = WireState(market, admin_key, workers, limiter or RateLimiter())
    app[WIRE] = wire
    for route in (*VAST_ROUTES, *ADMIN_ROUTES):
        handler = _handler(route)
        app.router.add_route(route.method, route.path, handler)
        app.router.add_route(route.method, route.path[:-1], handler)
    wire.admin_endpoints = sorted({f"{r.method} {r.resource.canonical}" for r in app.router.routes()
                                   if r.resource is not None and r.resource.canonical.startswith(ADMIN_PREFIX)})

    async def shutdown(_: web.Application) -> None:
        wire.pool.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown)
    return app
