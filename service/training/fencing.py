"""The refusal that a replaced shard writer meets, wherever it writes.

Each writer of a shard holds a fencing token, one above its predecessor's
(`service.registry.writers`). The registry's counts and the Redis queue's acknowledgements,
trims and set-asides remember the newest token they have seen and refuse older ones, so a writer
that stalled past its lease and was replaced changes nothing, even before it notices.
"""


class WriterFenced(Exception):
    """A newer writer claimed the shard: this writer's token is stale."""
