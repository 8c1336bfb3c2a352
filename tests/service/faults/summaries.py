"""The short fault campaigns' summaries of a run (faults by kind, every check's verdict), which
`tests/conftest.py` prints at the end: a worker's own output does not reach the log under
pytest-xdist."""

from __future__ import annotations

CAMPAIGN_SUMMARIES: list[str] = []
