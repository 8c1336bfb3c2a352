"""Where a convolution over all-distinct contexts loses time, layer by layer, in one run.

`core_speed.py` (c) times the whole ConvNet. This script takes each superposed convolution of
the same ConvNet, feeds it the input it gets in that network, and times it five ways, each as a
ratio of the first (higher is faster; 1.0 is one context's speed):

- `one context`: the layer with every row in one context (one `F.conv2d`, one bound kernel);
- `all-distinct`: the layer with every row in its own context (what the service runs);
- `grouped, one kernel`: the grouped convolutions of `all-distinct` (blocks of the kind's rows
  per grouped convolution, a kernel per row), with one context's kernel copied into every row:
  no binding, so the cost of the grouped convolution alone;
- `conv per image`: one `F.conv2d` per row with one shared kernel: a kernel serving one image;
- `unfold + GEMM`: the context on the unfolded input instead of the kernel (`F.unfold`, one
  product with a per-row vector, one matrix product with the shared kernel), the other way to
  give every row its own context. For complex kinds the product with the context is a real one
  here, so this is a lower bound on its cost.

The last column is all-distinct ÷ the faster of `grouped, one kernel` and `conv per image`,
the convolutions of these rows that share one kernel (goal ≥ 0.9): what is left of the gap once
the CPU's own cost of convolving each image apart is set aside. `unfold + GEMM` is not among
them: it is not a convolution of the layer but a way around one, and for complex kinds a lower
bound on its cost.

If `grouped, one kernel` is as slow as `all-distinct`, binding is not where the time goes; if
`conv per image` is slower still, a convolution is fast on this device only when one kernel
serves many images, which no way of giving each row its own kernel provides. Before timing a
layer, the script checks that the two ways with one shared kernel give the layer's one-context
output.

Run: `python benchmarks/conv_kernels.py [--device cuda] [--rows 256] [--kinds binary,complex]
[--json PATH]`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from core_speed import interleaved_medians, with_contexts
from torch import nn

from psp_core import ModelConfig, build_model
from psp_core.layers import SuperposedConv2d

WAYS = ("one context", "all-distinct", "grouped, one kernel", "conv per image", "unfold + GEMM")
SHARED_KERNEL_CONVOLUTIONS = ("grouped, one kernel", "conv per image")
OVER_BEST_SHARED = "÷ best shared conv"
"""All-distinct ÷ the faster of the convolutions that share one kernel: the goal is >= 0.9."""


def layer_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[SuperposedConv2d, torch.Tensor]]:
    """Each superposed convolution of `model` with the input it receives for `x` (one context)."""
    seen: list[tuple[SuperposedConv2d, torch.Tensor]] = []

    def record(layer: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(layer, SuperposedConv2d)
        seen.append((layer, args[0]))

    convs = [m for m in model.modules() if isinstance(m, SuperposedConv2d)]
    handles = [conv.register_forward_pre_hook(record) for conv in convs]
    try:
        model(x, torch.zeros(len(x), dtype=torch.long, device=x.device))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def ways_of_convolving(
    layer: SuperposedConv2d, x: torch.Tensor
) -> dict[str, Callable[[], torch.Tensor]]:
    """The five ways of `WAYS`, each a call that convolves every row of `x`."""
    conv = layer.base_layer
    assert isinstance(conv, nn.Conv2d)
    padding = conv.padding
    assert not isinstance(padding, str), "the ConvNet pads by a number of pixels"
    rows, channels = x.shape[:2]
    one_index = torch.zeros(rows, dtype=torch.long, device=x.device)
    distinct_index = torch.arange(rows, device=x.device)
    weights, bias = layer.bound_weights(one_index[:1])
    kernel = weights[0].view(-1, channels, *conv.kernel_size)  # (N', C', kh, kw)
    convolve = partial(F.conv2d, stride=conv.stride, padding=padding)
    block = layer.contexts.ROWS_PER_GROUPED_CONV if x.device.type == "cpu" else rows
    row_vectors = torch.randn(rows, weights.shape[2], 1, device=x.device).sign()

    def grouped_one_kernel() -> torch.Tensor:
        pieces = []
        for start in range(0, rows, block):
            part = x[start : start + block]
            kernels = kernel.repeat(len(part), 1, 1, 1)
            part_bias = None if bias is None else bias.repeat(len(part))
            flat = part.flatten(0, 1).unsqueeze(0)
            out = convolve(flat, kernels, part_bias, groups=len(part))
            pieces.append(out.view(len(part), -1, *out.shape[2:]))
        return torch.cat(pieces)

    def conv_per_image() -> torch.Tensor:
        return torch.cat([convolve(x[i : i + 1], kernel, bias) for i in range(rows)])

    def unfold_and_gemm() -> torch.Tensor:
        columns = F.unfold(x, conv.kernel_size, padding=padding, stride=conv.stride)
        return torch.matmul(weights[0], columns.mul_(row_vectors))

    return {
        "one context": partial(layer, x, one_index),
        "all-distinct": partial(layer, x, distinct_index),
        "grouped, one kernel": grouped_one_kernel,
        "conv per image": conv_per_image,
        "unfold + GEMM": unfold_and_gemm,
    }


def check_one_kernel_ways(ways: dict[str, Callable[[], torch.Tensor]]) -> None:
    """Checks that the ways with one shared kernel compute what the layer computes for one
    context, so that they time the same convolution."""
    expected = ways["one context"]()
    for way in ("grouped, one kernel", "conv per image"):
        torch.testing.assert_close(ways[way](), expected, rtol=1e-4, atol=1e-4, msg=way)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--kinds", default="binary,complex,onepower")
    parser.add_argument(
        "--shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1, 28, 28)
    )
    parser.add_argument(
        "--channels", type=lambda s: tuple(int(v) for v in s.split(",")), default=(32, 64)
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="save every ratio to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {device}")
    print(f"{args.rows} rows, ConvNet {args.shape} channels {args.channels}; ÷ one context")
    print(
        f"    {'kind':<9} {'layer input':<16} {'one ctx ms':>10} "
        + " ".join(f"{way:>19}" for way in (*WAYS[1:], OVER_BEST_SHARED))
    )
    figures: dict[str, dict[str, float]] = {}
    x = torch.randn(args.rows, *args.shape, device=device)
    with torch.inference_mode():
        for kind in args.kinds.split(","):
            config = ModelConfig(
                kind=kind, arch="convnet", input_shape=args.shape, hidden=args.channels
            )
            model = with_contexts(build_model(config, device), kind, args.rows)
            for position, (layer, layer_x) in enumerate(layer_inputs(model, x)):
                ways = ways_of_convolving(layer, layer_x)
                check_one_kernel_ways(ways)
                medians = interleaved_medians(ways, device, args.repeats)
                one = medians["one context"]
                ratios = {way: one / medians[way] for way in WAYS}
                ratios[OVER_BEST_SHARED] = ratios["all-distinct"] / max(
                    ratios[way] for way in SHARED_KERNEL_CONVOLUTIONS
                )
                figures[f"{kind} conv{position}"] = ratios
                shape = "x".join(str(v) for v in layer_x.shape[1:])
                print(
                    f"    {kind:<9} {shape:<16} {one * 1e3:>10.2f} "
                    + " ".join(f"{ratios[way]:>19.3f}" for way in WAYS[1:])
                    + f" {ratios[OVER_BEST_SHARED]:>19.3f}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
