"""What every kind shares: the table that grows by doubling, its cost, and the spec check."""

import math

import pytest
import torch

from psp_core.contexts import ContextSpec
from psp_core.kinds import CONTEXT_KINDS, BinaryContexts, LayerContexts, kind_class


def _table(kind: str, dim: int) -> LayerContexts:
    return kind_class(kind)(model_seed=0, layer_index=0, dim=dim, local_mix=False)


def test_table_grows_by_doubling_and_keeps_rows() -> None:
    table = BinaryContexts(model_seed=0, layer_index=0, dim=4, local_mix=False)
    table.append_rows(table.make_rows([ContextSpec(seed=0)]))
    first = table.table[0].clone()
    table.append_rows(table.make_rows([ContextSpec(seed=i) for i in range(1, 20)]))
    assert len(table) == 20 and table.table.shape[0] >= 20
    assert torch.equal(table.table[0], first)
    assert table.bytes_per_context() == 16


@pytest.mark.parametrize(
    ("kind", "per_context"),
    [
        ("none", 0),
        ("binary", 4 * 10),
        ("complex", 8 * 10),
        ("rotation", 4 * 100),
        ("onepower", 8 + 8 * 10),  # the exponent and its cached vector
    ],
)
def test_bytes_per_context_per_kind(kind: str, per_context: int) -> None:
    assert _table(kind, 10).bytes_per_context() == per_context


@pytest.mark.parametrize("kind", CONTEXT_KINDS)
def test_rows_have_the_kinds_shape_and_are_not_in_the_state_dict(kind: str) -> None:
    table = _table(kind, 6)
    uses_power = table.uses_power
    table.append_rows(
        table.make_rows([ContextSpec(power=0.5) if uses_power else ContextSpec(seed=2)] * 3)
    )
    assert table.table[: len(table)].shape == (3, *table.row_shape())
    assert table.state_dict() == {}


def test_each_kind_checks_what_defines_its_contexts() -> None:
    with pytest.raises(ValueError, match="power"):
        kind_class("onepower").check_spec(ContextSpec(seed=1))
    with pytest.raises(ValueError, match="binary contexts are defined by an integer seed"):
        kind_class("binary").check_spec(ContextSpec(power=1.0))
    with pytest.raises(ValueError, match="finite"):
        kind_class("onepower").check_spec(ContextSpec(power=math.inf))
    with pytest.raises(ValueError, match="finite"):
        kind_class("none").check_spec(ContextSpec(power=math.nan))
    spec = ContextSpec(seed=3)
    assert kind_class("none").check_spec(spec) is spec
    assert kind_class("rotation").check_spec(spec) is spec
