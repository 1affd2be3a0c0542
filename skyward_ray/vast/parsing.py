"""Decoded bodies to models, one row at a time: a row that does not parse is kept in part or dropped, never the answer.

An unexpected row shape is logged once per process by its field names and value types, never its values.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from skyward_ray.vast.endpoints import SEARCH_OFFERS, Endpoint
from skyward_ray.vast.error_map import Redactor
from skyward_ray.vast.errors import ProtocolError
from skyward_ray.vast.models import Instance, Offer, tolerant_instance

log = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

_NOTED_SHAPES: set[tuple[str, tuple[str, ...]]] = set()
_NOTED_LOCK = threading.Lock()


def failed_shapes(row: Any, exc: ValidationError) -> list[str]:
    """``"name (type)"`` of each top-level field that failed: no values, they may be secrets."""
    if not isinstance(row, dict):
        return [f"row ({type(row).__name__})"]
    names = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
    return [f"{name} ({type(row[name]).__name__})" if name in row else name for name in sorted(names)] or ["row"]


def note_shape(endpoint: Endpoint, problems: tuple[str, ...], what: str) -> None:
    """Log an unexpected row shape once per process (a refresh every few seconds would repeat it forever)."""
    with _NOTED_LOCK:
        first = (str(endpoint), problems) not in _NOTED_SHAPES
        _NOTED_SHAPES.add((str(endpoint), problems))
    log.log(logging.WARNING if first else logging.DEBUG, "%s: %s: %s", endpoint, what, ", ".join(problems))


class BodyParser:
    """Parses bodies of one client, with its :class:`Redactor` for the errors they raise."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def model(self, model: type[ModelT], data: Any, endpoint: Endpoint) -> ModelT:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}"
                for err in exc.errors(include_url=False, include_input=False)[:3]
            )
            problem = f"unexpected {model.__name__}: {problems}"
            raise self._redactor.protocol(endpoint, endpoint.template, problem) from None

    def field(self, body: Any, key: str, endpoint: Endpoint, kinds: type | tuple[type, ...]) -> Any:
        if not isinstance(body, dict) or key not in body or not isinstance(body[key], kinds):
            raise self._redactor.protocol(endpoint, endpoint.template, f"expected a JSON object with {key!r}")
        return body[key]

    def instances(self, rows: list[Any], endpoint: Endpoint) -> list[Instance]:
        """Each row parsed on its own: a row that does not parse whole is kept in part (see
        :func:`~skyward_ray.vast.models.tolerant_instance`), one without an id is dropped; both are logged once."""
        instances: list[Instance] = []
        for row in rows:
            parsed, problems = tolerant_instance(row)
            if parsed is not None:
                instances.append(parsed)
            if problems:
                what = f"instance {parsed.id} kept without" if parsed is not None else "dropped an instance row with"
                note_shape(endpoint, problems, f"{what} fields that did not parse")
        return instances

    def offers(self, rows: list[Any]) -> list[Offer]:
        """An offer that does not parse is dropped with a warning (as gpuhunt does); if every row is broken, the
        answer is not what we think it is: :class:`ProtocolError`."""
        offers: list[Offer] = []
        first_problem: ProtocolError | None = None
        shapes: set[str] = set()
        for row in rows:
            try:
                offers.append(Offer.model_validate(row))
            except ValidationError as exc:
                shapes.update(failed_shapes(row, exc))
                if first_problem is None:
                    try:
                        self.model(Offer, row, SEARCH_OFFERS)
                    except ProtocolError as problem:
                        first_problem = problem
        if first_problem is not None:
            if not offers:
                raise first_problem  # not one row we understand: the answer is not what we think it is
            note_shape(
                SEARCH_OFFERS,
                tuple(sorted(shapes)),
                f"dropped {len(rows) - len(offers)} of {len(rows)} offers that did not parse",
            )
        return offers
