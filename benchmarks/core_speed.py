"""Speed of the superposed layers, as ratios measured in one run.

(a) Forward throughput of a batch whose rows use all-distinct contexts ÷ the same batch in one
    context (goal ≥ 0.90), per kind; beside it, 1024 separate `nn.Module`s (one per row) ÷ one
    module, the cost superposition avoids.
(c) The ratio of (a) for a ConvNet (`--conv-shape`, `--conv-channels`): rows over all-distinct
    contexts, and over 8 contexts, ÷ one context (goal ≥ 0.90). `--rotation` adds rotation
    contexts to (a) and (c) (M×M per context: slow to generate, memory-heavy).
(b) Forward+backward time of the superposed MLP ÷ a plain `nn.Linear` MLP of the same shape,
    beside its GEMM floor (`gemm_floor`: the ratio its GEMMs' multiply-adds alone set): binary
    (goal ≤ 1.15), complex and onepower (goal: ratio ÷ floor ≤ 1.15), and the other kinds for
    reference.
    Complex kinds are timed twice: with complex activations (the default, three real GEMMs per
    weight each way) and keeping each layer's real part (`complex_activations=False`, one GEMM
    of twice the inner width).

Run: `python benchmarks/core_speed.py [--device cuda] [--rows 1024] [--hidden 1024,1024]
[--rotation] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch
from torch import nn

from psp_core import KINDS_WITH_CONTEXTS, ContextSpec, ModelConfig, build_model, kind_class
from psp_core.models import SuperposedModel

# Slow to generate and memory-heavy (M×M per context): timed only with `--rotation`.
ON_REQUEST = ("rotation",)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of `fn` after warm-up, synchronising the GPU around each call."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    timed: Mapping[str, Callable[[], object]], device: torch.device, repeats: int, rounds: int = 3
) -> dict[str, float]:
    """The median wall time of each of `timed`, measured in `rounds` interleaved rounds so that
    drift in the machine's load hits every one alike."""
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(rounds):
        for name, fn in timed.items():
            times[name].append(median_seconds(fn, device, repeats))
    return {name: statistics.median(values) for name, values in times.items()}


def plain_mlp(widths: list[int], classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], classes))
    return nn.Sequential(*layers)


def superposed(
    kind: str,
    inputs: int,
    hidden: tuple[int, ...],
    contexts: int,
    device: torch.device,
    complex_activations: bool = True,
) -> nn.Module:
    config = ModelConfig(
        kind=kind, input_shape=(inputs,), hidden=hidden, complex_activations=complex_activations
    )
    return with_contexts(build_model(config, device), kind, contexts)


def with_contexts(model: SuperposedModel, kind: str, contexts: int) -> SuperposedModel:
    uses_power = kind_class(kind).uses_power
    specs = [
        ContextSpec(power=float(i)) if uses_power else ContextSpec(seed=i) for i in range(contexts)
    ]
    model.bank.extend(specs)
    return model


def timed_kinds(args: argparse.Namespace) -> list[str]:
    """Every kind with contexts, less those timed only on request."""
    return [kind for kind in KINDS_WITH_CONTEXTS if args.rotation or kind not in ON_REQUEST]


FIGURES: dict[str, float] = {}
"""Every ratio printed, by name, for `--json`."""


def mixed_context_ratios(args: argparse.Namespace, device: torch.device) -> None:
    rows, inputs, hidden = args.rows, args.inputs, args.hidden
    x = torch.randn(rows, inputs, device=device)
    distinct = torch.arange(rows, device=device)
    single = torch.zeros(rows, dtype=torch.long, device=device)
    print(f"(a) forward, {rows} rows, MLP {inputs}-{'-'.join(map(str, hidden))}-10, {device}")
    print(f"    {'kind':<10} {'one ctx rows/s':>15} {'distinct rows/s':>16} {'ratio':>7}")
    with torch.inference_mode():
        for kind in timed_kinds(args):
            model = superposed(kind, inputs, hidden, rows, device)
            medians = interleaved_medians(
                {"one": partial(model, x, single), "mixed": partial(model, x, distinct)},
                device,
                max(3, args.repeats // 3),
            )
            t_one, t_mix = medians["one"], medians["mixed"]
            FIGURES[f"mixed_{kind}"] = t_one / t_mix
            print(
                f"    {kind:<10} {rows / t_one:>15,.0f} {rows / t_mix:>16,.0f} "
                f"{t_one / t_mix:>7.3f}   (goal >= 0.90)"
            )
        one = plain_mlp([inputs, *hidden], 10).to(device)
        separate = [plain_mlp([inputs, *hidden], 10).to(device) for _ in range(rows)]
        t_one = median_seconds(lambda: one(x), device, args.repeats)
        t_sep = median_seconds(
            lambda: [m(x[i : i + 1]) for i, m in enumerate(separate)],
            device,
            max(3, args.repeats // 5),
        )
        print(
            f"    {'separate':<10} {rows / t_one:>15,.0f} {rows / t_sep:>16,.0f} "
            f"{t_one / t_sep:>7.3f}   ({rows} nn.Modules, one row each, ÷ one module)"
        )


def conv_mixed_context_ratios(args: argparse.Namespace, device: torch.device) -> None:
    rows, shape, channels = args.conv_rows, args.conv_shape, args.conv_channels
    x = torch.randn(rows, *shape, device=device)
    indices = {
        "distinct": torch.arange(rows, device=device),
        "8 ctx": torch.arange(rows, device=device) % 8,
    }
    single = torch.zeros(rows, dtype=torch.long, device=device)
    print(f"(c) forward, {rows} rows, ConvNet {shape} channels {channels}, {device}")
    print(f"    {'kind':<10} {'one ctx rows/s':>15} {'distinct':>9} {'8 ctx':>7}")
    with torch.inference_mode():
        for kind in timed_kinds(args):
            config = ModelConfig(kind=kind, arch="convnet", input_shape=shape, hidden=channels)
            model = with_contexts(build_model(config, device), kind, rows)
            timed = {"one": partial(model, x, single)}
            timed |= {name: partial(model, x, index) for name, index in indices.items()}
            medians = interleaved_medians(timed, device, 5)
            t_one = medians["one"]
            ratios = {name: t_one / medians[name] for name in indices}
            FIGURES[f"conv_mixed_{kind}"] = ratios["distinct"]
            FIGURES[f"conv_8ctx_{kind}"] = ratios["8 ctx"]
            print(
                f"    {kind:<10} {rows / t_one:>15,.0f} {ratios['distinct']:>9.3f} "
                f"{ratios['8 ctx']:>7.3f}   (goal >= 0.90)"
            )


def gemm_floor(widths: list[int], complex_products: bool, complex_activations: bool) -> float:
    """The multiply-adds of a superposed MLP's forward and backward GEMMs ÷ a plain MLP's of
    the same widths: the least its step can cost, as a ratio, if everything else were free.

    A plain layer costs one product each way (forward, weight gradient, and input gradient
    except in the first layer). A complex product costs three real ones (Gauss's), and a layer
    whose output is only the real part of a complex product costs two: the last layer with
    complex activations, every layer without them.
    """
    plain = superposed = 0
    layers = list(itertools.pairwise(widths))
    for number, (fan_in, fan_out) in enumerate(layers):
        products = 2 if number == 0 else 3
        plain += products * fan_in * fan_out
        if not complex_products:
            per_product = 1
        elif complex_activations and number < len(layers) - 1:
            per_product = 3
        else:
            per_product = 2
        superposed += per_product * products * fan_in * fan_out
    return superposed / plain


def train_step_ratios(args: argparse.Namespace, device: torch.device) -> None:
    batch, inputs, hidden = args.batch, args.inputs, args.hidden
    x = torch.randn(batch, inputs, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    index = torch.arange(batch, device=device) % 64
    loss_fn = nn.CrossEntropyLoss()
    plain = plain_mlp([inputs, *hidden], 10).to(device)

    def plain_step() -> None:
        plain.zero_grad(set_to_none=True)
        loss_fn(plain(x), y).backward()

    print(f"(b) forward+backward, batch {batch}, mixed over 64 contexts, ÷ plain nn.Linear MLP")
    # Complex and one-power: within 15 % of the floor their complex products set.
    goals = {"binary": "(goal <= 1.15)"}
    variants = [(kind, True) for kind in timed_kinds(args)]
    variants += [(kind, False) for kind in timed_kinds(args) if kind_class(kind).is_complex]
    for kind, complex_activations in variants:
        model = superposed(kind, inputs, hidden, 64, device, complex_activations)
        name = kind if complex_activations else f"{kind}, real part"

        def psp_step(m: nn.Module = model) -> None:
            m.zero_grad(set_to_none=True)
            loss_fn(m(x, index), y).backward()

        medians = interleaved_medians({"plain": plain_step, "psp": psp_step}, device, args.repeats)
        ratio = medians["psp"] / medians["plain"]
        floor = gemm_floor([inputs, *hidden, 10], kind_class(kind).is_complex, complex_activations)
        figure = f"train_{kind}" if complex_activations else f"train_{kind}_real_part"
        FIGURES[figure] = ratio
        FIGURES[f"{figure}_over_floor"] = ratio / floor
        print(
            f"    {name:<19} plain {medians['plain'] * 1e3:8.2f} ms  "
            f"psp {medians['psp'] * 1e3:8.2f} ms  ratio {ratio:6.3f}  "
            f"GEMM floor {floor:5.3f}  ratio ÷ floor {ratio / floor:5.3f}  "
            f"{goals.get(kind, '(goal: ÷ floor <= 1.15)') if complex_activations else ''}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--inputs", type=int, default=784)
    parser.add_argument(
        "--hidden", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1024, 1024)
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--rotation",
        action="store_true",
        help="also time rotation contexts (M x M per context: slow, memory-heavy)",
    )
    parser.add_argument("--conv-rows", type=int, default=256)
    parser.add_argument(
        "--conv-shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1, 28, 28)
    )
    parser.add_argument(
        "--conv-channels", type=lambda s: tuple(int(v) for v in s.split(",")), default=(32, 64)
    )
    parser.add_argument("--parts", default="a,b,c", help="comma-separated subset of a, b, c")
    parser.add_argument("--json", default=None, help="save every ratio to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    parts = set(args.parts.split(","))
    if "a" in parts:
        mixed_context_ratios(args, device)
    if "c" in parts:
        conv_mixed_context_ratios(args, device)
    if "b" in parts:
        train_step_ratios(args, device)
    if args.json:
        Path(args.json).write_text(json.dumps(FIGURES, indent=2) + "\n")


if __name__ == "__main__":
    main()
