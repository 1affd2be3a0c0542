"""``sky.VastAI(...)``: the pool's Vast parameters, on top of the placement options.

The placement fields are inherited from :class:`~skyward_ray.placement.options.PlacementOptions`, so their defaults
and limits live in one place; this class adds only the API key (a ``SecretStr``, never shown) and the timeouts.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator

from skyward_ray.placement.options import PlacementOptions, config_error_from


class VastAI(PlacementOptions):
    """Rent the pool's nodes on Vast.ai. Every placement parameter, with its default."""

    api_key: SecretStr | None = Field(None, repr=False, description="API key; None uses VAST_API_KEY or the CLI's")
    instance_timeout: int = Field(300, ge=0, le=7 * 24 * 3600, description="seconds a worker outlives its head")
    overlay_timeout: int = Field(120, ge=1, le=3600, description="seconds allowed for each overlay operation")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error_from(exc, section="VastAI", model=type(self)) from None

    @field_validator("api_key", mode="before")
    @classmethod
    def _key(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("allowed: a non-empty key, or None to use VAST_API_KEY or the vastai CLI's key file")
            return SecretStr(value.strip())
        return value

    def __str__(self) -> str:
        return repr(self)
