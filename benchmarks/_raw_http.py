"""A light closed-loop load generator: keep-alive HTTP/1.1 over asyncio protocols.

httpx spends more than a millisecond of CPU on each request, and on a 2-core machine the load
generator shares the cores with the servers it measures, so with httpx every target is capped
by the client, not by itself. This client writes each request from pre-encoded bytes and reads
only the status line and `Content-Length` of the answer: a few tens of microseconds a request.
It speaks just enough HTTP for the benchmarks' own servers (no chunked answers, no redirects).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import cast
from urllib.parse import urlsplit

from _load import Recorder, closed_loops

RequestMaker = Callable[[int], bytes]
"""Given the client number, the bytes of the next request (request line, headers and body)."""


def post_request(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    """The bytes of one keep-alive POST."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Answers(asyncio.Protocol):
    """One connection: hands each complete answer's status to the waiting request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: asyncio.Future[int] | None = None
        self._closed: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._closed = error or ConnectionResetError("the server closed the connection")
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_exception(self._closed)

    async def exchange(self, request: bytes) -> int:
        """Sends `request` and waits for the whole answer; returns its status."""
        if self._closed is not None:
            raise self._closed
        assert self.transport is not None
        self._waiting = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiting

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self._buffer) < end + 4 + length:
            return
        del self._buffer[: end + 4 + length]
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(int(head[0].split()[1]))


async def drive_raw(
    base_url: str,
    route: str,
    make_request: RequestMaker,
    recorder: Recorder,
    *,
    clients: int,
    seconds: float,
    max_operations: int,
) -> float:
    """`clients` connections, each sending its next request as soon as the last one was
    answered, until `seconds` have passed or `max_operations` requests have started; each
    answer is recorded under `route`.

    Returns:
        Wall seconds from the first request to the end of the last one.
    """
    address = urlsplit(base_url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    loop = asyncio.get_running_loop()
    connections: Sequence[_Answers] = [
        (await loop.create_connection(_Answers, host, port))[1] for _ in range(clients)
    ]

    async def step(number: int) -> bool:
        began = time.perf_counter()
        try:
            status = await connections[number].exchange(make_request(number))
        except OSError:
            recorder.transport_errors[route] += 1
            return False  # the connection is gone: this client stops
        recorder.latencies[route].append(time.perf_counter() - began)
        recorder.statuses[route, status] += 1
        return True

    try:
        return await closed_loops(clients, step, seconds=seconds, max_operations=max_operations)
    finally:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
