"""One-power contexts: only the exponents are kept, their vectors cached on append."""

import torch

from psp_core.contexts import ContextSpec, onepower_phases, phases_to_real_pair
from psp_core.kinds import OnePowerContexts


def test_onepower_keeps_only_exponents() -> None:
    table = OnePowerContexts(model_seed=0, layer_index=0, dim=256, local_mix=False)
    table.append_rows(table.make_rows([ContextSpec(power=float(i)) for i in range(1000)]))
    assert table.table.numel() <= 2048 and table.base_phases.numel() == 256


def test_onepower_vectors_are_cached_on_append_and_match_the_exponents() -> None:
    table = OnePowerContexts(model_seed=0, layer_index=1, dim=16, local_mix=True)
    table.append_rows(table.make_rows([ContextSpec(power=0.5 * i) for i in range(5)]))
    table.append_rows(table.make_rows([ContextSpec(power=7.25)]))
    table.append_rows(
        table.make_rows([ContextSpec(power=float(i)) for i in range(10)])
    )  # grows past 8 rows
    index = torch.tensor([0, 5, 15, 3])
    expected = phases_to_real_pair(
        onepower_phases(table.base_phases, table.table[index], local_mix=True)
    )
    assert torch.equal(table.gather(index), expected)
    assert len(table.vectors) >= 16
