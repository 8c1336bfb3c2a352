"""2×2 max-pooling that is fast on the CPU when no gradient is needed.

On the CPU, `F.max_pool2d` always computes the int64 index of every maximum as well, and in
torch 2.13 it took 17 ms for 256 rows of 32 channels at 28 × 28, as long as the convolution
before it. Without autograd, the maximum of the four strided quarters of the input gives the
same values, NaN included, in a tenth of that time. With autograd, `F.max_pool2d` runs as
before: its indices are what the backward pass needs (recording the winning quarter of each
window in the forward pass instead made forward and backward together slower).
"""

from __future__ import annotations

import torch
from torch import nn


class MaxPool2x2(nn.MaxPool2d):
    """`nn.MaxPool2d(2)`: a 2×2 window, stride 2, the last odd row and column dropped."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        top = torch.maximum(x[..., 0:height:2, 0:width:2], x[..., 0:height:2, 1:width:2])
        bottom = torch.maximum(x[..., 1:height:2, 0:width:2], x[..., 1:height:2, 1:width:2])
        return torch.maximum(top, bottom, out=top)
