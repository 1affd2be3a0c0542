"""Fault injection on the wire, driven by the market's :class:`FaultConfig` and its seeded RNG: added latency,
random 429s and 5xx, answers lost after the change took effect, the daily search quota; and Vast's 429 bodies."""

from __future__ import annotations

import asyncio
import math

from aiohttp import web

from skyward_ray.emulator.documented import DOCUMENTED_BODY_MIX, RATE_LIMIT_TEXT, SEARCH_ENDPOINTS
from skyward_ray.emulator.market import Market
from skyward_ray.emulator.wire.kit import WireState, json_response

GATEWAY_PAGES = {
    502: "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
         "</center>\r\n</body>\r\n</html>\r\n",
    503: "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 "
         "Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n",
    504: "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out"
         "</h1></center>\r\n</body>\r\n</html>\r\n",
}


def _body_style(market: Market, style: str) -> str:
    """The configured 429 body form; ``documented`` and ``mixed`` draw one (weighted, or uniformly)."""
    if style not in ("documented", "mixed"):
        return style
    forms, weights = zip(*DOCUMENTED_BODY_MIX, strict=True)
    if style == "mixed":
        weights = tuple(1.0 for _ in forms)
    pick, total = market.draw() * sum(weights), 0.0
    for form, weight in zip(forms, weights, strict=True):
        total += weight
        if pick < total:
            return form
    return forms[-1]


def rate_limited(market: Market, threshold: float) -> web.Response:
    """Vast's 429: plain text most often, sometimes JSON; no ``Retry-After`` unless a test asks for one."""
    config = market.faults.rate_limit
    shown = round(float(threshold), 3)
    headers = {"Retry-After": str(max(1, math.ceil(threshold)))} if config.retry_after else None
    style = _body_style(market, config.body)
    if style == "bare" or (threshold <= 0 and style == "text"):  # no threshold to name (a random 429)
        return web.Response(text=RATE_LIMIT_TEXT, status=429, headers=headers)
    if style == "text":
        return web.Response(text=f"{RATE_LIMIT_TEXT}: endpoint threshold={shown}", status=429, headers=headers)
    text = f"{RATE_LIMIT_TEXT} endpoint threshold={shown}"
    if style == "detail":
        return json_response({"detail": text}, 429, headers)
    return json_response({"success": False, "error": "rate_limit_exceeded", "msg": text}, 429, headers)


def server_error(status: int) -> web.Response:
    if status == 500:
        return json_response({"success": False, "error": "server_error", "msg": "Internal Server Error"}, 500)
    return web.Response(text=GATEWAY_PAGES[status], status=status, content_type="text/html")


async def add_latency(market: Market) -> None:
    faults = market.faults
    delay_ms = faults.latency_ms + faults.latency_jitter_ms * market.draw()
    if faults.latency_spike_rate > 0 and market.draw() < faults.latency_spike_rate:
        delay_ms += faults.latency_spike_ms
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)


def before_handler(market: Market, wire: WireState, endpoint: str, identity: str) -> web.Response | None:
    """A refusal the faults pick for a call the rate limiter let through: a random 429, the daily search quota, a
    random 5xx; None lets the call through."""
    faults = market.faults
    limits = faults.rate_limit
    if limits.random_rate > 0 and market.draw() < limits.random_rate:
        return rate_limited(market, limits.interval(endpoint))
    if faults.search_quota_per_day is not None and endpoint in SEARCH_ENDPOINTS:
        day = int(market.clock.epoch() // 86_400)
        with wire.lock:
            wire.searches[(identity, day)] += 1
            used = wire.searches[(identity, day)]
        if used > faults.search_quota_per_day:
            return json_response(
                {"success": False, "error": "search_quota_exceeded",
                 "msg": f"Daily search quota of {faults.search_quota_per_day} exceeded; it resets at 00:00 UTC."},
                429, {"X-RateLimit-Reset": str((day + 1) * 86_400)})
    if faults.error_5xx_rate > 0 and market.draw() < faults.error_5xx_rate:
        return server_error((500, 502, 503, 504)[min(3, int(market.draw() * 4))])
    return None


def after_handler(market: Market, method: str, response: web.StreamResponse) -> web.StreamResponse:
    """A change that took effect, answered with a 504 the client must not trust (lost responses)."""
    faults = market.faults
    if method != "GET" and response.status < 400 and faults.lost_response_rate > 0 and \
            market.draw() < faults.lost_response_rate:
        return server_error(504)
    return response
