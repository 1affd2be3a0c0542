"""The HTTP face of the market: Vast's paths under ``/api/v0`` and ``/api/v1``, and the admin API under ``/_emulator/``.

aiohttp because it ships with ``ray[default]`` (no new dependency) and is asynchronous, so injected latency costs no
threads. Handlers only translate: they parse the request, call one :class:`~skyward_ray.emulator.market.Market`
method in a worker thread (market calls may wait on the host runtime), and render what it returns or raises.

Wire behaviour that is not a market rule lives here: authentication (``Authorization: Bearer`` or ``?api_key=``;
401 ``auth_error``), Vast's documented rate limits (:mod:`.ratelimit`: per endpoint and identity = key + client
address, the create penalty, the per-address search budget; 429 bodies as Vast sends them, no ``Retry-After``), the
daily search quota, random 5xx, lost responses and added latency. Paths are accepted with and without the trailing
slash. A client that hangs up mid-request is logged as one line.

Admin API (not part of Vast; no auth unless the server was given an ``admin_key``, then ``Bearer <admin_key>``):
``GET /_emulator/counters`` (requests and statuses per ``METHOD /path/template/``; rate-limit refusals by
reason, and by endpoint and client address), ``DELETE /_emulator/counters``,
``GET|PUT /_emulator/faults`` (a :class:`FaultConfig`; PUT merges the fields it names), ``POST
/_emulator/instances/{id}/outbid`` (``{"rival_bid"?}``), ``POST /_emulator/instances/{id}/fail`` (``{"kind"}``),
``GET|POST /_emulator/clock`` (``{"advance": s}`` / ``{"scale": x}``), ``GET /_emulator/state``,
``GET|PUT /_emulator/rate_limits`` (``{"mode": "documented"|"off"|"x0.1"}``; GET shows every enforced interval),
``PUT /_emulator/credit`` (``{"credit", "user_id"?}``), ``POST /_emulator/users`` (``{"credit"?}`` -> a new
renter and its key).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from skyward_ray.emulator.documented import DOCUMENTED_BODY_MIX, RATE_LIMIT_TEXT, SEARCH_ENDPOINTS
from skyward_ray.emulator.faults import FailureKind
from skyward_ray.emulator.market import Caller, Market, MarketError
from skyward_ray.emulator.ratelimit import RateLimiter, Refusal

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AUTH_ERROR = {"success": False, "error": "auth_error", "msg": "Invalid user key"}
# Endpoints that answer without a key (gpuhunt searches anonymously).
_ANONYMOUS_OK = frozenset({"POST /api/v0/bundles/", "GET /api/v0/bundles/", "PUT /api/v0/search/asks/",
                           "GET /api/v0/gpu_names/unique/"})
_MARKET = web.AppKey("market", Market)
_STATE = web.AppKey("state", object)
_CALLER = web.RequestKey("caller", object)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with ``Content-Type: application/json`` exactly (the official CLI compares the header verbatim)."""
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json",
                        headers=headers)


def _market_error(exc: MarketError) -> web.Response:
    if isinstance(exc.body, str):
        return web.Response(text=exc.body, status=exc.status, headers=exc.headers)
    return json_response(exc.body, exc.status, exc.headers)


def _invalid(msg: str) -> web.Response:
    return json_response({"success": False, "error": "invalid_args", "msg": msg}, 400)


class _AppState:
    """Counters and rate-limit memory, shared by every request (guarded by one lock)."""

    def __init__(self, admin_key: str | None, workers: int, limiter: RateLimiter) -> None:
        self.admin_key = admin_key
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.statuses: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.limiter = limiter
        self.refused_from: defaultdict[str, Counter[str]] = defaultdict(Counter)  # endpoint -> client address -> 429s
        self.searches: Counter[tuple[str, int]] = Counter()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emulator-api")

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.statuses.clear()
            self.limiter.refused.clear()
            self.refused_from.clear()


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


def _rate_limited(market: Market, threshold: float) -> web.Response:
    """Vast's 429: plain text most often, sometimes JSON; no ``Retry-After`` unless a test asks for one."""
    config = market.faults.rate_limit
    shown = round(float(threshold), 3)
    headers = {"Retry-After": str(max(1, math.ceil(threshold)))} if config.retry_after else None
    style = config.body
    if style in ("documented", "mixed"):
        forms, weights = zip(*DOCUMENTED_BODY_MIX, strict=True)
        if style == "mixed":
            weights = tuple(1.0 for _ in forms)
        pick, total = market.draw() * sum(weights), 0.0
        style = forms[-1]
        for form, weight in zip(forms, weights, strict=True):
            total += weight
            if pick < total:
                style = form
                break
    if style == "bare" or (threshold <= 0 and style == "text"):  # no threshold to name (a random 429)
        return web.Response(text=RATE_LIMIT_TEXT, status=429, headers=headers)
    if style == "text":
        return web.Response(text=f"{RATE_LIMIT_TEXT}: endpoint threshold={shown}", status=429, headers=headers)
    text = f"{RATE_LIMIT_TEXT} endpoint threshold={shown}"
    if style == "detail":
        return json_response({"detail": text}, 429, headers)
    return json_response({"success": False, "error": "rate_limit_exceeded", "msg": text}, 429, headers)


_GATEWAY_PAGES = {
    502: "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
         "</center>\r\n</body>\r\n</html>\r\n",
    503: "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 "
         "Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n",
    504: "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out"
         "</h1></center>\r\n</body>\r\n</html>\r\n",
}


def _server_error(status: int) -> web.Response:
    if status == 500:
        return json_response({"success": False, "error": "server_error", "msg": "Internal Server Error"}, 500)
    return web.Response(text=_GATEWAY_PAGES[status], status=status, content_type="text/html")


@web.middleware
async def _wire_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    market: Market = request.app[_MARKET]
    state: _AppState = request.app[_STATE]  # type: ignore[assignment]
    if request.path.startswith("/_emulator"):
        if state.admin_key and request.headers.get("Authorization", "") != f"Bearer {state.admin_key}":
            return json_response({"success": False, "error": "auth_error", "msg": "Invalid admin key"}, 401)
        return await _guarded(handler, request)
    endpoint = f"{request.method} {_template(request)}"
    with state.lock:
        state.requests[endpoint] += 1
    response = await _api_request(request, handler, market, state, endpoint)
    with state.lock:
        state.statuses[endpoint][str(response.status)] += 1
    return response


async def _api_request(request: web.Request, handler: Handler, market: Market, state: _AppState,
                       endpoint: str) -> web.StreamResponse:
    faults = market.faults
    delay_ms = faults.latency_ms + faults.latency_jitter_ms * market.draw()
    if faults.latency_spike_rate > 0 and market.draw() < faults.latency_spike_rate:
        delay_ms += faults.latency_spike_ms
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    key = _api_key(request)
    caller = market.authenticate(key)
    if (key is not None and caller is None) or (caller is None and endpoint not in _ANONYMOUS_OK):
        return json_response(AUTH_ERROR, 401)
    request[_CALLER] = caller
    limits = faults.rate_limit
    address = request.remote or "unknown"
    refusal: Refusal | None = state.limiter.check(limits, endpoint, key, address)
    if refusal is not None:
        with state.lock:
            state.refused_from[endpoint][address] += 1
        return _rate_limited(market, refusal.threshold)
    if limits.random_rate > 0 and market.draw() < limits.random_rate:
        return _rate_limited(market, limits.interval(endpoint))
    identity = key or address
    if faults.search_quota_per_day is not None and endpoint in SEARCH_ENDPOINTS:
        day = int(market.clock.epoch() // 86_400)
        with state.lock:
            state.searches[(identity, day)] += 1
            used = state.searches[(identity, day)]
        if used > faults.search_quota_per_day:
            return json_response(
                {"success": False, "error": "search_quota_exceeded",
                 "msg": f"Daily search quota of {faults.search_quota_per_day} exceeded; it resets at 00:00 UTC."},
                429, {"X-RateLimit-Reset": str((day + 1) * 86_400)})
    if faults.error_5xx_rate > 0 and market.draw() < faults.error_5xx_rate:
        return _server_error((500, 502, 503, 504)[min(3, int(market.draw() * 4))])
    response = await _guarded(handler, request)
    if request.method != "GET" and response.status < 400 and faults.lost_response_rate > 0 and \
            market.draw() < faults.lost_response_rate:
        return _server_error(504)  # it happened, but the client never hears so
    return response


CLIENT_GONE = 499  # no HTTP status says "the client hung up"; nginx's 499 is the usual stand-in (never sent)


async def _guarded(handler: Handler, request: web.Request) -> web.StreamResponse:
    try:
        return await handler(request)
    except ConnectionResetError:  # the client hung up mid-request: one line, not aiohttp's traceback
        log.warning("client %s hung up during %s %s", request.remote, request.method, request.path)
        return web.Response(status=CLIENT_GONE)
    except MarketError as exc:
        return _market_error(exc)
    except web.HTTPNotFound:
        return json_response({"success": False, "error": "not_found", "msg": f"No such endpoint: {request.path}"},
                             404)
    except web.HTTPMethodNotAllowed:
        return json_response({"success": False, "error": "method_not_allowed",
                              "msg": f"{request.method} is not allowed on {request.path}"}, 405)


async def _call(request: web.Request, fn: Callable[[], Any]) -> Any:
    state: _AppState = request.app[_STATE]  # type: ignore[assignment]
    return await asyncio.get_running_loop().run_in_executor(state.pool, fn)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MarketError(400, {"success": False, "error": "invalid_args", "msg": "the body is not valid JSON"}) \
            from None
    if not isinstance(data, dict):
        raise MarketError(400, {"success": False, "error": "invalid_args", "msg": "the body must be a JSON object"})
    return data


def _caller(request: web.Request) -> Caller:
    caller = request.get(_CALLER)
    if caller is None:
        raise MarketError(401, AUTH_ERROR)
    return caller


def _int(request: web.Request, name: str) -> int:
    try:
        return int(request.match_info[name])
    except ValueError:
        raise MarketError(400, {"success": False, "error": "invalid_args",
                                "msg": f"{name}: {request.match_info[name]!r} is not an integer"}) from None


def _ok(fn: Callable[[web.Request, Market], Awaitable[Any]]) -> Handler:
    """Wrap a handler that returns a JSON-able body."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return json_response(await fn(request, request.app[_MARKET]))

    return handler


# --- Vast endpoints ------------------------------------------------------------------------------------------------

async def _search(request: web.Request, market: Market) -> Any:
    if request.method == "GET":
        raw = request.query.get("q", "{}")
        try:
            query = json.loads(raw)
        except json.JSONDecodeError:
            raise MarketError(400, {"success": False, "error": "invalid_args", "msg": "q: not valid JSON"}) from None
    else:
        query = await _body(request)
        if request.method == "PUT" and isinstance(query.get("q"), dict):  # PUT /search/asks/ wraps it
            query = query["q"]
    caller = request.get(_CALLER)
    return await _call(request, lambda: market.search(query, caller))  # type: ignore[arg-type]


async def _create(request: web.Request, market: Market) -> Any:
    body, caller, ask = await _body(request), _caller(request), _int(request, "id")
    return await _call(request, lambda: market.create_instance(caller, ask, body))


async def _create_bulk(request: web.Request, market: Market) -> Any:
    body, caller = await _body(request), _caller(request)
    return await _call(request, lambda: market.create_instances_bulk(caller, body))


async def _get_instance(request: web.Request, market: Market) -> Any:
    caller, iid = _caller(request), _int(request, "id")
    return await _call(request, lambda: market.get_instance(caller, iid))


async def _update_instance(request: web.Request, market: Market) -> Any:
    body, caller, iid = await _body(request), _caller(request), _int(request, "id")
    return await _call(request, lambda: market.update_instance(caller, iid, body))


async def _destroy_instance(request: web.Request, market: Market) -> Any:
    await _body(request)
    caller, iid = _caller(request), _int(request, "id")
    return await _call(request, lambda: market.destroy_instance(caller, iid))


async def _list_v1(request: web.Request, market: Market) -> Any:
    caller, params = _caller(request), dict(request.query)
    return await _call(request, lambda: market.list_instances(caller, params))


async def _list_legacy(request: web.Request, market: Market) -> Any:
    caller = _caller(request)
    return await _call(request, lambda: market.list_instances_legacy(caller))


async def _bulk_update(request: web.Request, market: Market) -> Any:
    body, caller = await _body(request), _caller(request)
    return await _call(request, lambda: market.bulk_update(caller, body))


async def _bulk_destroy(request: web.Request, market: Market) -> Any:
    body, caller = await _body(request), _caller(request)
    return await _call(request, lambda: market.destroy_instances(caller, body))


async def _filters(request: web.Request, market: Market) -> Any:
    caller = _caller(request)
    return await _call(request, lambda: market.instance_filters(caller))


async def _bid(request: web.Request, market: Market) -> Any:
    body, caller, iid = await _body(request), _caller(request), _int(request, "id")
    return await _call(request, lambda: market.change_bid(caller, iid, body))


async def _reboot(request: web.Request, market: Market) -> Any:
    caller, iid = _caller(request), _int(request, "id")
    return await _call(request, lambda: market.reboot_instance(caller, iid))


async def _instance_ssh(request: web.Request, market: Market) -> Any:
    caller, iid = _caller(request), _int(request, "id")
    if request.method == "GET":
        return await _call(request, lambda: market.instance_ssh_keys(caller, iid))
    body = await _body(request)
    return await _call(request, lambda: market.attach_ssh(caller, iid, body))


async def _detach_ssh(request: web.Request, market: Market) -> Any:
    caller, iid, kid = _caller(request), _int(request, "id"), _int(request, "key")
    return await _call(request, lambda: market.detach_ssh(caller, iid, kid))


async def _overlay(request: web.Request, market: Market) -> Any:
    caller = _caller(request)
    if request.method == "GET":
        return await _call(request, lambda: market.list_overlays(caller))
    body = await _body(request)
    action = {"POST": market.create_overlay, "PUT": market.join_overlay, "DELETE": market.delete_overlay}[
        request.method]
    return await _call(request, lambda: action(caller, body))


async def _clusters(request: web.Request, market: Market) -> Any:
    caller = _caller(request)
    return await _call(request, lambda: market.list_clusters(caller))


async def _user(request: web.Request, market: Market) -> Any:
    caller = _caller(request)
    return await _call(request, lambda: market.current_user(caller))


async def _ssh_keys(request: web.Request, market: Market) -> Any:
    caller = _caller(request)
    if request.method == "GET":
        return await _call(request, lambda: market.list_ssh_keys(caller))
    body = await _body(request)
    return await _call(request, lambda: market.create_ssh_key(caller, body))


async def _ssh_key(request: web.Request, market: Market) -> Any:
    caller, kid = _caller(request), _int(request, "id")
    if request.method == "DELETE":
        return await _call(request, lambda: market.delete_ssh_key(caller, kid))
    body = await _body(request)
    return await _call(request, lambda: market.update_ssh_key(caller, kid, body))


async def _gpu_names(request: web.Request, market: Market) -> Any:
    return {"gpu_names": market.gpu_names()}


# --- admin ---------------------------------------------------------------------------------------------------------

async def _admin_index(request: web.Request, market: Market) -> Any:
    return {"endpoints": sorted({f"{r.method} {r.resource.canonical}" for r in request.app.router.routes()
                                 if r.resource is not None and r.resource.canonical.startswith("/_emulator")})}


async def _admin_counters(request: web.Request, market: Market) -> Any:
    state: _AppState = request.app[_STATE]  # type: ignore[assignment]
    if request.method == "DELETE":
        state.reset()
        return {"success": True}
    with state.lock:
        return {"requests": dict(state.requests), "statuses": {k: dict(v) for k, v in state.statuses.items()},
                "rate_limited": dict(state.limiter.refused),
                "rate_limited_from": {k: dict(v) for k, v in state.refused_from.items()}}


async def _admin_faults(request: web.Request, market: Market) -> Any:
    if request.method == "PUT":
        patch = await _body(request)
        try:
            market.set_faults(market.faults.merged(patch))
        except ValueError as exc:  # pydantic's ValidationError included
            raise MarketError(400, {"success": False, "error": "invalid_args", "msg": str(exc)}) from None
    return market.faults.model_dump(mode="json")


async def _admin_rate_limits(request: web.Request, market: Market) -> Any:
    """``GET``: what is enforced (mode, every interval, penalty, search budget, inferred choices). ``PUT`` with
    ``{"mode": "documented"|"off"|"x<scale>"}`` switches; ``{"reset": true}`` forgets past calls."""
    state: _AppState = request.app[_STATE]  # type: ignore[assignment]
    if request.method == "PUT":
        body = await _body(request)
        unknown = sorted(set(body) - {"mode", "reset"})
        if unknown:
            raise MarketError(400, {"success": False, "error": "invalid_args",
                                    "msg": f"{unknown[0]}: unknown field; allowed: mode, reset"})
        if "mode" in body:
            try:
                market.set_faults(market.faults.merged({"rate_limit": {"mode": body["mode"]}}))
            except ValueError as exc:
                raise MarketError(400, {"success": False, "error": "invalid_args", "msg": str(exc)}) from None
        if body.get("reset"):
            state.limiter.reset()
    return market.faults.rate_limit.table()


async def _admin_outbid(request: web.Request, market: Market) -> Any:
    body, iid = await _body(request), _int(request, "id")
    rival = body.get("rival_bid")
    return await _call(request, lambda: market.trigger_outbid(iid, None if rival is None else float(rival)))


async def _admin_fail(request: web.Request, market: Market) -> Any:
    body, iid = await _body(request), _int(request, "id")
    try:
        kind = FailureKind(body.get("kind", "exited"))
    except ValueError:
        raise MarketError(400, {"success": False, "error": "invalid_args",
                                "msg": f"kind: {body.get('kind')!r} is unknown; allowed: "
                                       f"{', '.join(k.value for k in FailureKind)}"}) from None
    return await _call(request, lambda: market.trigger_failure(iid, kind))


async def _admin_clock(request: web.Request, market: Market) -> Any:
    if request.method == "POST":
        body = await _body(request)
        try:
            if "scale" in body:
                market.clock.scale = float(body["scale"])
            if "advance" in body:
                market.clock.advance(float(body["advance"]))
        except (TypeError, ValueError) as exc:
            raise MarketError(400, {"success": False, "error": "invalid_args", "msg": str(exc)}) from None
        await _call(request, market.tick)
    return {"now": market.clock.now(), "epoch": market.clock.epoch(), "scale": market.clock.scale}


async def _admin_state(request: web.Request, market: Market) -> Any:
    return await _call(request, market.dump)


async def _admin_credit(request: web.Request, market: Market) -> Any:
    body = await _body(request)
    try:
        credit = float(body["credit"])
    except (KeyError, TypeError, ValueError):
        raise MarketError(400, {"success": False, "error": "invalid_args", "msg": "credit: a number is required"}) \
            from None
    user_id = body.get("user_id")
    return market.set_credit(credit, None if user_id is None else int(user_id))


async def _admin_users(request: web.Request, market: Market) -> Any:
    body = await _body(request)
    user = market.add_user(credit=float(body.get("credit", 1000.0)))
    return {"success": True, "id": user.user_id, "api_key": user.api_key, "credit": user.credit}


def build_app(market: Market, *, admin_key: str | None = None, workers: int = 16,
              limiter: RateLimiter | None = None) -> web.Application:
    """The aiohttp application serving ``market`` (``limiter``: a rate limiter with a test clock)."""
    app = web.Application(middlewares=[_wire_middleware], client_max_size=8 * 1024 * 1024)
    app[_MARKET] = market
    state = _AppState(admin_key, workers, limiter or RateLimiter())
    app[_STATE] = state

    def add(method: str, path: str, fn: Callable[[web.Request, Market], Awaitable[Any]]) -> None:
        handler = _ok(fn)
        app.router.add_route(method, path, handler)
        if path.endswith("/"):
            app.router.add_route(method, path[:-1], handler)

    iid = r"{id:\d+}"
    v0 = "/api/v0"
    add("POST", f"{v0}/bundles/", _search)
    add("GET", f"{v0}/bundles/", _search)
    add("PUT", f"{v0}/search/asks/", _search)
    add("GET", f"{v0}/gpu_names/unique/", _gpu_names)
    add("PUT", f"{v0}/asks/{iid}/", _create)
    add("POST", f"{v0}/asks/bulk/", _create_bulk)
    add("GET", f"{v0}/instances/filters/", _filters)
    add("PUT", f"{v0}/instances/bid_price/{iid}/", _bid)
    add("PUT", f"{v0}/instances/reboot/{iid}/", _reboot)
    add("PUT", f"{v0}/instances/recycle/{iid}/", _reboot)
    add("GET", f"{v0}/instances/{iid}/ssh/", _instance_ssh)
    add("POST", f"{v0}/instances/{iid}/ssh/", _instance_ssh)
    add("DELETE", f"{v0}/instances/{iid}/ssh/{{key:\\d+}}/", _detach_ssh)
    add("GET", f"{v0}/instances/{iid}/", _get_instance)
    add("PUT", f"{v0}/instances/{iid}/", _update_instance)
    add("DELETE", f"{v0}/instances/{iid}/", _destroy_instance)
    add("GET", f"{v0}/instances/", _list_legacy)
    add("PUT", f"{v0}/instances/", _bulk_update)
    add("DELETE", f"{v0}/instances/", _bulk_destroy)
    add("GET", "/api/v1/instances/", _list_v1)
    for method in ("GET", "POST", "PUT", "DELETE"):
        add(method, f"{v0}/overlay/", _overlay)
    add("GET", f"{v0}/clusters/", _clusters)
    add("GET", f"{v0}/users/current/", _user)
    add("GET", f"{v0}/ssh/", _ssh_keys)
    add("POST", f"{v0}/ssh/", _ssh_keys)
    add("PUT", f"{v0}/ssh/{iid}/", _ssh_key)
    add("DELETE", f"{v0}/ssh/{iid}/", _ssh_key)

    add("GET", "/_emulator/", _admin_index)
    add("GET", "/_emulator/counters/", _admin_counters)
    add("DELETE", "/_emulator/counters/", _admin_counters)
    add("GET", "/_emulator/faults/", _admin_faults)
    add("PUT", "/_emulator/faults/", _admin_faults)
    add("GET", "/_emulator/rate_limits/", _admin_rate_limits)
    add("PUT", "/_emulator/rate_limits/", _admin_rate_limits)
    add("POST", f"/_emulator/instances/{iid}/outbid/", _admin_outbid)
    add("POST", f"/_emulator/instances/{iid}/fail/", _admin_fail)
    add("GET", "/_emulator/clock/", _admin_clock)
    add("POST", "/_emulator/clock/", _admin_clock)
    add("GET", "/_emulator/state/", _admin_state)
    add("PUT", "/_emulator/credit/", _admin_credit)
    add("POST", "/_emulator/users/", _admin_users)

    async def _shutdown(_: web.Application) -> None:
        state.pool.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(_shutdown)
    return app
