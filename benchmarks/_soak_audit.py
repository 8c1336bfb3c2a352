"""The soak's exactly-once audit: every context's examples_seen against the rows accepted for
it, and the error lines of the server's log."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from _soak_clients import SoakState


def examples_seen(base_url: str) -> dict[str, int]:
    """examples_seen of every live context, paging through GET /contexts."""
    seen: dict[str, int] = {}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        offset = 0
        while True:
            page = client.get("/contexts", params={"limit": 1000, "offset": offset}).json()
            seen.update({item["key"]: item["examples_seen"] for item in page["items"]})
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return seen


def mismatches(expected: Counter[str], keys: list[str], seen: dict[str, int]) -> dict[str, Any]:
    """Contexts whose examples_seen differs from the rows accepted for them."""
    return {
        key: {"expected": expected[key], "seen": seen.get(key)}
        for key in keys
        if seen.get(key) != expected[key]
    }


def audit(base_url: str, state: SoakState, timeout: float) -> tuple[dict[str, Any], float]:
    """Waits for the trainer to apply and count everything, then checks it stays exact.

    Returns:
        The mismatching contexts (empty when exactly once held) and the seconds the drain took.
    """
    began = time.monotonic()
    wrong: dict[str, Any] = {}
    while time.monotonic() - began < timeout:
        wrong = mismatches(state.accepted, state.keys, examples_seen(base_url))
        if not wrong:
            break
        time.sleep(1.0)
    drained = time.monotonic() - began
    if not wrong:
        time.sleep(3.0)  # nothing may be counted twice later either
        wrong = mismatches(state.accepted, state.keys, examples_seen(base_url))
    return wrong, drained


def log_problems(log: Path) -> list[str]:
    """Lines of the server log that report errors or tracebacks."""
    if not log.exists():
        return []
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "Traceback" in line or " ERROR " in line or line.startswith("ERROR")
    ]
