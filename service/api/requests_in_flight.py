"""How many HTTP requests this process is handling right now.

The predict batcher answers a lone request on the event loop and sends requests that have
company to be batched; this count, kept by the HTTP middleware around every request (body
reading included), is how it tells them apart. Requests are counted on the event loop only, so
a plain integer is enough.
"""

from __future__ import annotations


class RequestsInFlight:
    """The number of requests between their first byte and their last answer byte."""

    def __init__(self) -> None:
        self.count = 0

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1

    def alone(self) -> bool:
        """Whether the request asking is the only one (or, outside HTTP, there is none)."""
        return self.count <= 1


REQUESTS_IN_FLIGHT = RequestsInFlight()
"""This process's count."""
