"""Which `PSP_` variables exist, and which of them every psp process of a deployment must share.

Used by the compose and the Kubernetes tests alike.
"""

from __future__ import annotations

from pydantic import BaseModel

from service.settings import Settings

PER_PROCESS = {
    "PSP_ROLE",
    "PSP_DEVICE",
    "PSP_METRICS_PORT",
    "PSP_QUEUE__SHARD",
    "PSP_CHECKPOINT__ADVERTISE_URL",
    "PSP_TORCH_THREADS",  # each role's share of the CPUs
}
"""Settings that legitimately differ between the API replicas and the workers."""


def settings_env_names(model: type[BaseModel] = Settings, prefix: str = "PSP_") -> set[str]:
    """Every environment variable `Settings` reads, nested groups included (`__` delimiter)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        names.add(env)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= settings_env_names(annotation, f"{env}__")
    return names


def leaf_env_names(model: type[BaseModel] = Settings, prefix: str = "PSP_") -> set[str]:
    """The variables of single values (no group such as `PSP_MODEL`)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= leaf_env_names(annotation, f"{env}__")
        else:
            names.add(env)
    return names


def shared_env_names() -> set[str]:
    """Every setting that the API replicas and the workers must receive with the same value."""
    return {name for name in leaf_env_names() if name not in PER_PROCESS}
