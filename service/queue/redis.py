"""The Redis Streams train queue: a durable log read by the single trainer through a consumer group.

Layout (names in `service.queue.keys`): one stream per shard whose entries are
`{"e": TrainEntry.encode(), "n": examples}`, a counter of unacknowledged examples that Lua scripts
keep in step with the stream, and an applied-state key plus pub/sub channel for `?wait=true`
producers. Entry ids are the stream ids.

Failures: every call maps a lost or refused connection to `QueueUnavailable`. Nothing is retried
by redis-py itself; each operation is tried once more here on a fresh connection (a pooled one may
predate a Redis restart), which is safe because every operation is made repeatable:

- `put` carries a one-off token, so a put whose reply was lost is not queued twice;
- `ack` decrements the counter only for ids that XACK really acknowledged;
- a `read` that failed after Redis delivered entries leaves them in this consumer's pending list,
  so the next `read` hands those out first.

A Redis restart without persistence loses the consumer group; it is recreated from id `0` on the
first `NOGROUP` error. Entries must leave the stream only through `ack` and `trim_below`: an entry
deleted by hand while unacknowledged keeps its examples in the counter.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.queue.base import (
    DEAD_LETTERS_KEPT,
    IDEMPOTENCY_SECONDS,
    REFUSALS_KEPT_SECONDS,
    DeadLetter,
    Enqueued,
    IdempotencyConflict,
    QueuedEntry,
    QueueFull,
    QueueStats,
    QueueUnavailable,
    TrainEntry,
    TrainQueue,
    entry_id_key,
)
from service.queue.keys import DEFAULT_KEY_PREFIX, ShardKeys

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 1.0
"""An unreachable Redis should turn into a 503 quickly, not hang a request."""

SOCKET_TIMEOUT_S = 5.0
"""Longest wait for any reply; every blocking read asks Redis for less (`BLOCK_SLICE_MS`)."""

BLOCK_SLICE_MS = 3_000
"""Longest single XREADGROUP BLOCK, below the socket timeout so a quiet stream is not an error."""

HEALTH_CHECK_INTERVAL_S = 2
"""A connection idle this long is PINGed before use, and the pub/sub connection this often."""

ATTEMPTS = 2
"""Tries per operation: one more on a fresh connection tells a stale one from an outage."""

PAGE = 256
"""Entries per XREADGROUP / XAUTOCLAIM page when listing pending entries."""


_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
_LISTENER_BACKOFF_S = (0.05, 1.0)

# Lua helpers shared by the scripts: stream ids compare as (milliseconds, sequence); Lua numbers
# are doubles, exact for both parts.
_LUA_IDS = """
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local function group_info(stream, group)
  if redis.call('EXISTS', stream) == 0 then return nil end
  for _, flat in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for i = 1, #flat, 2 do info[flat[i]] = flat[i + 1] end
    if info['name'] == group then return info end
  end
  return nil
end
"""

# KEYS: stream, counter, put token. ARGV: limit, examples, payload, token ttl, fingerprint.
# Returns {1, id} when queued now, {3, id} when an earlier put with the token queued the same
# entry, {2, ''} when it queued a different one, {0, pending} when full.
_PUT = """
local seen = redis.call('GET', KEYS[3])
if seen then
  local id, fingerprint = string.match(seen, '^(%S+) (%S*)$')
  if fingerprint == ARGV[5] then return {3, id} end
  return {2, ''}
end
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
local examples = tonumber(ARGV[2])
if pending + examples > tonumber(ARGV[1]) then return {0, pending} end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[3], 'n', ARGV[2])
redis.call('INCRBY', KEYS[2], examples)
redis.call('SET', KEYS[3], id .. ' ' .. ARGV[5], 'EX', ARGV[4])
return {1, id}
"""

# KEYS: stream, counter. ARGV: group, then (id, examples) pairs; examples -1 means "look it up".
# Only ids that XACK really removes from the pending list release their examples, so acking an
# id twice, or an id that was never delivered, changes nothing.
_ACK = """
local released = 0
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    local examples = tonumber(ARGV[i + 1])
    if examples < 0 then
      examples = 0
      local found = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
      if found[1] then
        local fields = found[1][2]
        for j = 1, #fields, 2 do
          if fields[j] == 'n' then examples = tonumber(fields[j + 1]) end
        end
      end
    end
    released = released + examples
  end
end
if released > 0 and redis.call('DECRBY', KEYS[2], released) < 0 then
  redis.call('SET', KEYS[2], 0)
end
return released
"""

# KEYS: stream, counter, dead-letter stream. ARGV: group, id, reason, context index or '', kept.
# Copies a pending entry (its payload too) to the dead-letter stream with its reason, then
# acknowledges it and releases its examples; an entry no longer pending is left alone.
_DEAD_LETTER = """
local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local examples, payload = 0, ''
if found[1] then
  local fields = found[1][2]
  for j = 1, #fields, 2 do
    if fields[j] == 'n' then examples = tonumber(fields[j + 1]) or 0 end
    if fields[j] == 'e' then payload = fields[j + 1] end
  end
end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
  'id', ARGV[2], 'reason', ARGV[3], 'c', ARGV[4], 'n', examples, 'e', payload)
if examples > 0 and redis.call('DECRBY', KEYS[2], examples) < 0 then
  redis.call('SET', KEYS[2], 0)
end
return 1
"""

# KEYS: stream. ARGV: group, wanted min id. Trims below the wanted id, but never past the oldest
# entry that is still pending or not yet delivered. Returns the number of entries removed.
_TRIM = (
    _LUA_IDS
    + """
local info = group_info(KEYS[1], ARGV[1])
if not info then return 0 end
local floor = redis.call('XPENDING', KEYS[1], ARGV[1])[2]
if not floor then
  local undelivered = redis.call(
    'XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+', 'COUNT', 1)
  if undelivered[1] then floor = undelivered[1][1] end
end
local bound = ARGV[2]
if floor and id_less(floor, bound) then bound = floor end
return redis.call('XTRIM', KEYS[1], 'MINID', bound)
"""
)

# KEYS: stream, counter. ARGV: group.
# Returns {pending examples, unacknowledged entries, oldest unacknowledged id or '', now in ms}.
_STATS = (
    _LUA_IDS
    + """
local examples = tonumber(redis.call('GET', KEYS[2]) or '0')
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local info = group_info(KEYS[1], ARGV[1])
if not info then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {examples, 0, '', now_ms} end
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  return {examples, redis.call('XLEN', KEYS[1]), first[1] and first[1][1] or '', now_ms}
end
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local after = '(' .. info['last-delivered-id']
local lag = info['lag']
if not lag then
  -- Redis cannot always tell the lag (e.g. after deletions); count what is left to deliver.
  lag = #redis.call('XRANGE', KEYS[1], after, '+')
end
local oldest = summary[2]
if not oldest then
  local undelivered = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)
  oldest = undelivered[1] and undelivered[1][1] or ''
end
return {examples, summary[1] + lag, oldest, now_ms}
"""
)

# KEYS: applied state, then one refusal key per refused entry. ARGV: newest applied id, model
# version, channel, refusal ttl, then one reason per refusal key.
# Records the refusals first, so a waiter woken by the announcement finds its entry's. Keeps the
# newest id, and announces the state only when it changed, so a repeated or out-of-order
# publish never moves waiters backwards.
_PUBLISH_APPLIED = (
    _LUA_IDS
    + """
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 3], 'EX', ARGV[4])
end
local id, version = ARGV[1], ARGV[2]
local current = redis.call('GET', KEYS[1])
local current_id, current_version
if current then current_id, current_version = string.match(current, '^(%S+) (%d+)$') end
if current_id and not id_less(current_id, id) then return 0 end
local state = id .. ' ' .. version
redis.call('SET', KEYS[1], state)
redis.call('PUBLISH', ARGV[3], state)
return 1
"""
)


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_page(response: Any) -> list[tuple[Any, Any]]:
    """The `(id, fields)` pairs of a one-stream XREADGROUP reply, in either reply shape."""
    if not response:
        return []
    if isinstance(response, dict):  # RESP3-style replies map stream -> entries
        return list(next(iter(response.values())))
    return list(response[0][1])


def _parse_applied(state: bytes | str | None) -> tuple[tuple[int, int], int] | None:
    """`b"1700000000000-3 7"` -> `((1700000000000, 3), 7)`; None when unset or unreadable."""
    if state is None:
        return None
    entry_id, _, version = _text(state).partition(" ")
    try:
        return entry_id_key(entry_id), int(version)
    except ValueError:
        logger.warning("ignoring an unreadable applied state %r", state)
        return None


class _AppliedWatch:
    """One pub/sub subscription to the applied channel, fanned out to every local waiter.

    The listener task subscribes, waits for Redis to confirm, and only then reads the applied-state
    key, so no publish falls between the two. From then on the local copy of the state is at
    least as new as the key was when a waiter arrived, and every later change arrives as a
    message; waiters therefore never read Redis themselves. After a lost connection the listener
    resubscribes and rereads the key, which settles waiters whose message was missed.
    """

    def __init__(self, client: aioredis.Redis, keys: ShardKeys, where: str) -> None:
        self._client = client
        self._keys = keys
        self._where = where
        self._applied_id = (0, 0)
        self._version = 0
        # A heap of (wanted id, ticket, future): settling is O(log n) per waiter.
        self._waiters: list[tuple[tuple[int, int], int, asyncio.Future[int]]] = []
        self._tickets = itertools.count()
        self._abandoned = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._status = asyncio.Condition()
        self._subscribed = False
        self._error: BaseException | None = None

    async def wait(self, entry_id: str, timeout: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wanted = entry_id_key(entry_id)
        if self._closing:
            raise QueueUnavailable("the train queue was closed")
        if self._task is None:
            self._task = loop.create_task(self._listen(), name=f"psp-applied-{self._keys.stream}")
        await self._until_subscribed(deadline)
        if self._applied_id >= wanted:
            return self._version
        future: asyncio.Future[int] = loop.create_future()
        heapq.heappush(self._waiters, (wanted, next(self._tickets), future))
        try:
            return await asyncio.wait_for(future, deadline - loop.time())
        except TimeoutError:
            raise TimeoutError(f"entry {entry_id} was not applied within {timeout} s") from None
        finally:
            if future.cancelled():
                self._forget_abandoned()

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        # redis-py can swallow a cancellation that lands inside its own timeouts (see
        # redis/redis-py#2028 and #2551), so the cancel is repeated until it takes; `_closing`
        # also ends the listener's loops at their next turn.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        await self._set_status(subscribed=False, error=QueueUnavailable("the queue was closed"))
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(QueueUnavailable("the train queue was closed"))
        self._waiters.clear()

    async def _until_subscribed(self, deadline: float) -> None:
        if self._subscribed:
            return
        async with self._status:
            try:
                await asyncio.wait_for(
                    self._status.wait_for(lambda: self._subscribed or self._error is not None),
                    deadline - asyncio.get_running_loop().time(),
                )
            except TimeoutError:
                raise TimeoutError("timed out subscribing to applied notifications") from None
            if not self._subscribed:
                raise QueueUnavailable(
                    f"cannot wait for applied entries: Redis at {self._where} did not answer "
                    f"({self._error})"
                )

    def _advance(self, state: bytes | str | None) -> None:
        parsed = _parse_applied(state)
        if parsed is not None and parsed[0] > self._applied_id:
            self._applied_id, self._version = parsed
        while self._waiters and self._waiters[0][0] <= self._applied_id:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                future.set_result(self._version)

    def _forget_abandoned(self) -> None:
        # Timed-out waiters stay in the heap until settled; rebuild it once they dominate so a
        # stalled trainer cannot make it grow without bound.
        self._abandoned += 1
        if self._abandoned * 2 > len(self._waiters):
            self._waiters = [w for w in self._waiters if not w[2].done()]
            heapq.heapify(self._waiters)
            self._abandoned = 0

    async def _set_status(self, *, subscribed: bool, error: BaseException | None) -> None:
        async with self._status:
            self._subscribed = subscribed
            self._error = error
            self._status.notify_all()

    async def _listen(self) -> None:
        backoff = _LISTENER_BACKOFF_S[0]
        while not self._closing:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._keys.applied_channel)
                await self._confirm(pubsub)
                self._advance(await self._client.get(self._keys.applied))
                await self._set_status(subscribed=True, error=None)
                backoff = _LISTENER_BACKOFF_S[0]
                while not self._closing:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=HEALTH_CHECK_INTERVAL_S
                    )
                    if message is not None and message["type"] == "message":
                        self._advance(message["data"])
            except (*_CONNECTION_ERRORS, RedisError) as error:
                logger.warning("applied notifications from %s lost: %s", self._where, error)
                await self._set_status(subscribed=False, error=error)
            except Exception as error:
                # Waiters would otherwise hang until their timeouts; keep listening.
                logger.exception("applied notifications from %s failed", self._where)
                await self._set_status(subscribed=False, error=error)
            finally:
                with suppress(*_CONNECTION_ERRORS, RedisError):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _LISTENER_BACKOFF_S[1])

    @staticmethod
    async def _confirm(pubsub: PubSub) -> None:
        # Only after Redis confirms the subscription is every later PUBLISH sure to reach us.
        while True:
            message = await pubsub.get_message(timeout=SOCKET_TIMEOUT_S)
            if message is None:
                raise RedisTimeoutError("Redis did not confirm the subscription")
            if message["type"] == "subscribe":
                return


class RedisStreamQueue(TrainQueue):
    """A train queue on a Redis stream, read by this process's consumer in the `trainers` group.

    Args:
        url: Redis URL, e.g. `redis://127.0.0.1:6379/0`.
        shard: The shard whose stream this queue serves.
        consumer: This reader's name in the group; a restarted trainer that keeps its name finds
            its own pending entries at once, others only after `claim_idle_ms`.
        max_pending_examples: `put` refuses batches beyond this many unacknowledged examples.
        retry_after_seconds: The `Retry-After` hint carried by `QueueFull`.
        key_prefix: Prefix of every key, so deployments and tests can share one Redis.
        claim_idle_ms: `pending` takes over entries another consumer has held unacknowledged
            this long. Keep it above the checkpoint interval: a live trainer holds entries
            until its next checkpoint.
    """

    durable = True

    def __init__(
        self,
        *,
        url: str,
        shard: int = 0,
        consumer: str | None = None,
        max_pending_examples: int,
        retry_after_seconds: int = 1,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.max_pending_examples = max_pending_examples
        self.retry_after_seconds = retry_after_seconds
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.keys = ShardKeys(key_prefix, shard)
        self._where = _redact(url)
        self._claim_idle_ms = claim_idle_ms
        self._client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            # Retries are decided in `_call`, where it is known which operations may repeat.
            retry=Retry(NoBackoff(), 0),
        )
        self._put_script = self._client.register_script(_PUT)
        self._ack_script = self._client.register_script(_ACK)
        self._trim_script = self._client.register_script(_TRIM)
        self._stats_script = self._client.register_script(_STATS)
        self._publish_script = self._client.register_script(_PUBLISH_APPLIED)
        self._dead_letter_script = self._client.register_script(_DEAD_LETTER)
        # Entries that could not be decoded while reading, set aside after the read.
        self._undecodable: dict[str, str] = {}
        self._group_ready = False
        # Examples per entry handed to the trainer and not yet acked: `ack` gets ids only.
        self._sizes: dict[str, int] = {}
        # Set when a read may have failed after Redis delivered entries to this consumer.
        self._unseen_deliveries = False
        self._watch = _AppliedWatch(self._client, self.keys, self._where)

    async def enqueue(self, entry: TrainEntry, idempotency_key: str | None = None) -> Enqueued:
        token = self.keys.put_token(idempotency_key or uuid.uuid4().hex)
        outcome, value = await self._call(
            partial(
                self._put_script,
                keys=[self.keys.stream, self.keys.pending_examples, token],
                args=[
                    self.max_pending_examples,
                    entry.size,
                    entry.encode(),
                    IDEMPOTENCY_SECONDS,
                    entry.fingerprint(),
                ],
            ),
            "queue a train batch",
        )
        if outcome == 0:
            raise QueueFull(self.retry_after_seconds, int(value), self.max_pending_examples)
        if outcome == 2:
            raise IdempotencyConflict(idempotency_key or "")
        # A one-off token seen again is this very put, retried after a lost reply.
        return Enqueued(_text(value), repeated=outcome == 3 and idempotency_key is not None)

    async def read(self, max_entries: int, block_ms: int) -> list[QueuedEntry]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(block_ms, 0) / 1000
        while True:
            left_ms = int((deadline - loop.time()) * 1000)
            block = min(left_ms, BLOCK_SLICE_MS)
            entries = await self._call(
                partial(self._read_once, max_entries, block), "read train entries"
            )
            await self._bury_undecodable()
            if entries or left_ms <= BLOCK_SLICE_MS:
                return entries

    async def pending(self) -> list[QueuedEntry]:
        own, stale = await self._call(self._pending_once, "list pending train entries")
        await self._bury_undecodable()
        by_id = {queued.entry_id: queued for queued in [*own, *stale]}
        entries = sorted(by_id.values(), key=lambda queued: entry_id_key(queued.entry_id))
        self._remember(entries)
        # Everything this consumer holds has now been handed out, lost deliveries included.
        self._unseen_deliveries = False
        return entries

    async def ack(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        args: list[str | int] = [self.keys.group]
        for entry_id in entry_ids:
            args += [entry_id, self._sizes.get(entry_id, -1)]
        await self._call(
            partial(
                self._ack_script, keys=[self.keys.stream, self.keys.pending_examples], args=args
            ),
            "acknowledge train entries",
        )
        for entry_id in entry_ids:
            self._sizes.pop(entry_id, None)

    async def dead_letter(self, entries: Sequence[tuple[QueuedEntry, str]]) -> None:
        for queued, reason in entries:
            await self._dead_letter_one(queued.entry_id, reason, queued.entry.context_index)

    async def _dead_letter_one(self, entry_id: str, reason: str, context: int | None) -> None:
        await self._call(
            partial(
                self._dead_letter_script,
                keys=[self.keys.stream, self.keys.pending_examples, self.keys.dead_letters],
                args=[
                    self.keys.group,
                    entry_id,
                    reason,
                    "" if context is None else context,
                    DEAD_LETTERS_KEPT,
                ],
            ),
            "set a train entry aside",
        )
        self._sizes.pop(entry_id, None)

    async def _bury_undecodable(self) -> None:
        """Sets aside the entries the last read could not decode, so the queue moves on."""
        while self._undecodable:
            entry_id, reason = next(iter(self._undecodable.items()))
            logger.warning("setting aside train entry %s: %s", entry_id, reason)
            await self._dead_letter_one(entry_id, reason, None)
            del self._undecodable[entry_id]

    async def dead_letters(self, limit: int) -> tuple[list[DeadLetter], int]:
        async def newest() -> tuple[list[Any], int]:
            page: list[Any] = list(
                await self._client.xrevrange(self.keys.dead_letters, count=limit) or []
            )
            return page, int(await self._client.xlen(self.keys.dead_letters))

        page, total = await self._call(newest, "list dead-lettered entries", needs_group=False)
        letters = []
        for stream_id, fields in page:
            context = _text(fields.get(b"c", b""))
            letters.append(
                DeadLetter(
                    entry_id=_text(fields[b"id"]),
                    reason=_text(fields[b"reason"]),
                    context_index=int(context) if context else None,
                    examples=int(fields.get(b"n", 0)),
                    dead_lettered_at=entry_id_key(_text(stream_id))[0] / 1000,
                )
            )
        return letters, total

    async def trim_below(self, entry_id: str) -> None:
        """Drops entries with ids below `entry_id`; never `entry_id` itself or anything newer.

        Exact `XTRIM MINID`, lowered to the oldest entry that is still pending or undelivered, so
        a trim can only ever remove acknowledged history.
        """
        await self._call(
            partial(self._trim_script, keys=[self.keys.stream], args=[self.keys.group, entry_id]),
            "trim the train stream",
        )

    async def stats(self) -> QueueStats:
        examples, entries, oldest, now_ms = await self._call(
            partial(
                self._stats_script,
                keys=[self.keys.stream, self.keys.pending_examples],
                args=[self.keys.group],
            ),
            "read train queue stats",
        )
        oldest_id = _text(oldest)
        age = (int(now_ms) - entry_id_key(oldest_id)[0]) / 1000 if oldest_id else 0.0
        return QueueStats(int(examples), int(entries), max(0.0, age))

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._client.ping, "ping Redis", needs_group=False))
        except (QueueUnavailable, RedisError):
            return False

    async def publish_applied(
        self,
        entry_ids: Sequence[str],
        model_version: int,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        if not entry_ids:
            return
        newest = max(entry_ids, key=entry_id_key)
        refused = refused or {}
        await self._call(
            partial(
                self._publish_script,
                keys=[self.keys.applied, *(self.keys.refusal(i) for i in refused)],
                args=[
                    newest,
                    model_version,
                    self.keys.applied_channel,
                    REFUSALS_KEPT_SECONDS,
                    *refused.values(),
                ],
            ),
            "publish applied entries",
            needs_group=False,
        )

    async def refusal(self, entry_id: str) -> str | None:
        reason = await self._call(
            partial(self._client.get, self.keys.refusal(entry_id)),
            "read why an entry was refused",
            needs_group=False,
        )
        return None if reason is None else _text(reason)

    async def wait_applied(self, entry_id: str, timeout: float) -> int:
        return await self._watch.wait(entry_id, timeout)

    async def close(self) -> None:
        await self._watch.close()
        await self._client.aclose()

    async def _call(
        self, operation: Callable[[], Awaitable[T]], doing: str, *, needs_group: bool = True
    ) -> T:
        """Runs a repeatable Redis operation, mapping an outage to `QueueUnavailable`.

        A failed connection gets one more try (a pooled connection may predate a Redis restart).
        A `NOGROUP` error means Redis lost the group with its data; the group is recreated and
        the operation tried again, once, whatever the connection tries used.
        """
        failures = 0
        regrouped = False
        while True:
            try:
                if needs_group and not self._group_ready:
                    await self._create_group()
                return await operation()
            except ResponseError as error:
                if regrouped or not str(error).startswith("NOGROUP"):
                    raise
                regrouped = True
                self._group_ready = False
            except _CONNECTION_ERRORS as error:
                failures += 1
                if failures == ATTEMPTS:
                    raise QueueUnavailable(
                        f"cannot {doing}: Redis at {self._where} did not answer ({error})"
                    ) from error

    async def _create_group(self) -> None:
        # From id 0, so entries queued before the group existed (after data loss) are delivered.
        try:
            await self._client.xgroup_create(
                self.keys.stream, self.keys.group, id="0", mkstream=True
            )
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    async def _read_once(self, max_entries: int, block_ms: int) -> list[QueuedEntry]:
        if self._unseen_deliveries:
            unseen = [q for q in await self._own_pending() if q.entry_id not in self._sizes]
            if len(unseen) <= max_entries:
                self._unseen_deliveries = False
            if unseen:
                self._remember(unseen[:max_entries])
                return unseen[:max_entries]
        try:
            response = await self._client.xreadgroup(
                self.keys.group,
                self.consumer,
                {self.keys.stream: ">"},
                count=max_entries,
                # BLOCK 0 would wait forever; no BLOCK at all answers at once.
                block=block_ms if block_ms > 0 else None,
            )
        except BaseException:
            # Redis may have delivered entries whose reply never reached us (or a cancellation
            # dropped it); they sit in our pending list, and the next read returns them.
            self._unseen_deliveries = True
            raise
        entries = self._decoded(_stream_page(response))
        self._remember(entries)
        return entries

    async def _pending_once(self) -> tuple[list[QueuedEntry], list[QueuedEntry]]:
        return await self._own_pending(), await self._claim_stale()

    async def _own_pending(self) -> list[QueuedEntry]:
        """This consumer's delivered, unacknowledged entries, page by page."""
        found: list[QueuedEntry] = []
        after: bytes | str = "0"
        while True:
            response = await self._client.xreadgroup(
                self.keys.group, self.consumer, {self.keys.stream: after}, count=PAGE
            )
            page = _stream_page(response)
            if not page:
                return found
            after = page[-1][0]
            found += self._decoded(page)

    async def _claim_stale(self) -> list[QueuedEntry]:
        """Takes over entries other consumers have left unacknowledged for `claim_idle_ms`."""
        found: list[QueuedEntry] = []
        start: bytes | str = "0-0"
        while True:
            # Redis 7 drops deleted entries from the pending list and reports them apart.
            start, claimed, *_ = await self._client.xautoclaim(
                self.keys.stream,
                self.keys.group,
                self.consumer,
                self._claim_idle_ms,
                start,
                count=PAGE,
            )
            found += self._decoded(claimed)
            if _text(start) == "0-0":
                return found

    def _remember(self, entries: Sequence[QueuedEntry]) -> None:
        for queued in entries:
            self._sizes[queued.entry_id] = queued.entry.size

    def _decoded(self, page: Sequence[tuple[Any, Any]]) -> list[QueuedEntry]:
        """The entries of a page that decode; the others are noted for `_bury_undecodable`.

        A pending entry deleted from the stream comes back without fields and is skipped.
        """
        entries = []
        for raw_id, fields in page:
            if not fields:
                continue
            entry_id = _text(raw_id)
            try:
                entries.append(QueuedEntry(entry_id, TrainEntry.decode(fields[b"e"])))
            except Exception as error:  # any malformed payload: msgpack, keys, array sizes
                self._undecodable[entry_id] = (
                    f"the entry cannot be decoded ({type(error).__name__}: {error})"
                )
        return entries
