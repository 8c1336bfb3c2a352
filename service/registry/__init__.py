"""The context registry: which contexts exist, their seeds or powers, and their counters."""

from service.registry.counters import add_training_counts
from service.registry.database import (
    make_engine,
    make_session_factory,
    normalize_database_url,
    ping,
)
from service.registry.errors import ContextConflict, InvalidContextParameters, RegistryError
from service.registry.migrate import downgrade, upgrade
from service.registry.models import KEY_MAX_LENGTH, KEY_PATTERN, Base, ContextRow
from service.registry.parameters import MAX_BULK_CONTEXTS, SEED_LIMIT, ContextItem
from service.registry.queries import (
    count_live_contexts,
    get_context,
    list_contexts,
    live_keys,
    retire_context,
    retired_since,
)
from service.registry.registration import create_context, create_contexts

__all__ = [
    "KEY_MAX_LENGTH",
    "KEY_PATTERN",
    "MAX_BULK_CONTEXTS",
    "SEED_LIMIT",
    "Base",
    "ContextConflict",
    "ContextItem",
    "ContextRow",
    "InvalidContextParameters",
    "RegistryError",
    "add_training_counts",
    "count_live_contexts",
    "create_context",
    "create_contexts",
    "downgrade",
    "get_context",
    "list_contexts",
    "live_keys",
    "make_engine",
    "make_session_factory",
    "normalize_database_url",
    "ping",
    "retire_context",
    "retired_since",
    "upgrade",
]
