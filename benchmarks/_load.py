"""The closed-loop load generator of the HTTP benchmarks, and the record of its requests.

The load generator is an `httpx.AsyncClient` per simulated client, talking to 127.0.0.1 only;
every load loop stops by itself after a bounded number of requests or seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Recorder:
    """Latencies and outcomes of the requests of one load run, per route label.

    Attributes:
        latencies: Seconds from sending to the full answer, per route.
        statuses: Answers per (route, HTTP status).
        transport_errors: Requests per route that got no HTTP answer (refused, reset, timeout).
    """

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)

    async def send(
        self, client: httpx.AsyncClient, route: str, method: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        """Sends one request and records it; None when no HTTP answer came back."""
        began = time.perf_counter()
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError:
            self.transport_errors[route] += 1
            return None
        self.latencies[route].append(time.perf_counter() - began)
        self.statuses[route, response.status_code] += 1
        return response

    def count(self, route: str, status: int | None = None) -> int:
        """Answers of a route, all of them or those with one status."""
        return sum(n for (r, s), n in self.statuses.items() if r == route and status in (None, s))

    def non_ok(self, route: str, ok: Sequence[int] = (200,)) -> int:
        """Requests of a route that did not get one of the `ok` statuses (errors included)."""
        bad = sum(n for (r, s), n in self.statuses.items() if r == route and s not in ok)
        return bad + self.transport_errors[route]


Operation = Callable[[httpx.AsyncClient, int], Awaitable[None]]
"""One client's action: gets the client's own `httpx.AsyncClient` and the client number."""


async def drive(
    base_url: str,
    operation: Operation,
    *,
    clients: int,
    seconds: float,
    max_operations: int,
    timeout: float = 30.0,
) -> float:
    """Runs `clients` concurrent loops of `operation` until `seconds` have passed or
    `max_operations` operations have started, whichever comes first.

    Each client has its own `httpx.AsyncClient` (its own keep-alive connection). The clients
    are built before the clock starts: building one costs milliseconds (httpx prepares a TLS
    context even for plain HTTP), which would otherwise count against short runs.

    Returns:
        Wall seconds from the first operation to the end of the last one.
    """
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    pool = [
        httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits, verify=False)
        for _ in range(clients)
    ]

    async def step(number: int) -> bool:
        await operation(pool[number], number)
        return True

    try:
        return await closed_loops(clients, step, seconds=seconds, max_operations=max_operations)
    finally:
        for client in pool:
            await client.aclose()


async def closed_loops(
    clients: int,
    step: Callable[[int], Awaitable[bool]],
    *,
    seconds: float,
    max_operations: int,
) -> float:
    """`clients` concurrent loops, each calling `step(client number)` again as soon as the
    last call returned, until `seconds` have passed or `max_operations` calls have started,
    whichever comes first; a client whose `step` returns False stops.

    Returns:
        Wall seconds from the first call to the end of the last one.
    """
    started = 0
    began = time.perf_counter()
    deadline = began + seconds

    async def client_loop(number: int) -> None:
        nonlocal started
        while started < max_operations and time.perf_counter() < deadline:
            started += 1
            if not await step(number):
                return

    await asyncio.gather(*(client_loop(n) for n in range(clients)))
    return time.perf_counter() - began


def run_async(main: Awaitable[Any]) -> Any:
    """Runs a coroutine on uvloop when it is installed (a lighter load generator), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)  # type: ignore[arg-type]
