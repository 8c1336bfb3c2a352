"""The Redis key layout, which deployments and tools rely on."""

from __future__ import annotations

from service.queue.keys import ShardKeys


def test_shard_keys_layout() -> None:
    keys = ShardKeys("psp:", 3)

    assert keys.stream == "psp:train:3"
    assert keys.group == "trainers"
    assert keys.pending_examples == "psp:train:3:pending-examples"
    assert keys.applied == "psp:train:3:applied"
    assert keys.applied_channel == "psp:applied:3"
    assert keys.model_channel == "psp:model:3"
    assert keys.put_token("abc") == "psp:train:put:abc"  # every shard's, the same key
    assert keys.pending_by_context == "psp:train:3:pending-by-context"
