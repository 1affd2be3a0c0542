"""Refusals as Vast sends them: the state raises :class:`MarketError` (an HTTP status and Vast's error body, as moto's
service exceptions carry theirs) and the HTTP layer sends it unchanged."""

from __future__ import annotations

from typing import Any


class MarketError(Exception):
    """A rule said no: ``status`` and ``body`` are exactly what the HTTP layer sends."""

    def __init__(self, status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("msg") if isinstance(body, dict) else body)
        self.status = status
        self.body = body
        self.headers = headers or {}


def error(status: int, code: str, msg: str, **extra: Any) -> MarketError:
    """Vast's error envelope: ``{"success": false, "error": code, "msg": msg, ...extra}``."""
    return MarketError(status, {"success": False, "error": code, "msg": msg, **extra})


def invalid_args(msg: str) -> MarketError:
    """Vast's create-time 400 (create_instance.yaml: "error 400/3467: Invalid args: ...")."""
    return error(400, "invalid_args", f"error 400/3467: Invalid args: {msg}")


def bad_request(msg: str) -> MarketError:
    """A 400 ``invalid_args`` with a plain message (every endpoint but the create)."""
    return error(400, "invalid_args", msg)


def no_such_instance(instance_id: int) -> MarketError:
    return error(404, "no_such_instance", f"Instance {instance_id} not found.")


def no_such_ask(ask_id: int) -> MarketError:
    return error(404, "invalid_args", f"error 404/3603: no_such_ask Instance type by id {ask_id} is not available.",
                 ask_id=ask_id)


def instance_key_refused(scope: int) -> MarketError:
    """A CONTAINER_API_KEY used beyond what it may do."""
    return error(403, "forbidden", f"This key belongs to instance {scope}: it can only stop or destroy it.")
