"""The predict batcher: concurrent requests for any mix of contexts share one forward pass.

Superposition makes a batch whose rows belong to different contexts cost the same as one
context: `Y = W (C[idx] ⊙ X)` is still one GEMM. The batcher exploits it, greedily:

- a request that finds no forward pass in flight runs at once, with whatever else is already
  waiting, so a lone request never waits for company that may not come;
- requests that arrive while a pass runs queue up and form the next batch;
- only then, under load, may the collector wait for more rows, until `max_rows` rows are
  waiting or `max_delay_us` has passed since the first of them arrived (usually already, since
  they waited for the previous pass).

Each pass runs off the event loop, on a thread of the batcher's own, and each caller gets its own
rows back. The one exception is
the lone request of a few rows on the CPU: when it is the only HTTP request this process is
handling (still, after one turn of the event loop, which lets in the requests that arrived
with it), no other predict arrived or was answered in the last 100 µs, no pass is in flight or
waiting and the model is free, its forward pass (a fraction of a millisecond) runs right on the
event loop, since the hops to the collector and to a worker thread and back would cost more
than the pass itself. A request with company goes to the collector, to be batched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service import metrics
from service.api.payloads import PayloadError
from service.api.requests_in_flight import REQUESTS_IN_FLIGHT
from service.model.host import ModelHost, ModelUnhealthy
from service.runtime.supervisor import Supervisor


@dataclass
class _Request:
    inputs: np.ndarray  # float32 (n, width)
    index: int  # registry index of the context
    enqueued: float = field(default_factory=time.perf_counter)
    future: asyncio.Future[tuple[np.ndarray, int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


# A request may be answered on the event loop (see the module doc) if it has at most this many
# rows and the previous predict arrived, or was answered there, at least this long before it.
INLINE_MAX_ROWS = 8
INLINE_QUIET_SECONDS = 0.0001


class PredictBatcher:
    """Gathers predict requests into mixed-context forward passes."""

    def __init__(self, host: ModelHost, *, max_rows: int, max_delay_us: int) -> None:
        self.host = host
        self.max_rows = max_rows
        self.max_delay = max_delay_us / 1e6
        # A thread of its own: the registry's calls, which may wait seconds for a database
        # lock, and the trainer's run in asyncio's shared pool and never hold a pass back.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="predict")
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = False  # a pass of the collector is running
        self._inline = host.device.type == "cpu"
        self._last_activity = 0.0

    def start(self, supervisor: Supervisor, name: str = "batcher") -> None:
        """Runs the collector under `supervisor`, as the task `name`, until `stop`."""
        self._task = supervisor.spawn(name, self._collect_forever, asyncio.Event())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False)

    async def forward(self, inputs: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, int]:
        """`ModelHost.forward` on this batcher's own thread, for a pass formed elsewhere (the
        items of a multi-context request)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.host.forward, inputs, indices)

    async def predict(self, inputs: np.ndarray, index: int) -> tuple[np.ndarray, int]:
        """Probabilities `(n, num_classes)` for `inputs` under context `index`, and the model
        version that produced them."""
        arrived = time.perf_counter()
        quiet = arrived - self._last_activity >= INLINE_QUIET_SECONDS
        self._last_activity = arrived
        if quiet and self._inline and len(inputs) <= INLINE_MAX_ROWS and self._alone():
            # The requests whose bytes arrived with this one's are parsed in the same turn of
            # the event loop, and only count once their tasks run: one turn lets them in, so
            # that a burst is batched instead of answered one request at a time.
            await asyncio.sleep(0)
            answered = self._predict_now(inputs, index) if self._alone() else None
            self._last_activity = time.perf_counter()
            if answered is not None:
                return answered
        request = _Request(inputs, index, arrived)
        await self._queue.put(request)
        return await request.future

    def _alone(self) -> bool:
        return REQUESTS_IN_FLIGHT.alone() and not self._in_flight and self._queue.empty()

    def _predict_now(self, inputs: np.ndarray, index: int) -> tuple[np.ndarray, int] | None:
        """Answers on the event loop if the model is free; None if a step or a swap holds it."""
        answered = self.host.predict_if_free(inputs, np.full(len(inputs), index, dtype=np.int64))
        if answered is not None:
            metrics.PREDICT_QUEUE_WAIT.observe(0.0)
            metrics.PREDICT_BATCH_ROWS.observe(len(inputs))
        return answered

    async def _collect_forever(self) -> None:
        carried: _Request | None = None  # a request that did not fit the previous batch
        while True:
            # Requests already waiting (or carried over) arrived while the last pass ran.
            under_load = carried is not None or not self._queue.empty()
            first = carried or await self._queue.get()
            carried = None
            batch, rows = [first], len(first.inputs)
            # Idle: take only what is already queued. Under load: counted from the first
            # request's arrival, so requests that queued during the last pass still go at once.
            deadline = first.enqueued + self.max_delay if under_load else 0.0
            while rows < self.max_rows:
                request = await self._next(deadline)
                if request is None:
                    break
                if rows + len(request.inputs) > self.max_rows:
                    carried = request
                    break
                batch.append(request)
                rows += len(request.inputs)
            await self._run(batch)

    async def _next(self, deadline: float) -> _Request | None:
        if not self._queue.empty():
            return self._queue.get_nowait()
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), remaining)
        except TimeoutError:
            return None

    async def _run(self, batch: list[_Request]) -> None:
        started = time.perf_counter()
        for request in batch:
            metrics.PREDICT_QUEUE_WAIT.observe(started - request.enqueued)
        inputs = np.concatenate([r.inputs for r in batch])
        indices = np.concatenate([np.full(len(r.inputs), r.index, dtype=np.int64) for r in batch])
        metrics.PREDICT_BATCH_ROWS.observe(len(inputs))
        self._in_flight = True
        try:
            probabilities, version = await self.forward(inputs, indices)
        except Exception as err:  # every caller learns what went wrong
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(err)
            return
        finally:
            self._in_flight = False
        offset = 0
        for request in batch:
            n = len(request.inputs)
            if not request.future.done():  # the caller may have gone away
                self._answer(request, probabilities[offset : offset + n], version)
            offset += n

    def _answer(self, request: _Request, probabilities: np.ndarray, version: int) -> None:
        """Answers one caller of a shared pass: its probabilities, or, when its own rows
        overflowed, the error that says so; no caller fails for another's rows."""
        try:
            self.host.check_answer(probabilities, request.inputs, version)
        except (PayloadError, ModelUnhealthy) as err:
            request.future.set_exception(err)
            return
        request.future.set_result((probabilities, version))
