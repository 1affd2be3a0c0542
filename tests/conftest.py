"""Known defects: a test that shows a defect not fixed yet is listed here (a piece of its node id -> the defect), so it
stays visible as an expected failure naming the defect while CI stays meaningful; a fix turns it into a pass
(non-strict xfail) and its entry is removed. Empty: every defect the reliability tests found is fixed."""

from __future__ import annotations

import pytest

KNOWN_DEFECTS: dict[str, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker_text, defect in KNOWN_DEFECTS.items():
            if marker_text in item.nodeid:
                item.add_marker(pytest.mark.xfail(reason=f"known defect: {defect}", strict=False))
