"""Known defects found by the reliability tests (issue 8, still open): the tests stay, marked as expected failures
with the defect they show, so CI stays meaningful and a fix turns them into passes (non-strict xfail)."""

from __future__ import annotations

import pytest

KNOWN_DEFECTS: dict[str, str] = {
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker_text, defect in KNOWN_DEFECTS.items():
            if marker_text in item.nodeid:
                item.add_marker(pytest.mark.xfail(reason=f"known defect: {defect}", strict=False))
