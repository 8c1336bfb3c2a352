"""The paths of P5's `--paths`: how many workers each has, and how tables and JSON name it."""

from __future__ import annotations


def split_workers(path: str) -> int:
    """The number of workers of a split path (`split` is `split-1`), 0 for the others."""
    if path == "split":
        return 1
    count = path.removeprefix("split-")
    return int(count) if path.startswith("split-") and count.isdigit() and int(count) else 0


SINGLE_PROCESS_NAMES = {
    "memory": ("in-process queue", "in_process"),
    "memory-unscaled": ("in-process queue, no input scaling", "in_process_unscaled"),
    "redis": ("Redis queue", "redis"),
}
"""The paths served by one process: how the tables and the JSON name each."""


def path_label(path: str) -> str:
    """How the tables name a path of `--paths`."""
    workers = split_workers(path)
    if not workers:
        return SINGLE_PROCESS_NAMES[path][0]
    if workers == 1:
        return "Redis, api + worker"
    return f"Redis, api + {workers} workers ({workers} shards)"


def path_json_name(path: str) -> str:
    """How the JSON names a path of `--paths`."""
    workers = split_workers(path)
    if not workers:
        return SINGLE_PROCESS_NAMES[path][1]
    return "redis_split_roles" if workers == 1 else f"redis_split_roles_{workers}_shards"
