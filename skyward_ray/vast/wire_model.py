"""The base of every Vast wire model: unknown fields kept, text stripped, a blank nullable value read as null.

Numbers sent as strings are coerced by pydantic's lax mode; non-finite numbers fail the parse.
"""

from __future__ import annotations

import types
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator


def _annotation_kinds(annotation: Any) -> tuple[bool, bool]:
    """(is text, accepts null) for a field annotation such as ``str | None`` or ``int``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
    else:
        members = (annotation,)
    return str in members, type(None) in members


class WireModel(BaseModel):
    """Base for wire objects: tolerant of unknown fields, so a new Vast field never breaks a parse.

    It also owns the one generic normalisation of the wire's loose text (see the module docstring), so subclasses
    only add what is specific to them.
    """

    # NaN/inf would poison every price comparison downstream, so a non-finite number fails the parse.
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False, allow_inf_nan=False)

    # wire key (field name and alias) -> (is text, accepts null); filled per subclass by __pydantic_init_subclass__.
    _wire_kinds: ClassVar[dict[str, tuple[bool, bool]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kinds: dict[str, tuple[bool, bool]] = {}
        for name, field in cls.model_fields.items():
            kind = _annotation_kinds(field.annotation)
            kinds[name] = kind
            if field.alias:
                kinds[field.alias] = kind
        cls._wire_kinds = kinds

    @model_validator(mode="before")
    @classmethod
    def _normalise_text(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        changed: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(value, str) or key not in cls._wire_kinds:
                continue
            is_text, nullable = cls._wire_kinds[key]
            stripped = value.strip()
            if nullable and not stripped:
                changed[key] = None
            elif is_text and stripped != value:
                changed[key] = stripped
        return {**data, **changed} if changed else data

    def __repr_args__(self) -> Any:
        # Only declared fields: unknown wire fields (onstart scripts, tokens) stay out of logs and reprs.
        extras = self.__pydantic_extra__ or {}
        return [(key, value) for key, value in super().__repr_args__() if key not in extras]
