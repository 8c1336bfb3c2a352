"""The model and thread settings of a benchmarked server, as environment variables."""

from __future__ import annotations

import json
from collections.abc import Sequence


def model_env(input_size: int, hidden: Sequence[int], kind: str) -> dict[str, str]:
    """The `PSP_MODEL__*` settings of an MLP of the given shape."""
    return {
        "PSP_MODEL__KIND": kind,
        "PSP_MODEL__INPUT_SHAPE": json.dumps([input_size]),
        "PSP_MODEL__HIDDEN": json.dumps(list(hidden)),
        "PSP_DEVICE": "cpu",
    }


def torch_thread_env(threads: int | None) -> dict[str, str]:
    """`OMP_NUM_THREADS` for a server process; nothing for None or 0 (torch's default, one
    thread per core)."""
    return {"OMP_NUM_THREADS": str(threads)} if threads else {}
