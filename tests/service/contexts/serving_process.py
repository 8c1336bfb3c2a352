"""One serving process's view of the registry, for the tests of lookups and polls."""

from __future__ import annotations

import torch
from sqlalchemy import Engine

from psp_core import ModelConfig, TrainingConfig
from service.contexts.service import ContextService
from service.model.host import ModelHost
from service.registry.store import RegistryStore


def serving_process(engine: Engine) -> ContextService:
    """A small model host of its own and the contexts it maps, over the registry `engine`."""
    host = ModelHost(
        ModelConfig(kind="complex", input_shape=(8,), hidden=(4,)),
        TrainingConfig(),
        torch.device("cpu"),
    )
    return ContextService(RegistryStore(engine, "complex"), {0: host})
