"""Wire rendering of the account-side records (user, SSH keys, overlays) and the admin dump; instance rows are in
:mod:`skyward_ray.emulator.rows`, offer rows in :mod:`skyward_ray.emulator.search`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from skyward_ray.emulator.records import AccountSshKey, Instance, Overlay, User
from skyward_ray.emulator.state.backend import MarketBackend


def user_body(user: User) -> dict[str, Any]:
    """``GET /users/current/``; never carries any api_key."""
    first_key = next(iter(user.ssh_keys.values()), None)
    return {
        "id": user.user_id, "username": user.username, "email": user.email, "fullname": user.username,
        "credit": round(user.credit, 6), "balance": 0.0, "balance_threshold": 0.0,
        "balance_threshold_enabled": False, "billed_expected": 0.0, "billed_verified": 0.0,
        "billing_creditonly": True, "can_pay": user.credit > 0, "has_billing": True, "has_payout": False,
        "email_verified": True, "got_signup_credit": True, "last4": None, "paid_expected": 0.0,
        "paid_verified": 0.0, "paypal_email": None,
        "ssh_key": first_key.public_key if first_key else None,
        "key_id": None, "sid": None,
    }


def ssh_key_row(key: AccountSshKey) -> dict[str, Any]:
    """One key as ``GET /ssh/`` lists it."""
    return {"id": key.key_id, "user_id": key.user_id, "key": key.public_key, "created_at": key.created_at,
            "deleted_at": None}


def created_ssh_key(key: AccountSshKey) -> dict[str, Any]:
    """One key as ``POST /ssh/`` answers it."""
    return {"success": True, "key": {"id": key.key_id, "user_id": key.user_id, "public_key": key.public_key,
                                     "created_at": key.created_at, "deleted_at": None}}


def overlay_row(overlay: Overlay) -> dict[str, Any]:
    return {"overlay_id": overlay.overlay_id, "name": overlay.name, "internal_subnet": overlay.internal_subnet,
            "cluster_id": overlay.cluster_id, "instances": list(overlay.members)}


def dump(state: MarketBackend, row: Callable[[Instance], dict[str, Any]]) -> dict[str, Any]:
    """Everything a test or benchmark may audit (call under ``state.lock``). Carries no API key of any kind."""
    instances = []
    for inst in state.instances.values():
        entry = row(inst)
        entry.update({"user_id": inst.user_id, "stop_reason": inst.stop_reason, "bid": inst.bid,
                      "rival_bid": inst.rival_bid, "cost": round(inst.cost, 6)})
        instances.append(entry)
    clock = state.clock
    return {
        "clock": {"now": clock.now(), "epoch": clock.epoch(), "scale": clock.scale},
        "users": [{"id": u.user_id, "username": u.username, "credit": round(u.credit, 6)}
                  for u in state.users.values()],
        "instances": instances,
        "overlays": [{"overlay_id": o.overlay_id, "name": o.name, "cluster_id": o.cluster_id, "user_id": o.user_id,
                      "internal_subnet": o.internal_subnet, "members": {str(k): v for k, v in o.members.items()}}
                     for o in state.overlays.values()],
        "ledger": [asdict(entry) for entry in state.ledger.values()],
        "market": {"scenario": state.scenario.name, "seed": state.scenario.seed, "machines": len(state.machines),
                   "clusters": len(state.clusters), "offers": len(state.rows_locked())},
        "account_key_leaks": state.account_key_leaks,
    }
