"""The count of generated requests and of their 5xx answers, over every fuzz test of a run;
`conftest.py` prints it at the end."""

from __future__ import annotations

from collections import Counter

from httpx import Response

TALLY: Counter[str] = Counter()
"""`requests`: generated requests sent; `server_errors`: those answered 5xx."""

FIRST_ERRORS: list[str] = []
"""The first few 5xx answers, for the summary."""


STATUSES: Counter[int] = Counter()
"""How many answers had each status."""


def record(method: str, path: str, response: Response) -> None:
    """Counts one answered request."""
    TALLY["requests"] += 1
    STATUSES[response.status_code] += 1
    if response.status_code >= 500:
        TALLY["server_errors"] += 1
        if len(FIRST_ERRORS) < 5:
            FIRST_ERRORS.append(f"{method} {path} -> {response.status_code}: {response.text[:200]}")
