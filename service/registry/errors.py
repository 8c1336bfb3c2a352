"""The registry's refusals of a registration; each message says what to send instead."""

from __future__ import annotations

from service.registry.models import ContextRow


class RegistryError(Exception):
    """Base class of the registry's errors; the message says what to send instead."""


class InvalidContextParameters(RegistryError, ValueError):
    """The key, seed or power does not fit the model's context kind (an HTTP 422)."""


class ContextConflict(RegistryError):
    """A live context already has this key with a different seed or power (an HTTP 409).

    Attributes:
        key: The conflicting key.
        existing: The live row that holds the key.
    """

    def __init__(self, message: str, *, key: str, existing: ContextRow) -> None:
        super().__init__(message)
        self.key = key
        self.existing = existing


class ShardsFull(RegistryError):
    """Every shard holds its capacity of live contexts (an HTTP 409); nothing was written."""


class ContextParameterTaken(RegistryError):
    """A requested seed or power belongs, or lies too close, to another context (an HTTP 409).

    The message never names the other context's key: it may belong to another tenant.
    """
