"""Queue entry ids and their order.

Entry ids have the Redis Streams form `"<milliseconds>-<sequence>"` in every queue
implementation. The queue, the trainer and the registry (which keeps the newest applied id)
all compare them, so the comparison lives here, below all three.
"""

from __future__ import annotations


def entry_id_key(entry_id: str) -> tuple[int, int]:
    """Orders entry ids: `"1700000000000-3"` -> `(1700000000000, 3)`."""
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)
