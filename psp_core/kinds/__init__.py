"""The context kinds, one `LayerContexts` subclass each, and the registry that names them.

Every superposed layer holds an instance of its kind as `layer.contexts`: the table of its
contexts and the code that binds them to a batch. Nothing else in `psp_core` asks which kind it
has; it asks the class (`has_contexts`, `uses_power`, `is_complex`) or calls its methods.

To add a kind: subclass `LayerContexts` in a module of this package (set `kind`, implement
`row_shape`, `make_row`, `linear` and `bound_weights`, and `check_spec` when a context is not
a seed), then list the class in `_CLASSES`. Its name then appears in `CONTEXT_KINDS`, which
the configs, the service's settings and the benchmarks accept.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from psp_core.kinds.base import LayerContexts
from psp_core.kinds.binary import BinaryContexts
from psp_core.kinds.complex import ComplexContexts
from psp_core.kinds.groups import RowGroups
from psp_core.kinds.none import NoContexts
from psp_core.kinds.onepower import OnePowerContexts
from psp_core.kinds.rotation import RotationContexts

_CLASSES: Final[tuple[type[LayerContexts], ...]] = (
    NoContexts,
    BinaryContexts,
    ComplexContexts,
    RotationContexts,
    OnePowerContexts,
)

KIND_CLASSES: Final[Mapping[str, type[LayerContexts]]] = MappingProxyType(
    {cls.kind: cls for cls in _CLASSES}
)
"""Each kind's name mapped to its class."""

CONTEXT_KINDS: Final[tuple[str, ...]] = tuple(KIND_CLASSES)
"""The names of all kinds, `none` (the plain model without contexts) included."""

KINDS_WITH_CONTEXTS: Final[tuple[str, ...]] = tuple(
    name for name, cls in KIND_CLASSES.items() if cls.has_contexts
)
"""The names of the kinds that superpose models, i.e. all but `none`."""


def kind_class(name: str) -> type[LayerContexts]:
    """The class of the kind called `name`.

    Raises:
        ValueError: No kind has that name; the message lists the names there are.
    """
    try:
        return KIND_CLASSES[name]
    except KeyError:
        raise ValueError(
            f"unknown context kind {name!r}; expected one of {', '.join(CONTEXT_KINDS)}"
        ) from None


__all__ = [
    "CONTEXT_KINDS",
    "KINDS_WITH_CONTEXTS",
    "KIND_CLASSES",
    "BinaryContexts",
    "ComplexContexts",
    "LayerContexts",
    "NoContexts",
    "OnePowerContexts",
    "RotationContexts",
    "RowGroups",
    "kind_class",
]
