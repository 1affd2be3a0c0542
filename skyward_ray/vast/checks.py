"""Arguments checked before anything is sent: one :class:`ConfigError` naming the field, the value and what is allowed.

Also the rental body, built only from checked values, and the guard that keeps the account key out of every request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from skyward_ray.errors import ConfigError
from skyward_ray.vast.credentials import ApiKey

MAX_LABEL_CHARS = 1024  # a relabel (PUT /instances/{id}/) with a longer label is refused with a 400
MAX_CREATE_LABEL_CHARS = 256  # a rental (PUT /asks/{id}/) with a longer label is refused with a 400
MAX_ONSTART_CHARS = 4048  # Vast's documented onstart limit
RUNTYPE_TOKENS = frozenset(
    {
        "ssh",
        "ssh_proxy",
        "ssh_direc",
        "ssh_direct",
        "jupyter",
        "jupyter_proxy",
        "jupyter_direc",
        "jupyter_direct",
        "args",
    }
)


def check_client_settings(
    *, timeout_s: float | None, backoff_cap_s: float, retry_deadline_s: float, backoff_base_s: float,
    max_body_bytes: int,
) -> None:  # fmt: skip
    for name, value in (("timeout_s", timeout_s), ("backoff_cap_s", backoff_cap_s)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name} = {value!r} is not allowed: use seconds > 0")
    for name, value in (("retry_deadline_s", retry_deadline_s), ("backoff_base_s", backoff_base_s)):
        if not value >= 0:
            raise ConfigError(f"{name} = {value!r} is not allowed: use seconds >= 0")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
        raise ConfigError(f"max_body_bytes = {max_body_bytes!r} is not allowed: use a byte count > 0")


def positive_id(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} = {value!r} is not allowed: use a positive integer id")
    return value


def check_label(label: Any, limit: int = MAX_LABEL_CHARS) -> None:
    if not isinstance(label, str) or not label.strip() or len(label) > limit:
        shown = label if not isinstance(label, str) else f"{label[:40]}... ({len(label)} chars)"
        raise ConfigError(f"label {shown!r} is not allowed: use non-blank text of at most {limit} characters")


def check_price(price: Any) -> None:
    if isinstance(price, bool) or not isinstance(price, int | float) or not price > 0:
        raise ConfigError(f"price = {price!r} is not allowed: use $/hour > 0 (Vast accepts 0.001 and up)")


def check_env(env: Mapping[str, Any] | None) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise ConfigError(f"env of type {type(env).__name__} is not allowed: use a dict of str to str")
    result: dict[str, str] = {}
    for key, value in env.items():
        plain = isinstance(value, str | int | float) and not isinstance(value, bool)
        if not isinstance(key, str) or not key or not plain:
            raise ConfigError(f"env entry {key!r} is not allowed: use non-empty str keys and str values")
        result[key] = str(value)
    return result


def check_public_key(public_key: Any) -> str:
    """Refuse anything but one line of OpenSSH public key, so a private key is never sent by mistake."""
    text = public_key.strip() if isinstance(public_key, str) else ""
    if (
        not text
        or "\n" in text
        or "PRIVATE KEY" in text
        or not text.split()[0].startswith(("ssh-", "ecdsa-", "sk-"))
        or len(text.split()) < 2
    ):
        # The value is not shown: it may be a private key.
        raise ConfigError("public_key is not allowed: use one line of OpenSSH public key ('ssh-ed25519 AAAA...')")
    return text


def strings(value: Any) -> Iterable[str]:
    """Every string inside a JSON-like value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from strings(item)


def refuse_secret(key: ApiKey, value: Any, where: str) -> None:
    """The account key must never reach an instance, a label or a log."""
    secret = key.reveal()
    if secret and any(secret in text for text in strings(value)):
        raise ConfigError(f"{where} contains the account API key; it must never reach an instance or a label")


def check_rental(
    image: Any, disk_gb: Any, label: Any, env: Any, onstart: Any, price: Any, runtype: Any, args: Any
) -> dict[str, str]:
    """Every argument of a rental but the offer id, in the order of the signature; returns the env as sent."""
    if not isinstance(image, str) or not image.strip():
        raise ConfigError(f"image {image!r} is not allowed: use a Docker image reference")
    if isinstance(disk_gb, bool) or not isinstance(disk_gb, int | float) or disk_gb <= 0:
        raise ConfigError(f"disk_gb = {disk_gb!r} is not allowed: use GB > 0")
    check_label(label, MAX_CREATE_LABEL_CHARS)
    env_body = check_env(env)
    if onstart is not None and (not isinstance(onstart, str) or len(onstart) > MAX_ONSTART_CHARS):
        raise ConfigError(f"onstart is not allowed: use text of at most {MAX_ONSTART_CHARS} characters")
    if price is not None:
        check_price(price)
    if runtype is not None:
        tokens = runtype.split() if isinstance(runtype, str) else []
        if not tokens or not set(tokens) <= RUNTYPE_TOKENS:
            raise ConfigError(
                f"runtype {runtype!r} is not allowed: use space-separated tokens from {sorted(RUNTYPE_TOKENS)}"
            )
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
        raise ConfigError(f"args {args!r} is not allowed: use a list of strings")
    return env_body


def rental_body(
    *,
    image: str,
    disk_gb: float,
    label: str,
    env: Mapping[str, str] | None,
    onstart: str | None,
    price: float | None,
    runtype: str | None,
    args: list[str] | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """The body of ``PUT /api/v0/asks/{id}/`` as the official client sends it, from checked arguments."""
    env_body = check_rental(image, disk_gb, label, env, onstart, price, runtype, args)
    body: dict[str, Any] = {
        "client_id": "me",
        "image": image,
        "env": env_body,
        "price": price,
        "disk": disk_gb,
        "label": label,
        "extra": None,
        "onstart": onstart,
        "image_login": None,
        "python_utf8": False,
        "lang_utf8": False,
        "use_jupyter_lab": False,
        "jupyter_dir": None,
        "force": False,
        "cancel_unavail": False,
        "template_hash_id": None,
        "user": None,
    }
    if runtype:
        body["runtype"] = runtype
    if args is not None:
        body["args"] = args
    if extra:
        body.update(extra)
    return body
