"""Where the Vast API key and base URL come from, in the official client's order (explicit key, ``$VAST_API_KEY``,
the vastai config file, the legacy ``~/.vast_api_key``); ``VAST_URL`` overrides the server.

The key never appears in an error, a repr or a log line: :class:`ApiKey` redacts itself and :func:`redact` scrubs it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from skyward_ray.errors import ConfigError
from skyward_ray.vast.errors import CredentialsError

DEFAULT_BASE_URL = "https://console.vast.ai"
API_KEY_ENV = "VAST_API_KEY"
BASE_URL_ENV = "VAST_URL"
REDACTED = "***"

# What may go into an ``Authorization: Bearer`` header: visible ASCII, no spaces.
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")
# A legacy ``?api_key=`` query parameter in any URL we might echo.
_API_KEY_PARAM = re.compile(r"(api_key=)[^&\s\"']+", re.IGNORECASE)


class ApiKey:
    """The account key, redacted in ``str``/``repr`` so printing a client or an argument never leaks it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself: only for the ``Authorization`` header."""
        return self._value

    def __repr__(self) -> str:
        return f"ApiKey({REDACTED!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def config_key_path() -> Path:
    """``$XDG_CONFIG_HOME/vastai/vast_api_key``, with XDG's default of ``~/.config`` when unset or relative."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "vastai" / "vast_api_key"


def legacy_key_path() -> Path:
    return Path.home() / ".vast_api_key"


def _checked(key: str, source: str) -> str:
    if not _HEADER_SAFE.fullmatch(key):
        raise CredentialsError(
            f"the Vast API key from {source} contains spaces or non-ASCII characters; a key is one word of "
            "visible ASCII characters"
        )
    return key


def _read_key_file(path: Path) -> str | None:
    """The stripped key in ``path``; None when the file is missing or blank (the CLI skips those too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise CredentialsError(f"cannot read the Vast API key file {path}: {reason}") from None
    return text.strip() or None


def resolve_api_key(explicit: str | None = None) -> str:
    """The API key, from the first source that has one (see the module docstring for the order)."""
    if explicit is not None:
        key = explicit.strip()
        if not key:
            raise CredentialsError("api_key was given but is empty; pass a Vast API key or leave it unset")
        return _checked(key, "the api_key argument")
    env_key = os.environ.get(API_KEY_ENV, "").strip()
    if env_key:
        return _checked(env_key, f"${API_KEY_ENV}")
    candidates = (config_key_path(), legacy_key_path())
    for path in candidates:
        key = _read_key_file(path)
        if key:
            return _checked(key, str(path))
    looked = ", ".join(str(p) for p in candidates)
    raise CredentialsError(
        f"no Vast API key found: looked at the api_key argument, ${API_KEY_ENV}, {looked}. "
        f"Set {API_KEY_ENV} or save the key to {candidates[0]}"
    )


def resolve_base_url(explicit: str | None = None) -> str:
    """The server: ``explicit``, ``$VAST_URL``, else ``https://console.vast.ai``; no trailing ``/``."""
    return resolve_base_url_and_source(explicit)[0]


def resolve_base_url_and_source(explicit: str | None = None, source: str | None = None) -> tuple[str, str]:
    """The server (as :func:`resolve_base_url`) and what chose it, for errors that must say where to fix it:
    ``source`` (the caller's name for ``explicit``, e.g. ``"provider.api_url"``), ``$VAST_URL``, or the default."""
    source, url = (source or "the base_url argument"), explicit
    if url is None or not url.strip():
        source, url = f"${BASE_URL_ENV}", os.environ.get(BASE_URL_ENV, "")
    if not url.strip():
        return DEFAULT_BASE_URL, "the default"
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"{source} {redact(url)!r} is not allowed: use an http:// or https:// URL without query, "
            f"such as {DEFAULT_BASE_URL} or http://127.0.0.1:8080"
        )
    return url, source


def redact(text: str, *secrets: str | ApiKey | None) -> str:
    """``text`` with every secret (and any ``api_key=`` query value) replaced by ``***``."""
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, ApiKey) else secret
        if value:
            text = text.replace(value, REDACTED)
    return _API_KEY_PARAM.sub(rf"\g<1>{REDACTED}", text)
