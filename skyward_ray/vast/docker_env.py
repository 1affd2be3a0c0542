"""The ``env`` of an instance in every form the wire uses ([key, value] pairs, ``"K=V"`` strings, a dict, a
Docker-flag string) read as the ``{key: value}`` dict Vast stores.
"""

from __future__ import annotations

import shlex
from typing import Any

DOCKER_FLAGS_WITH_VALUE = frozenset({"-e", "-p", "-h", "-v", "-n"})


def parse_docker_env(text: str) -> dict[str, str]:
    """The Docker-flag string form of ``env`` (``"-e K=V -p 8000:8000 -n ovl"``) as the dict form Vast stores."""
    result: dict[str, str] = {}
    tokens = iter(shlex.split(text))
    for flag in tokens:
        if flag not in DOCKER_FLAGS_WITH_VALUE:
            continue
        value = next(tokens, None)
        if value is None:
            break
        if flag == "-e":
            key, sep, val = value.partition("=")
            if sep:
                result[key] = val
        elif flag == "-h":
            result[flag] = value
        else:
            result[f"{flag} {value}"] = "1"
    return result


def env_string(text: str) -> dict[str, str]:
    """One string entry of an env list: ``"-e K=V"``/``"-p 8000:8000"`` as Docker flags, else ``"K=V"`` or ``"K"``."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("-"):
        try:
            parsed = parse_docker_env(text)
        except ValueError:  # unbalanced quotes
            parsed = {}
        return parsed or {text: "1"}
    key, _, value = text.partition("=")
    return {key: value}


def env_to_dict(value: Any) -> dict[str, str]:
    """Any wire form of an env (pairs, dict, Docker-flag string) as ``{key: value}`` text."""
    if isinstance(value, str):
        return parse_docker_env(value)
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        result: dict[str, str] = {}
        for pair in value:
            if isinstance(pair, str):  # the documented "array of string" form: "K=V" or a Docker flag
                result.update(env_string(pair))
                continue
            if not isinstance(pair, list | tuple) or not pair:
                raise ValueError(f"env entry of type {type(pair).__name__} is not a [key, value] pair or a string")
            key = str(pair[0])
            result[key] = "" if len(pair) < 2 or pair[1] is None else str(pair[1])
        return result
    raise ValueError(f"env of type {type(value).__name__} is not a dict, a list of pairs or a string")
