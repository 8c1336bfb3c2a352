"""Superposed networks built from a dataclass config: an MLP and a small ConvNet.

Every Linear and Conv2d of the plain architecture is superposed (paper eq. 9 and 10). With kind
`none` the same architecture runs without contexts, as the baseline.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from psp_core.bank import ContextBank
from psp_core.contexts import ContextSpec
from psp_core.kinds import LayerContexts, kind_class
from psp_core.layers import batch_rows, superpose
from psp_core.pooling import MaxPool2x2

INPUT_SCALINGS = ("context", "none")


@dataclass(frozen=True)
class ModelConfig:
    """What a superposed network is; two configs that are equal build identical models."""

    kind: str = "complex"  # a name in psp_core.kinds.CONTEXT_KINDS; none: the plain baseline
    arch: str = "mlp"  # mlp or convnet
    input_shape: tuple[int, ...] = (64,)  # one example, e.g. (784,) or (1, 28, 28)
    hidden: tuple[int, ...] = (256, 256)  # hidden widths (mlp) or channels (convnet)
    num_classes: int = 10  # width of the output layer
    seed: int = 0  # weight initialisation and the one-power base phases
    local_mix: bool = False  # paper eq. 7: average each context's phases with its neighbours'
    # Complex and one-power kinds carry complex activations between layers (ReLU on the real and
    # imaginary parts) instead of keeping each layer's real part; the real kinds have none.
    complex_activations: bool = True
    # `context`: each context's inputs are standardised by its own running statistics and each
    # row's size is bounded (psp_core.scaling), so no context weighs more than its share of the
    # shared weights whatever the scale of its inputs; `none`: inputs go in as they are.
    input_scaling: str = "context"

    def __post_init__(self) -> None:
        kind = kind_class(self.kind)
        if self.input_scaling not in INPUT_SCALINGS:
            raise ValueError(
                f"input_scaling must be one of {', '.join(INPUT_SCALINGS)}, not "
                f"{self.input_scaling!r}"
            )
        if self.arch not in ("mlp", "convnet"):
            raise ValueError(f"arch must be 'mlp' or 'convnet', not {self.arch!r}")
        if self.arch == "convnet" and len(self.input_shape) != 3:
            raise ValueError("a convnet needs input_shape (channels, height, width)")
        if self.local_mix and not kind.is_complex:
            raise ValueError("local_mix applies to complex and onepower contexts only")

    @property
    def context_kind(self) -> type[LayerContexts]:
        """The class of the kind (see `psp_core.kinds`)."""
        return kind_class(self.kind)

    @property
    def carries_complex(self) -> bool:
        """Whether the hidden activations are complex (see `complex_activations`)."""
        return self.complex_activations and self.context_kind.is_complex

    @property
    def input_size(self) -> int:
        """Floats in one flattened example."""
        return math.prod(self.input_shape)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(
            kind=data["kind"],
            arch=data["arch"],
            input_shape=tuple(data["input_shape"]),
            hidden=tuple(data["hidden"]),
            num_classes=int(data["num_classes"]),
            seed=int(data["seed"]),
            local_mix=bool(data.get("local_mix", False)),
            # Checkpoints from before the option kept each layer's real part.
            complex_activations=bool(data.get("complex_activations", False)),
            # Checkpoints from before the option fed inputs in as they were.
            input_scaling=str(data.get("input_scaling", "none")),
        )


class SuperposedModel(nn.Module):
    """A plain `body` whose Linear and Conv2d layers are superposed, plus their context bank.

    The body may nest containers and custom blocks: its layers are superposed at any depth, and
    `forward` runs it as a plain module inside `batch_rows`, which hands every superposed layer
    the batch's context rows.

    Attributes:
        config: The config the model was built from.
        bank: The contexts; `add_context` registers one without rebuilding the model.
    """

    def __init__(self, config: ModelConfig, body: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.body = body
        layers = superpose(body, config.kind, model_seed=config.seed, local_mix=config.local_mix)
        self.bank = ContextBank(config.context_kind, [layer.contexts for layer in layers])
        if config.carries_complex:
            for position, layer in enumerate(layers):
                layer.set_complex_sides(
                    complex_input=position > 0, complex_output=position < len(layers) - 1
                )

    def forward(self, x: torch.Tensor, context_index: torch.Tensor) -> torch.Tensor:
        """Args:
            x: `(B, *input_shape)` or `(B, prod(input_shape))` real inputs.
            context_index: `(B,)` int64 bank rows, one per example; rows may differ.

        Returns:
            `(B, num_classes)` real logits.

        Raises:
            IndexError: A row of `context_index` names no registered context.
        """
        if self.config.context_kind.has_contexts:  # a plain network has no rows
            self.bank.check_index(context_index)
        x = x.reshape(x.shape[0], *self.config.input_shape)
        with batch_rows(context_index):
            logits: torch.Tensor = self.body(x)
        return logits

    def add_context(self, spec: ContextSpec) -> int:
        """Registers a context and returns its bank row."""
        return self.bank.add(spec)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def _mlp_body(config: ModelConfig) -> nn.Sequential:
    widths = [config.input_size, *config.hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], config.num_classes))
    return nn.Sequential(*layers)


def _convnet_body(config: ModelConfig) -> nn.Sequential:
    channels, height, width = config.input_shape
    layers: list[nn.Module] = []
    for out_channels in config.hidden:
        layers.append(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1))
        if min(height, width) >= 2:  # pool while there is space left to halve
            layers.append(MaxPool2x2())
            height, width = height // 2, width // 2
        # ReLU after the pooling: max and ReLU commute, and ReLU then touches a quarter of the
        # values, in place (max-pooling's backward needs its indices, not its output).
        layers.append(nn.ReLU(inplace=True))
        channels = out_channels
    layers += [nn.Flatten(), nn.Linear(channels * height * width, config.num_classes)]
    return nn.Sequential(*layers)


class SuperposedMLP(SuperposedModel):
    """Fully connected layers with ReLU, every one superposed."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, _mlp_body(config))


class SuperposedConvNet(SuperposedModel):
    """3x3 convolutions (each followed by 2x2 max-pooling, while there is room, and ReLU) and a
    linear classifier."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, _convnet_body(config))


def build_model(config: ModelConfig, device: torch.device | str = "cpu") -> SuperposedModel:
    """Builds the model deterministically from `config.seed` without touching the global RNG."""
    model_class = SuperposedMLP if config.arch == "mlp" else SuperposedConvNet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = model_class(config)
    return model.to(device)


def parameter_count(model: nn.Module) -> int:
    """Trainable real numbers in the model (a complex weight counts as two)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
