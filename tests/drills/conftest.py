"""Fixtures of the drills (``make drills``; files ``drill_*.py``, outside ``make test``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture
def drill(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``drill(scenario, expectation)`` names this test's row in the drill table (tests/drills/table.py)."""

    def record(scenario: str, expectation: str) -> None:
        request.node.user_properties.extend([("drill", scenario), ("expect", expectation)])

    return record
