"""Order of the deployment tests within a session."""

from __future__ import annotations

import pytest

LAST = "test_smoke.py"
"""The real compose stack runs after everything else: in CI its images build meanwhile."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name == LAST)
