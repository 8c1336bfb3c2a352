"""What predict and the trainer both read of one model besides its weights: the lock that makes
a step atomic, the version served and whether the weights are healthy.

`LocalModelState` serves a model whose trainer runs in the same process. `SharedModelState`
lives in shared memory, for a model whose steps run in a child process (`service.step_process`):
the API's predictions and the child's steps then take the same lock and read the same version.
"""

from __future__ import annotations

import os
import threading
from multiprocessing.context import BaseContext
from types import TracebackType
from typing import Protocol


class ModelLock(Protocol):
    def acquire(self, block: bool = ..., timeout: float = ..., /) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> bool: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class ModelState(Protocol):
    @property
    def lock(self) -> ModelLock: ...

    version: int
    healthy: bool


class LocalModelState:
    """The state of a model that one process reads and writes."""

    def __init__(self) -> None:
        self.lock: ModelLock = threading.Lock()
        self.version = 0
        self.healthy = True


class ProcessLock:
    """A lock shared by processes that remembers which process holds it, so that the lock of a
    process that died holding it can be given back (`release_if_held_by`)."""

    def __init__(self, context: BaseContext) -> None:
        self._lock = context.Lock()
        self._holder = context.RawValue("q", 0)

    def acquire(self, block: bool = True, timeout: float = -1, /) -> bool:
        acquired = self._lock.acquire(block, None if timeout < 0 else timeout)
        if acquired:
            self._holder.value = os.getpid()
        return acquired

    def release(self) -> None:
        self._holder.value = 0
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def release_if_held_by(self, pid: int) -> bool:
        """Gives the lock back if process `pid` (which has died) holds it."""
        if self._holder.value != pid:
            return False
        self.release()
        return True


class SharedModelState:
    """The state of a model whose weights are in shared memory, read by the API process and
    written by its training child; passed to the child when it starts."""

    def __init__(self, context: BaseContext) -> None:
        self.lock = ProcessLock(context)
        self._version = context.RawValue("q", 0)
        self._healthy = context.RawValue("b", 1)

    @property
    def version(self) -> int:
        return int(self._version.value)

    @version.setter
    def version(self, value: int) -> None:
        self._version.value = value

    @property
    def healthy(self) -> bool:
        return bool(self._healthy.value)

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._healthy.value = int(value)
