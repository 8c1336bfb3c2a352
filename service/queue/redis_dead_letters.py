"""The dead letters of one shard's Redis train queue: entries set aside unlearned, in a stream of
their own that keeps the newest `DEAD_LETTERS_KEPT`."""

from __future__ import annotations

from functools import partial
from typing import Any

from service.entry_ids import entry_id_key
from service.queue.base import DEAD_LETTERS_KEPT, DeadLetter
from service.queue.keys import ShardKeys
from service.queue.redis_group import ConsumerGroup
from service.queue.redis_link import RedisLink, text


class RedisDeadLetters:
    """Moves delivered entries into the dead-letter stream and lists what it keeps."""

    def __init__(self, link: RedisLink, keys: ShardKeys, group: ConsumerGroup) -> None:
        self._client = link.client
        self._keys = keys
        self._group = group
        self._script = link.script("dead_letter", needs=("release", "fence"))

    async def set_aside(self, entry_id: str, reason: str, context: int | None, token: str) -> None:
        """Acknowledges `entry_id` and keeps it with `reason` (`context` None: not decodable);
        refused when a newer writer than `token` holds the shard."""
        keys = self._keys
        await self._group.call(
            partial(
                self._script,
                keys=[
                    keys.stream,
                    keys.pending_examples,
                    keys.dead_letters,
                    keys.pending_by_context,
                    keys.fence,
                ],
                args=[
                    token,
                    keys.group,
                    entry_id,
                    reason,
                    "" if context is None else context,
                    DEAD_LETTERS_KEPT,
                ],
            ),
            "set a train entry aside",
        )

    async def newest(self, limit: int) -> tuple[list[DeadLetter], int]:
        """The newest `limit` dead letters, newest first, and how many are kept."""

        async def newest_page() -> tuple[list[Any], int]:
            page: list[Any] = list(
                await self._client.xrevrange(self._keys.dead_letters, count=limit) or []
            )
            return page, int(await self._client.xlen(self._keys.dead_letters))

        page, total = await self._group.call(
            newest_page, "list dead-lettered entries", needs_group=False
        )
        return [_dead_letter(stream_id, fields) for stream_id, fields in page], total


def _dead_letter(stream_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    context = text(fields.get(b"c", b""))
    return DeadLetter(
        entry_id=text(fields[b"id"]),
        reason=text(fields[b"reason"]),
        context_index=int(context) if context else None,
        examples=int(fields.get(b"n", 0)),
        dead_lettered_at=entry_id_key(text(stream_id))[0] / 1000,
    )
