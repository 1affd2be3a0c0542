"""Suite-wide hooks: each test gets the marker of its directory (tests/<layer>/ -> ``-m <layer>``), and a test that
shows a defect not fixed yet is listed in ``KNOWN_DEFECTS`` (a piece of its node id -> the defect), so it stays visible
as an expected failure naming the defect while CI stays meaningful; a fix turns it into a pass (non-strict xfail) and
its entry is removed. Empty: every defect the reliability tests found is fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

KNOWN_DEFECTS: dict[str, str] = {}

# tests/<directory>/... -> the marker every test below it carries (declared in pyproject.toml).
LAYER_MARKERS = {"unit": "unit", "emulator": "emulator", "e2e": "e2e", "chaos": "chaos", "packaging": "packaging"}
TESTS_ROOT = Path(__file__).resolve().parent


def layer_of(path: Path) -> str | None:
    """The marker for a test file: from its first directory below tests/ (None for a file outside the layers)."""
    try:
        parts = path.resolve().relative_to(TESTS_ROOT).parts
    except ValueError:
        return None
    return LAYER_MARKERS.get(parts[0]) if len(parts) > 1 else None


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the directory's marker must be on the item by then
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = layer_of(item.path)
        if layer is not None:
            item.add_marker(layer)
        for marker_text, defect in KNOWN_DEFECTS.items():
            if marker_text in item.nodeid:
                item.add_marker(pytest.mark.xfail(reason=f"known defect: {defect}", strict=False))
