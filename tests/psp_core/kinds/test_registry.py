"""The registry: one class per kind name, and the names everything else accepts."""

import pytest

from psp_core import CONTEXT_KINDS, KINDS_WITH_CONTEXTS
from psp_core.kinds import (
    KIND_CLASSES,
    BinaryContexts,
    ComplexContexts,
    NoContexts,
    OnePowerContexts,
    RotationContexts,
    kind_class,
)


def test_each_name_maps_to_the_class_that_carries_it() -> None:
    assert CONTEXT_KINDS == ("none", "binary", "complex", "rotation", "onepower")
    assert KINDS_WITH_CONTEXTS == ("binary", "complex", "rotation", "onepower")
    expected = [NoContexts, BinaryContexts, ComplexContexts, RotationContexts, OnePowerContexts]
    assert [kind_class(name) for name in CONTEXT_KINDS] == expected
    assert all(KIND_CLASSES[name].kind == name for name in CONTEXT_KINDS)


def test_what_each_kind_is() -> None:
    assert [kind_class(k).is_complex for k in CONTEXT_KINDS] == [False, False, True, False, True]
    assert [kind_class(k).uses_power for k in CONTEXT_KINDS] == [False, False, False, False, True]
    assert [kind_class(k).has_contexts for k in CONTEXT_KINDS] == [False, True, True, True, True]


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'quantum'; expected one of none, binary, complex"):
        kind_class("quantum")
