"""What the registry's tests share: reading every row, and racing threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.registry.models import ContextRow

T = TypeVar("T")


def all_rows(session: Session) -> list[ContextRow]:
    """Every row, retired ones included, in index order."""
    return list(session.scalars(select(ContextRow).order_by(ContextRow.index)))


def run_concurrently(workers: int, job: Callable[[], T]) -> list[T]:
    """Runs `job` in `workers` threads released at the same moment."""
    barrier = threading.Barrier(workers)

    def start() -> T:
        barrier.wait()
        return job()

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(start) for _ in range(workers)]
        return [future.result(timeout=60) for future in futures]
