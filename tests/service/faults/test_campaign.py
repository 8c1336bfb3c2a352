"""The short fault campaign (`short_campaign.py`) on an API process and a worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.faults.short_campaign import check_a_short_campaign

# Every test here starts real `psp` processes; `make test-fast` leaves them out.
pytestmark = pytest.mark.real_process


def test_a_short_fault_campaign_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    check_a_short_campaign("split", tmp_path)
