"""What a running process holds: the `Runtime` of its shards (`runtime`, `shard`,
`shard_roles`), start-up checks, supervised background tasks and the registry polls."""
