"""One Redis connection for the queue's adapters: timeouts, Lua scripts, and how calls are tried.

Nothing is retried by redis-py itself; each operation is tried once more here on a fresh
connection (the pooled ones may predate a Redis restart, so a failure drops the idle ones), so
every operation run through `RedisLink.call` must be repeatable. Every Redis failure leaves as
`QueueUnavailable`, so that callers never handle Redis's own exceptions.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.queue.base import QueueUnavailable
from service.training.fencing import WriterFenced

T = TypeVar("T")

CONNECT_TIMEOUT_S = 1.0
"""An unreachable Redis should turn into a 503 quickly, not hang a request."""

SOCKET_TIMEOUT_S = 5.0
"""Longest wait for any reply; blocking reads must ask Redis for less."""

HEALTH_CHECK_INTERVAL_S = 2
"""A connection idle this long is PINGed before use, and a pub/sub connection this often."""

ATTEMPTS = 2
"""Tries per operation: one more on a fresh connection tells a stale one from an outage."""

CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a lost or refused connection raises."""


def redact(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@functools.cache
def lua_source(name: str) -> str:
    """The text of the package file `lua/<name>.lua`."""
    return (resources.files("service.queue") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class RedisLink:
    """A client with the queue's timeouts, and the one way its operations are tried.

    A process's queue and applied notices share one link, so one pool of connections: after a
    Redis restart, the queue's steady traffic (the trainer reads all the time) replaces the dead
    pooled connections for the notices too, which would otherwise meet them one at a time.

    Args:
        url: Redis URL, e.g. `redis://127.0.0.1:6379/0`.
    """

    def __init__(self, url: str) -> None:
        self.where = redact(url)
        self.client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            # Retries are decided in `call`, where it is known which operations may repeat.
            retry=Retry(NoBackoff(), 0),
        )

    def script(self, name: str, *, needs: tuple[str, ...] = ()) -> AsyncScript:
        """Registers `lua/<name>.lua`, after the files of local functions it `needs`."""
        source = "".join(lua_source(library) for library in needs) + lua_source(name)
        return self.client.register_script(source)

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        doing: str,
        *,
        on_lost_group: Callable[[], None] | None = None,
    ) -> T:
        """Runs a repeatable Redis operation, mapping every failure to `QueueUnavailable`.

        A failed connection gets one more try. With `on_lost_group`, a `NOGROUP` error (Redis
        lost a consumer group with its data) calls it and tries the operation again, once,
        whatever the connection tries used.

        Raises:
            QueueUnavailable: Redis did not answer, or refused the operation.
        """
        failures = 0
        regrouped = False
        while True:
            try:
                return await operation()
            except ResponseError as error:
                if str(error).startswith("FENCED"):
                    raise WriterFenced(f"cannot {doing}: {error}") from error
                lost_group = str(error).startswith("NOGROUP")
                if on_lost_group is None or regrouped or not lost_group:
                    raise self._unavailable(doing, "refused", error) from error
                regrouped = True
                on_lost_group()
            except CONNECTION_ERRORS as error:
                failures += 1
                if failures == ATTEMPTS:
                    raise self._unavailable(doing, "did not answer", error) from error
                # The idle pooled connections are as old as the one that failed: drop them all,
                # so the next try (and every other user) gets a fresh one, not another stale one.
                await self.client.connection_pool.disconnect(inuse_connections=False)
            except RedisError as error:
                raise self._unavailable(doing, "failed", error) from error

    def _unavailable(self, doing: str, what: str, error: BaseException) -> QueueUnavailable:
        return QueueUnavailable(f"cannot {doing}: Redis at {self.where} {what} ({error})")

    async def close(self) -> None:
        """Drops the connections. A later call opens new ones, so each user of a shared link
        may close it."""
        await self.client.aclose()


def redis_client(url: str) -> aioredis.Redis:
    """A plain client with the same timeouts, for the code that handles Redis's exceptions
    itself (checkpoint announcements, rollback commands, feedback): it fails fast while Redis is
    down and reconnects by itself afterwards."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
    )
