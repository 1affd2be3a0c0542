"""The ``/_emulator/`` admin API (not part of Vast): counters, fault switches, rate limits, outbid and failure
triggers, the clock, the state dump, credit and new renters. Each function takes a parsed :class:`Call`."""

from __future__ import annotations

from typing import Any

from skyward_ray.emulator.errors import bad_request
from skyward_ray.emulator.faults import FailureKind
from skyward_ray.emulator.wire.kit import Call


def index(call: Call) -> Any:
    return {"endpoints": call.wire.admin_endpoints}


def counters(call: Call) -> Any:
    """Requests and statuses per ``METHOD /path/template/``; rate-limit refusals by reason, endpoint and address."""
    return call.wire.counters()


def reset_counters(call: Call) -> Any:
    call.wire.reset()
    return {"success": True}


def faults(call: Call) -> Any:
    return call.market.faults.model_dump(mode="json")


def patch_faults(call: Call) -> Any:
    """Merge the fields the body names into the fault switches."""
    market = call.market
    try:
        market.set_faults(market.faults.merged(call.body))
    except ValueError as exc:  # pydantic's ValidationError included
        raise bad_request(str(exc)) from None
    return market.faults.model_dump(mode="json")


def rate_limits(call: Call) -> Any:
    """What is enforced: mode, every interval, penalty, search budget, inferred choices."""
    return call.market.faults.rate_limit.table()


def set_rate_limits(call: Call) -> Any:
    """``{"mode": "documented"|"off"|"x<scale>"}`` switches; ``{"reset": true}`` forgets past calls."""
    market, body = call.market, call.body
    unknown = sorted(set(body) - {"mode", "reset"})
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field; allowed: mode, reset")
    if "mode" in body:
        try:
            market.set_faults(market.faults.merged({"rate_limit": {"mode": body["mode"]}}))
        except ValueError as exc:
            raise bad_request(str(exc)) from None
    if body.get("reset"):
        call.wire.limiter.reset()
    return market.faults.rate_limit.table()


def outbid(call: Call) -> Any:
    rival = call.body.get("rival_bid")
    return call.market.trigger_outbid(call.id, None if rival is None else float(rival))


def fail(call: Call) -> Any:
    raw = call.body.get("kind", "exited")
    try:
        kind = FailureKind(raw)
    except ValueError:
        raise bad_request(f"kind: {call.body.get('kind')!r} is unknown; allowed: "
                          f"{', '.join(k.value for k in FailureKind)}") from None
    return call.market.trigger_failure(call.id, kind)


def clock(call: Call) -> Any:
    clock = call.market.clock
    return {"now": clock.now(), "epoch": clock.epoch(), "scale": clock.scale}


def move_clock(call: Call) -> Any:
    """``{"advance": s}`` and/or ``{"scale": x}``, then one tick so the market shows the result at once."""
    market, body = call.market, call.body
    try:
        if "scale" in body:
            market.clock.scale = float(body["scale"])
        if "advance" in body:
            market.clock.advance(float(body["advance"]))
    except (TypeError, ValueError) as exc:
        raise bad_request(str(exc)) from None
    market.tick()
    return clock(call)


def state(call: Call) -> Any:
    return call.market.dump()


def credit(call: Call) -> Any:
    try:
        amount = float(call.body["credit"])
    except (KeyError, TypeError, ValueError):
        raise bad_request("credit: a number is required") from None
    user_id = call.body.get("user_id")
    return call.market.set_credit(amount, None if user_id is None else int(user_id))


def new_user(call: Call) -> Any:
    user = call.market.add_user(credit=float(call.body.get("credit", 1000.0)))
    return {"success": True, "id": user.user_id, "api_key": user.api_key, "credit": user.credit}
