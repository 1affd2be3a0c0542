"""``sky.Image(pip=[...], apt=[...], env={...})``: what the nodes need besides Ray.

An image becomes setup commands (apt, then pip; idempotent) for a cluster a pool launches, and a Ray ``runtime_env``
with ``env_vars`` for every call. A pool that attaches changes nothing: it reports which packages each node lacks.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from skyward_ray.errors import ConfigError
from skyward_ray.placement.options import config_error_from

_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]*(:[a-z0-9]+)?(=[A-Za-z0-9.+:~\-]+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URLISH = ("git+", "http://", "https://", "file:")


class Image(BaseModel):
    """Packages and environment for the pool's nodes. Lists are kept as tuples; the image is immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pip: tuple[str, ...] = Field((), description="pip requirements (PEP 508), installed on every node at launch")
    apt: tuple[str, ...] = Field((), description="Debian packages, installed on every node at launch")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables of every call")
    pip_extra_index_url: str | None = Field(None, description="an extra pip index for the pip requirements")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error_from(exc, section="image", model=type(self)) from None

    @field_validator("pip", "apt", mode="before")
    @classmethod
    def _listish(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("allowed: a list of names, e.g. ['torch', 'numpy>=2']")
        return value

    @field_validator("pip")
    @classmethod
    def _requirements(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if item.startswith(_URLISH):
                continue
            try:
                Requirement(item)
            except InvalidRequirement:
                raise ValueError(f"{item!r} is not a pip requirement (PEP 508, e.g. 'torch>=2.3' or a URL)") from None
        return value

    @field_validator("apt")
    @classmethod
    def _apt_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _APT_NAME.match(item):
                raise ValueError(f"{item!r} is not a Debian package name (lower case, e.g. 'ffmpeg', 'curl=7.88.1-10')")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name (letters, digits, _)")
        return value

    def setup_commands(self, python: str = "python") -> list[str]:
        """Shell commands that install the image on a node (apt first: pip packages may build against it).

        pip skips requirements already satisfied without touching the network, so re-running them is a no-op.
        """
        commands = []
        if self.apt:
            packages = " ".join(shlex.quote(p) for p in self.apt)
            commands.append(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                f"--no-install-recommends {packages}"
            )
        if self.pip:
            extra = f" --extra-index-url {shlex.quote(self.pip_extra_index_url)}" if self.pip_extra_index_url else ""
            requirements = " ".join(shlex.quote(r) for r in self.pip)
            commands.append(f"{shlex.quote(python)} -m pip install -q{extra} {requirements}")
        return commands

    def runtime_env(self) -> dict[str, Any] | None:
        """The Ray runtime_env for the pool's calls, or None when the image sets no environment.

        pip is deliberately not in it: Ray would build a fresh virtualenv per node and download into it, which needs
        the internet and minutes per node. The setup commands install the packages once, when the cluster launches.
        """
        return {"env_vars": dict(self.env)} if self.env else None


def as_image(value: Image | Mapping[str, Any] | None) -> Image:
    """Coerce ``image=`` (an Image, a mapping of its fields, or None for nothing extra)."""
    if value is None:
        return Image()
    if isinstance(value, Image):
        return value
    if isinstance(value, Mapping):
        return Image(**value)
    raise ConfigError(f"image: {value!r} is not allowed; allowed: sky.Image(pip=[...], apt=[...], env={{...}}) or None")


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """The pip requirements this Python environment does not satisfy (runs on a node, stdlib + packaging only)."""
    missing = []
    for text in requirements:
        if text.startswith(_URLISH):
            missing.append(text)  # cannot tell what a URL installs; the setup commands handle it at launch
            continue
        requirement = Requirement(text)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (found {version})")
    return missing


def missing_apt_packages(packages: Sequence[str]) -> list[str]:
    """The Debian packages not installed here; empty when there is no dpkg to ask (not a Debian-like node)."""
    if not packages or shutil.which("dpkg-query") is None:
        return []
    missing = []
    for package in packages:
        name = package.split("=", 1)[0]
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, timeout=30, check=False
        )
        if "install ok installed" not in result.stdout:
            missing.append(package)
    return missing
