"""The superposition continual-learning service: HTTP API, registry, queue, trainer and CLI."""
