"""The context bank grows without a rebuild and gathers per batch."""

import pytest
import torch

from psp_core.contexts import ContextSpec
from psp_core.models import ModelConfig, build_model


def test_adding_contexts_keeps_existing_answers() -> None:
    model = build_model(ModelConfig(kind="binary", hidden=(16,)))
    model.bank.extend([ContextSpec(seed=s) for s in (10, 11)])
    x = torch.randn(4, 64)
    index = torch.tensor([0, 1, 1, 0])
    before = model(x, index)
    assert model.add_context(ContextSpec(seed=12)) == 2
    assert torch.equal(model(x, index), before)
    assert model(x, torch.full((4,), 2)).shape == (4, 10)
    assert len(model.bank) == 3


def test_every_layer_gathers_one_vector_per_row() -> None:
    model = build_model(ModelConfig(kind="complex", hidden=(16,)))
    model.bank.extend([ContextSpec(seed=s) for s in range(3)])
    gathered = model.bank.layers[0].gather(torch.tensor([2, 0, 2]))
    assert gathered.shape == (3, 128)
    assert torch.equal(gathered[0], gathered[2]) and not torch.equal(gathered[0], gathered[1])


def test_bytes_per_context_sums_layers() -> None:
    model = build_model(ModelConfig(kind="binary", input_shape=(64,), hidden=(32, 16)))
    assert model.bank.bytes_per_context() == 4 * (64 + 32 + 16)
    onepower = build_model(ModelConfig(kind="onepower", input_shape=(64,), hidden=(32, 16)))
    # One exponent per layer, and its cached (cos, -sin) vector.
    assert onepower.bank.bytes_per_context() == 8 * 3 + 8 * (64 + 32 + 16)


def test_kind_mismatch_and_bad_rows_are_rejected() -> None:
    model = build_model(ModelConfig(kind="onepower", hidden=(8,)))
    with pytest.raises(ValueError, match="power"):
        model.add_context(ContextSpec(seed=1))
    model.add_context(ContextSpec(power=0.5))
    with pytest.raises(IndexError, match=r"\[0, 1\)"):
        model.bank.check_index(torch.tensor([0, 1]))
    model.bank.check_index(torch.tensor([0, 0]))


def test_forward_refuses_a_row_past_the_last_context() -> None:
    model = build_model(ModelConfig(kind="complex", input_shape=(4,), hidden=(8,)))
    model.bank.extend([ContextSpec(seed=1), ContextSpec(seed=2)])  # the table has room for 8
    with pytest.raises(IndexError, match=r"context row 5 is out of range: the bank holds 2"):
        model(torch.zeros(2, 4), torch.tensor([0, 5]))
    with pytest.raises(IndexError, match=r"context row -1 is out of range"):
        model(torch.zeros(1, 4), torch.tensor([-1]))
    assert model(torch.zeros(2, 4), torch.tensor([0, 1])).shape == (2, 10)


def test_prepared_contexts_match_contexts_extended_directly() -> None:
    config = ModelConfig(kind="complex", input_shape=(4,), hidden=(8,))
    direct, prepared = build_model(config), build_model(config)
    specs = [ContextSpec(seed=s) for s in (3, 9, 27)]
    direct.bank.extend(specs)
    ready = prepared.bank.prepare(specs)
    assert len(prepared.bank) == 0  # preparing changes nothing
    assert list(prepared.bank.append_prepared(ready)) == [0, 1, 2]
    x = torch.randn(3, 4)
    rows = torch.tensor([0, 1, 2])
    assert torch.equal(direct(x, rows), prepared(x, rows))


@pytest.mark.parametrize("kind", ["binary", "complex", "onepower", "rotation"])
def test_reserved_room_takes_the_next_contexts_without_growing(kind: str) -> None:
    model = build_model(ModelConfig(kind=kind, input_shape=(8,), hidden=(4,)))

    def spec(n: int) -> ContextSpec:
        return ContextSpec(power=n / 3) if kind == "onepower" else ContextSpec(seed=n)

    model.bank.extend([spec(n) for n in range(8)])  # the tables are full
    x, index = torch.randn(8, 8), torch.arange(8)
    before = model(x, index)

    model.bank.reserve(5)
    tables = [layer.table for layer in model.bank.layers]
    assert all(len(table) >= 13 for table in tables)
    assert torch.equal(model(x, index), before)  # the rows came along
    model.bank.extend([spec(n) for n in range(8, 13)])
    assert all(layer.table is table for layer, table in zip(model.bank.layers, tables, strict=True))

    fresh = build_model(ModelConfig(kind=kind, input_shape=(8,), hidden=(4,)))
    fresh.bank.extend([spec(n) for n in range(13)])
    every = torch.arange(13)
    assert torch.equal(model(torch.ones(13, 8), every), fresh(torch.ones(13, 8), every))


def test_a_context_placed_in_a_reused_row_answers_as_if_it_were_appended() -> None:
    config = ModelConfig(kind="complex", input_shape=(8,), hidden=(16,))
    reused, appended = build_model(config), build_model(config)
    reused.bank.extend([ContextSpec(seed=s) for s in (1, 2, 3)])
    appended.bank.extend([ContextSpec(seed=s) for s in (1, 9, 3)])
    reused.bank.place_prepared([1], reused.bank.prepare([ContextSpec(seed=9)]))
    assert len(reused.bank) == 3 and reused.bank.specs == appended.bank.specs
    x, rows = torch.randn(6, 8), torch.tensor([0, 1, 2, 1, 0, 2])
    with torch.no_grad():
        assert torch.equal(reused(x, rows), appended(x, rows))
    with pytest.raises(ValueError, match="need as many rows"):
        reused.bank.place_prepared([0, 1], reused.bank.prepare([ContextSpec(seed=4)]))
