"""Request parsing: Vast's wire bodies checked against the documented bounds and turned into typed requests.

Every refusal names the field, the value and what is allowed, with Vast's 400 body.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Any

from skyward_ray.emulator.documented import (
    CREATE_ARGS_MAX,
    CREATE_DISK_MIN,
    CREATE_ENV_TOTAL_MAX,
    CREATE_ENV_VALUE_MAX,
    CREATE_IMAGE_MAX,
    CREATE_LABEL_MAX,
    CREATE_PRICE_MAX,
    CREATE_PRICE_MIN,
    IDENTITY_PORT_MIN,
    LABEL_MAX,
)
from skyward_ray.emulator.errors import bad_request, error, invalid_args
from skyward_ray.emulator.records import EnvRequest, RentalOrder

OVERLAY_NAME = re.compile(r"^[a-z0-9-]{1,64}$")
RUNTYPE_TOKENS = frozenset({"ssh", "ssh_proxy", "ssh_direc", "ssh_direct", "jupyter", "jupyter_proxy",
                            "jupyter_direc", "jupyter_direct", "args"})
ENV_FLAGS = ("-e", "-p", "-h", "-v", "-n")


def port_key(spec: str) -> str:
    """``8080:8080/udp`` -> ``8080/udp``: the container side of a ``-p`` request. A container port of 70000 or more is
    an identity request (networking.mdx), kept as asked (``70000/tcp``) until the rental maps it."""
    spec = spec.strip()
    proto = "tcp"
    if "/" in spec:
        spec, proto = spec.rsplit("/", 1)
        proto = proto.lower()
    container = spec.rsplit(":", 1)[-1]
    valid = proto in ("tcp", "udp") and container.isdigit() and (
        1 <= int(container) <= 65535 or int(container) >= IDENTITY_PORT_MIN)
    if not valid:
        raise invalid_args(f"env: port request -p {spec!r} is not HOST:CONTAINER[/tcp|/udp] with a container port "
                           f"1-65535, or {IDENTITY_PORT_MIN} and up for an identity port")
    return f"{int(container)}/{proto}"


def _flags_to_dict(env: str) -> dict[str, str]:
    """A docker-flag string (``-e K=v -p 8080:8080 -n ov -h host``) in the dict form of ``env``."""
    try:
        tokens = shlex.split(env)
    except ValueError:
        tokens = env.split()
    as_dict: dict[str, str] = {}
    flag: str | None = None
    for token in tokens:
        if flag is None:
            if token in ENV_FLAGS:
                flag = token
            continue
        if flag == "-e":
            key, _, value = token.partition("=")
            if key:
                as_dict[key] = value.strip("'\"")
        elif flag == "-h":
            as_dict["-h"] = token
        else:
            as_dict[f"{flag} {token}"] = "1"
        flag = None
    return as_dict


def parse_env(env: Any) -> EnvRequest:
    """Accept both wire forms: a dict (``{"K": "v", "-p 8080:8080": "1", "-n ov": "1"}``) or a docker-flag string."""
    if env is None:
        env = {}
    if isinstance(env, str):
        env = _flags_to_dict(env)
    if not isinstance(env, dict):
        raise bad_request(f"env: expected an object or a docker-flag string, got {type(env).__name__}")
    request = EnvRequest(pairs=[], variables={}, ports=[], overlays=[], hostname=None)
    for raw_key, raw_value in env.items():
        key = str(raw_key)
        value = "" if raw_value is None else str(raw_value)
        request.pairs.append([key, value])
        if not key.startswith("-"):
            request.variables[key] = value
            continue
        flag, _, arg = key.partition(" ")
        arg = arg.strip()
        if flag == "-p" and arg:
            request.ports.append(port_key(arg))
        elif flag == "-n" and arg:
            request.overlays.append(arg)
        elif flag == "-h":
            request.hostname = arg or value
        elif flag == "-e" and "=" in arg:
            name, _, val = arg.partition("=")
            request.variables[name] = val
    return request


def normalize_runtype(runtype: Any, has_args: bool) -> str:
    if runtype in (None, ""):
        return "args" if has_args else "ssh"
    tokens = str(runtype).split()
    unknown = [t for t in tokens if t not in RUNTYPE_TOKENS]
    if unknown or not tokens:
        raise bad_request(f"runtype: {runtype!r} is unknown; allowed tokens: {', '.join(sorted(RUNTYPE_TOKENS))}")
    return " ".join(t.replace("_direct", "_direc") for t in tokens)


def _image(body: dict[str, Any]) -> Any:
    image = body.get("image")
    if not image and not body.get("template_hash_id") and not body.get("template_id"):
        raise invalid_args("image is required (or a template)")
    if image is not None and (not isinstance(image, str) or len(image) > CREATE_IMAGE_MAX):
        raise invalid_args(f"image: must be a string of at most {CREATE_IMAGE_MAX} characters")
    return image


def _disk(body: dict[str, Any]) -> float:
    raw_disk = body.get("disk")
    try:
        disk = float(raw_disk if raw_disk is not None else 10.0)
    except (TypeError, ValueError):
        raise invalid_args(f"disk: {raw_disk!r} is not a number of GB") from None
    if not math.isfinite(disk) or disk < CREATE_DISK_MIN:
        raise invalid_args(f"disk: {disk:g} GB is below the minimum of {CREATE_DISK_MIN:g} GB")
    return disk


def _launch_text(body: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(label, onstart, args), each of the documented type; args, args_str and onstart within their shared bound."""
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > CREATE_LABEL_MAX):
        raise invalid_args(f"label: must be a string of at most {CREATE_LABEL_MAX} characters")
    onstart = body.get("onstart")
    if onstart is not None and not isinstance(onstart, str):
        raise invalid_args("onstart: must be a string")
    args = body.get("args")
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
        raise invalid_args("args: must be a list of strings")
    args_str = body.get("args_str")
    if args_str is not None and not isinstance(args_str, str):
        raise invalid_args("args_str: must be a string")
    combined = len(" ".join(args or [])) + len(args_str or "") + len(onstart or "")
    if combined > CREATE_ARGS_MAX:
        raise invalid_args(f"args, args_str and onstart: {combined} characters together; at most {CREATE_ARGS_MAX}")
    return label, onstart, args


def _create_price(body: dict[str, Any]) -> float | None:
    price_raw = body.get("price")
    if price_raw is None:
        return None
    try:
        bid = float(price_raw)
    except (TypeError, ValueError):
        raise error(400, "invalid_price", f"error 400/3467: Invalid args: price: {price_raw!r} is not a $/h "
                                          "number") from None
    if not CREATE_PRICE_MIN <= bid <= CREATE_PRICE_MAX:
        raise error(400, "invalid_price", f"error 400/3467: Invalid args: price: {bid:g} is outside the allowed "
                                          f"{CREATE_PRICE_MIN:g}-{CREATE_PRICE_MAX:g} $/h")
    return bid


def check_env_bounds(env: EnvRequest) -> None:
    """Each env value at most 256 characters, all of env (keys and values) at most 32768."""
    total = 0
    for key, value in env.pairs:
        if len(value) > CREATE_ENV_VALUE_MAX:
            raise invalid_args(f"env: the value of {key[:64]!r} has {len(value)} characters; at most "
                               f"{CREATE_ENV_VALUE_MAX}")
        total += len(key) + len(value)
    if total > CREATE_ENV_TOTAL_MAX:
        raise invalid_args(f"env: {total} characters in all; at most {CREATE_ENV_TOTAL_MAX}")


def parse_rental(body: dict[str, Any]) -> RentalOrder:
    """The body of ``PUT /asks/{id}/``, checked in the order Vast names its refusals."""
    image = _image(body)
    disk = _disk(body)
    label, onstart, args = _launch_text(body)
    bid = _create_price(body)
    runtype = normalize_runtype(body.get("runtype"), bool(args or body.get("args_str")))
    env = parse_env(body.get("env"))
    check_env_bounds(env)
    named = str(image) if image else ""
    return RentalOrder(image=str(named or body.get("template_hash_id") or body.get("template_id")), disk=disk,
                       label=label, onstart=onstart, args=args, bid=bid, runtype=runtype, env=env)


def parse_update(body: dict[str, Any]) -> tuple[str | None, bool, Any]:
    """``PUT /instances/{id}/``: (state, whether a label is sent, the label)."""
    state = body.get("state")
    has_label = "label" in body
    if state is None and not has_label:
        raise bad_request("nothing to change: send state (running|stopped) or label")
    if state is not None and state not in ("running", "stopped"):
        raise bad_request(f"state: {state!r} is unknown; allowed: running, stopped")
    label = body.get("label")
    if has_label and label is not None and (not isinstance(label, str) or len(label) > LABEL_MAX):
        raise bad_request(f"label: must be a string of at most {LABEL_MAX} characters (label_instance)")
    return state, has_label, label


def parse_bid(price_raw: Any) -> float | None:
    """``PUT /instances/bid_price/{id}/``'s price; None asks for a winning bid."""
    if price_raw is None:
        return None
    try:
        price = float(price_raw)
    except (TypeError, ValueError):
        raise bad_request("Please set a bid price >= 0.001.") from None
    if price < 0.001:
        raise bad_request("Please set a bid price >= 0.001.")
    return price


def ssh_key(body: dict[str, Any]) -> str:
    """The ``ssh_key`` of a body, stripped; 400 ``no_ssh_key`` without one."""
    key = body.get("ssh_key")
    if not isinstance(key, str) or not key.strip():
        raise error(400, "no_ssh_key", "No ssh key provided")
    return key.strip()


def overlay_name(name: Any) -> str:
    if not isinstance(name, str) or not OVERLAY_NAME.match(name):
        raise bad_request(f"name: {name!r} must be 1-64 characters of lowercase a-z, 0-9 and -")
    return name


def int_field(name: str, raw: Any, what: str) -> int:
    """An id sent in a body; 400 ``"{name}: {raw!r} is not {what}"`` otherwise."""
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise bad_request(f"{name}: {raw!r} is not {what}") from None


def overlay_selector(body: dict[str, Any]) -> tuple[int | None, str | None]:
    """``DELETE /overlay/``: (overlay_id, None) or (None, overlay_name)."""
    if body.get("overlay_id") is not None:
        return int_field("overlay_id", body["overlay_id"], "an id"), None
    if body.get("overlay_name") is not None:
        return None, str(body["overlay_name"])
    raise bad_request("send overlay_id or overlay_name")

