"""The single writer of each shard: the producer side (`intake`) and the `Trainer` that turns
queue entries into steps (`minibatches`, `steps`), checkpoints (`checkpointing`, `ledger`),
recovery and quarantine, deleted contexts forgotten, and the writer's lease and fencing."""
