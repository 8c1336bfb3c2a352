"""What the campaign's clients send and were told: the tenants and their accepted examples, every
request's outcome, and how a request whose answer was lost is sent again until one settles it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

KEY_PREFIX = "psp-campaign:"
"""The Redis key prefix of the campaign's service."""
STABLE_TENANTS = ("tenant-0", "tenant-1", "tenant-2", "tenant-3")
"""Tenants that live through the whole campaign; short-lived ones come and go beside them."""
INPUT_WIDTH = 64
NUM_CLASSES = 10

SETTLE_SECONDS = 120.0
"""How long a client sends a request again before it gives up on settling it."""


@dataclass
class Tenant:
    """A context the clients registered, and the examples the service accepted for it."""

    key: str
    index: int
    short_lived: bool
    accepted: int = 0
    deleting: bool = False
    deleted: bool = False
    deleted_at: float | None = None  # Unix time the delete was answered


@dataclass
class ClientRecord:
    """Everything the clients were answered, shared by their threads."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    unsettled: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    labels_lost: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str, amount: int = 1) -> None:
        with self.lock:
            self.requests[what] += amount

    def accept(self, key: str, rows: int) -> None:
        with self.lock:
            self.tenants[key].accepted += rows

    def trainable(self) -> list[str]:
        with self.lock:
            return [t.key for t in self.tenants.values() if not (t.deleting or t.deleted)]

    def short_lived(self) -> list[str]:
        with self.lock:
            return [
                t.key
                for t in self.tenants.values()
                if t.short_lived and not (t.deleting or t.deleted)
            ]

    def note_unsettled(self, what: str) -> None:
        with self.lock:
            self.unsettled.append(what)

    def note_unexpected(self, what: str, response: httpx.Response) -> None:
        with self.lock:
            self.unexpected.append(f"{what}: {response.status_code} {response.text[:300]}")


@dataclass
class Answer:
    """The answer that settled a request, or None when none did within the time allowed.

    Attributes:
        response: The settling answer.
        ambiguous: Some earlier try may have been carried out without its answer reaching the
            client (a dropped connection, a timeout, a 5xx).
    """

    response: httpx.Response | None
    ambiguous: bool

    @property
    def status(self) -> int | None:
        return None if self.response is None else self.response.status_code


def send_until_settled(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    settled_by: Callable[[int], bool] = lambda status: status < 500 and status != 429,
    seconds: float = SETTLE_SECONDS,
    **request: Any,
) -> Answer:
    """Sends the same request again until an answer settles it.

    A refused connection carried nothing; any other transport error, and a 5xx, may have been
    carried out, so the request stays ambiguous until an answer settles it. 429 and 5xx are
    sent again after a short wait (a store may be restarting).
    """
    ambiguous = False
    deadline = time.monotonic() + seconds
    while True:
        try:
            response = client.request(method, url, **request)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            pass
        except httpx.TransportError:
            ambiguous = True
        else:
            if settled_by(response.status_code):
                return Answer(response, ambiguous)
            if response.status_code >= 500:
                ambiguous = True
        if time.monotonic() > deadline:
            return Answer(None, ambiguous)
        time.sleep(0.25)


def register_stable_tenants(base_url: str, record: ClientRecord) -> None:
    """Registers `STABLE_TENANTS` and records their indexes.

    Raises:
        RuntimeError: One was not registered.
    """
    with httpx.Client(base_url=base_url, timeout=15) as client:
        for key in STABLE_TENANTS:
            answer = send_until_settled(client, "POST", "/contexts", json={"key": key})
            if answer.status not in (200, 201):
                raise RuntimeError(f"registering {key} answered {answer.status}")
            assert answer.response is not None
            index = int(answer.response.json()["index"])
            record.tenants[key] = Tenant(key, index, short_lived=False)
