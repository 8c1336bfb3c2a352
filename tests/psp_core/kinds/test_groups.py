"""Grouping a batch's rows by context and putting the results back in order."""

import torch

from psp_core.kinds.groups import RowGroups


def test_row_groups_split_and_merge_back_in_order() -> None:
    index = torch.tensor([4, 1, 4, 0, 1, 4])
    groups = RowGroups.of(index)
    assert groups.contexts.tolist() == [0, 1, 4] and groups.sizes == [1, 2, 3]
    x = torch.arange(6.0).unsqueeze(1)
    pieces = groups.split(x)
    assert [p.squeeze(1).tolist() for p in pieces] == [[3.0], [1.0, 4.0], [0.0, 2.0, 5.0]]
    assert torch.equal(groups.merge([p * 10 for p in pieces]), x * 10)
