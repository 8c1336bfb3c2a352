"""Prints how many generated requests the fuzz tests sent, and how many got a 5xx."""

from __future__ import annotations

import pytest

from tests.service.fuzz.tally import FIRST_ERRORS, STATUSES, TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY["requests"]:
        return
    terminalreporter.write_line(
        f"fuzz: {TALLY['requests']} generated requests, {TALLY['server_errors']} answered 5xx"
    )
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(STATUSES.items()))
    terminalreporter.write_line(f"fuzz: answers by status: {statuses}")
    for line in FIRST_ERRORS:
        terminalreporter.write_line(f"fuzz: {line}")
