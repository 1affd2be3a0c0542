"""What a user may ask of placement: the allocation kind and :class:`PlacementOptions`, the one list of placement
fields that the cluster YAML's ``provider:`` section and ``sky.VastAI(...)`` extend, so a default or a limit changes
in one place; bad input becomes one :class:`ConfigError` naming field, value and what is allowed.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable, Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from skyward_ray.errors import ConfigError
from skyward_ray.placement.regions import allowed_geolocations, normalise_geolocation, resolve_region
from skyward_ray.vast.credentials import redact  # pure text masking: an `api_key=` query never reaches a message


class Allocation(enum.StrEnum):
    """How a node is paid for. ``spot`` bids on interruptible capacity; ``spot-if-available`` bids where the offer
    takes bids and pays on-demand where it does not."""

    ON_DEMAND = "on-demand"
    SPOT = "spot"
    SPOT_IF_AVAILABLE = "spot-if-available"

    @classmethod
    def parse(cls, value: Any, *, field: str = "allocation") -> Allocation:
        """Accept the enum, its value, or the underscore spelling ("on_demand"), in any case."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            text = value.strip().lower().replace("_", "-")
            for member in cls:
                if member.value == text:
                    return member
        allowed = ", ".join(member.value for member in cls)
        raise ConfigError(f"{field}: {value!r} is not allowed; allowed: {allowed} (underscores accepted)")

    @classmethod
    def validate_field(cls, value: Any) -> Allocation:
        """:meth:`parse` inside a pydantic validator: a ValueError without the field's name, which pydantic adds."""
        try:
            return cls.parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("allocation: ")) from None

    @property
    def bids(self) -> bool:
        """Whether this allocation searches interruptible (``type: bid``) offers."""
        return self is not Allocation.ON_DEMAND


_SECRET_MARKERS = ("key", "token", "secret", "password")


def config_error_from(error: ValidationError, *, section: str | None = None,
                      model: type[BaseModel] | None = None) -> ConfigError:
    """One ConfigError listing every problem as ``field: value is not allowed (why)``.

    Values of fields that look secret (``api_key``...) are masked, because subclasses add such fields and this
    message is printed. With ``model``, an unknown top-level key also gets the closest field name and the list of
    fields, since a misspelt key is the usual cause.
    """
    problems = []
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"]) or "(root)"
        where = f"{section}.{path}" if section else path
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown field{_unknown_field_hint(model, item['loc'])}")
            continue
        value = item.get("input")
        secret = any(marker in path.lower() for marker in _SECRET_MARKERS)
        # A mapping (an env) shows its keys only: its values are where users keep their tokens.
        shown = "***" if secret else redact(repr(dict.fromkeys(value, "***") if isinstance(value, Mapping) else value))
        if isinstance(value, Mapping) and item["type"] == "missing":
            problems.append(f"{where}: missing; {message}")
        else:
            problems.append(f"{where}: {shown} is not allowed ({_without_echo(message, path, value, shown)})")
    return ConfigError("; ".join(problems))


def _without_echo(message: str, path: str, value: Any, shown: str) -> str:
    """A validator's message without what the caller already says ("field: 'x' is not allowed"), so the line never
    repeats itself: "allocation: 'spotty' is not allowed (allowed: ...)", not "(... 'spotty' is not allowed; ...)"."""
    text = message
    for field in (path, path.rsplit(".", 1)[-1]):
        text = text.removeprefix(f"{field}: ")
    for echo in {shown, repr(value), str(value)}:
        if text.startswith(f"{echo} is not allowed"):
            text = text[len(f"{echo} is not allowed"):].lstrip(" ;,:")
            break
        # "'ATLANTIS' is not a known region" -> "not a known region"
        if isinstance(value, str) and text.lower().startswith(f"{echo.lower()} is "):
            text = text[len(echo) + len(" is "):]
            break
    return text or message


def _unknown_field_hint(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> str:
    if model is None or len(loc) != 1:
        return ""
    names = [field.alias or name for name, field in model.model_fields.items()]
    names = [name for name in names if not name.startswith("_")]  # set by Ray, not by users
    close = difflib.get_close_matches(str(loc[0]), names, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{guess}; allowed: {', '.join(sorted(names))}"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN passes ge/le checks; reject it explicitly
        raise ValueError("NaN is not a number")
    return value


class PlacementOptions(BaseModel):
    """Filters and prices that decide where nodes go (defaults as Skyward's ``VastAI``). Strict: unknown keys and
    wrongly typed values are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)

    min_reliability: float = Field(0.95, ge=0.0, le=1.0, description="minimum host reliability, 0.0 to 1.0")
    geolocation: str | None = Field(None, description=f"None (anywhere) or {allowed_geolocations()}")
    bid_multiplier: float = Field(1.2, ge=1.0, le=100.0, description="bid = min_bid * bid_multiplier, >= 1.0")
    docker_image: str | None = Field(None, description="image reference; None picks a CUDA image")
    disk_gb: int = Field(100, ge=1, le=100_000, description="disk per node in GB")
    use_overlay: bool = Field(True, description="nodes on one physical cluster joined by a Vast overlay; false only "
                              "for single-node clusters (workers behind Vast's NAT cannot reach the head)")
    verified_only: bool = Field(True, description="only hosts Vast has verified")
    datacenter_only: bool = Field(False, description="only datacenter (secure cloud) hosts")
    min_cuda: float | None = Field(12.0, ge=7.0, le=30.0, description="minimum host CUDA (cuda_max_good)")
    min_inet_down: float | None = Field(None, ge=0.0, description="minimum download bandwidth in Mb/s")
    max_bid: float | None = Field(None, gt=0.0, description="highest bid per node in $/h")
    max_hourly_cost: float | None = Field(None, gt=0.0, description="cap on the cluster's total $/h")
    excluded_machines: frozenset[int] = Field(frozenset(), description="Vast machine ids never to rent")

    @field_validator("min_reliability", "bid_multiplier", "min_cuda", "min_inet_down", "max_bid", "max_hourly_cost",
                     mode="before")
    @classmethod
    def _no_nan(cls, value: Any) -> Any:
        return _finite_or_none(value)

    @field_validator("geolocation", mode="before")
    @classmethod
    def _geolocation(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, list | tuple):
            if not value or not all(isinstance(item, str) for item in value):
                raise ValueError(f"allowed: {allowed_geolocations()}")
            value = ",".join(value)
        if not isinstance(value, str):
            raise ValueError(f"allowed: {allowed_geolocations()}")
        try:
            return normalise_geolocation(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("geolocation: ")) from None

    @field_validator("docker_image", mode="before")
    @classmethod
    def _image(cls, value: Any) -> Any:
        if isinstance(value, str) and (not value.strip() or any(ch.isspace() for ch in value.strip())):
            raise ValueError("allowed: an image reference without spaces, e.g. nvcr.io/nvidia/pytorch:24.01-py3")
        return value.strip() if isinstance(value, str) else value

    @field_validator("excluded_machines", mode="before")
    @classmethod
    def _machine_ids(cls, value: Any) -> Any:
        if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
            items = list(value)
            if all(isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in items):
                return frozenset(items)
        raise ValueError("allowed: a list of Vast machine ids (non-negative integers)")

    @property
    def countries(self) -> frozenset[str] | None:
        """The country codes ``geolocation`` stands for; None means anywhere."""
        return resolve_region(self.geolocation) if self.geolocation else None

    @classmethod
    def from_config(
        cls, data: Mapping[str, Any] | None = None, *, section: str | None = None, **overrides: Any
    ) -> Self:
        """Validate a mapping (a YAML section, keyword arguments) into options, raising ConfigError on bad input."""
        values = {**(data or {}), **overrides}
        try:
            return cls(**values)
        except ValidationError as exc:
            raise config_error_from(exc, section=section, model=cls) from None
