"""The doctor's report: rows of ``check | expected | observed | ok``, a verdict and an exit code, free of secrets.

Every text that enters the report passes :meth:`Report.scrub`, which removes every secret the run has met (the
account key, each instance's ``instance_api_key``) wherever it came from (an error message, a wire body), so neither
the printed table nor the JSON can carry one.
"""

from __future__ import annotations

import enum
import json
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

from pydantic import BaseModel, Field

from skyward_ray.vast.credentials import redact

EXIT_OK = 0  # every check passed (warnings allowed)
EXIT_FAILED = 1  # something ray up needs is wrong
EXIT_INTERRUPTED = 130


class Status(enum.StrEnum):
    """How a row came out. ``warn`` and ``info`` do not fail the verdict; ``skip`` says a check could not run."""

    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    INFO = "info"
    SKIP = "skip"


class Row(BaseModel):
    """One check: what ray up assumes (expected), what Vast said (observed), and whether they agree."""

    check: str
    expected: str
    observed: str
    ok: Status
    seconds: float | None = Field(None, description="how long the check took, when that is part of what it measures")
    details: dict[str, Any] = Field(default_factory=dict, description="machine-readable figures (JSON report only)")


class Report:
    """Rows in the order they ran, printed as they come (unless quiet), plus what was rented and destroyed."""

    def __init__(self, *, out: TextIO | None = None, secrets: Iterable[str] = ()) -> None:
        self.rows: list[Row] = []
        self.meta: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.rented: list[int] = []
        self.destroyed: list[int] = []
        self._secrets: set[str] = {s for s in secrets if s}
        self._out = out
        self._lock = threading.Lock()
        self.interrupted = False

    # --- secrets -------------------------------------------------------------------------------------------------

    def add_secret(self, secret: str | None) -> None:
        if secret:
            with self._lock:
                self._secrets.add(secret)

    def scrub(self, value: Any) -> Any:
        """``value`` (text, or JSON-like containers of it) with every known secret replaced by ``***``."""
        if isinstance(value, str):
            with self._lock:
                secrets = sorted(self._secrets, key=len, reverse=True)
            return redact(value, *secrets)
        if isinstance(value, dict):
            return {self.scrub(k): self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    # --- rows ----------------------------------------------------------------------------------------------------

    def add(self, check: str, expected: str, observed: str, ok: Status, *, seconds: float | None = None,
            **details: Any) -> Row:
        row = Row(check=check, expected=self.scrub(expected), observed=self.scrub(observed), ok=ok,
                  seconds=None if seconds is None else round(seconds, 2), details=self.scrub(details))
        with self._lock:
            self.rows.append(row)
        if self._out is not None:
            print(self.format_row(row), file=self._out, flush=True)
        return row

    def note(self, text: str) -> None:
        """A progress line for people (not a row): printed, never in the JSON."""
        if self._out is not None:
            print(f"  .. {self.scrub(text)}", file=self._out, flush=True)

    @staticmethod
    def format_row(row: Row) -> str:
        took = f" ({row.seconds:g} s)" if row.seconds is not None else ""
        return f"[{row.ok.value:>4}] {row.check:<28} | expected: {row.expected} | observed: {row.observed}{took}"

    # --- verdict -------------------------------------------------------------------------------------------------

    @property
    def failed(self) -> list[Row]:
        return [row for row in self.rows if row.ok is Status.FAIL]

    @property
    def warnings(self) -> list[Row]:
        return [row for row in self.rows if row.ok is Status.WARN]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed else EXIT_OK

    def verdict(self) -> str:
        warned = f" ({len(self.warnings)} warning{'s' if len(self.warnings) != 1 else ''})" if self.warnings else ""
        left = self.meta.get("left_rented") or []
        tail = f"; STILL RENTED: {left} (destroy them in the Vast console)" if left else ""
        if self.interrupted:
            return f"verdict: interrupted; destroyed {sorted(self.destroyed) or 'nothing'}{tail}"
        if self.failed:
            names = ", ".join(dict.fromkeys(row.check for row in self.failed))
            return f"verdict: NOT ready for ray up: {len(self.failed)} check(s) failed: {names}{warned}{tail}"
        return f"verdict: ready for ray up{warned}{tail}"

    def to_json(self) -> dict[str, Any]:
        data = {
            **self.meta,
            "rows": [row.model_dump(mode="json") for row in self.rows],
            "rented": sorted(self.rented),
            "destroyed": sorted(self.destroyed),
            "verdict": self.verdict(),
            "exit_code": self.exit_code,
        }
        return self.scrub(data)

    def write_json(self, stream: TextIO | None = None) -> None:
        print(json.dumps(self.to_json(), indent=2, sort_keys=False), file=stream or sys.stdout)
