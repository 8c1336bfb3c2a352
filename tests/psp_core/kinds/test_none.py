"""The plain baseline: layers ignore their contexts and bind nothing."""

import torch
from torch import nn

from psp_core.contexts import ContextSpec
from psp_core.layers import SuperposedConv2d, SuperposedLinear


def test_plain_layers_run_their_wrapped_layer_whatever_the_rows() -> None:
    linear = SuperposedLinear(nn.Linear(4, 3), "none", model_seed=0, layer_index=0)
    conv = SuperposedConv2d(nn.Conv2d(2, 3, 3), "none", model_seed=0, layer_index=1)
    rows = torch.tensor([0, 1, 0, 1, 1])
    for layer, x in ((linear, torch.randn(5, 4)), (conv, torch.randn(5, 2, 6, 6))):
        layer.contexts.append_rows(
            layer.contexts.make_rows([ContextSpec(seed=1), ContextSpec(power=2.5)])
        )
        assert torch.equal(layer(x, rows), layer.base_layer(x))


def test_plain_bound_weights_are_the_weights_themselves() -> None:
    layer = SuperposedLinear(nn.Linear(4, 3), "none", model_seed=0, layer_index=0)
    layer.contexts.append_rows(layer.contexts.make_rows([ContextSpec(seed=1), ContextSpec(seed=2)]))
    weights, bias = layer.bound_weights(torch.tensor([0, 1]))
    assert weights.shape == (2, 3, 4)
    assert all(torch.equal(w, layer.base_layer.weight) for w in weights)
    assert bias is layer.base_layer.bias
