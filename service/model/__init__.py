"""The hosted model: one superposed network per shard in memory (`host`), its lock, version and
health flag (`state`), the divergence guard, the answers' checks, and the steps run in a child
process (`step_client` in the API process, `step_child` in the child)."""
