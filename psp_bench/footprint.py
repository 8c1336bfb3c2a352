"""What each method costs in parameters and memory, computed from its configuration.

Weights count as float32 (4 bytes per real; a complex weight is two reals). Optimiser state
(SGD momentum) is the same multiple of the weights for every method and is left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from psp_bench.methods import Method
from psp_core import ModelConfig, build_model, parameter_count

FLOAT_BYTES = 4


@dataclass(frozen=True)
class Footprint:
    """The memory a method holds after a run.

    Attributes:
        parameters: Trainable reals over all of the method's networks.
        bytes_per_context: Memory added by one more context (for `separate`, one more network).
        contexts: Contexts (or networks) the run created.
        total_bytes: Weights, context tables and the method's own state (EWC: anchor and Fisher).
    """

    parameters: int
    bytes_per_context: int
    contexts: int
    total_bytes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def footprint(method: Method, config: ModelConfig, contexts: int) -> Footprint:
    """The footprint of `method` on architecture `config` after creating `contexts` contexts."""
    if method.family == "psp":
        model = build_model(method.architecture(config))
        params = parameter_count(model)
        per_context = model.bank.bytes_per_context()
        return Footprint(
            params, per_context, contexts, FLOAT_BYTES * params + contexts * per_context
        )
    plain = parameter_count(build_model(replace(config, kind="none", local_mix=False)))
    if method.family == "separate":
        return Footprint(
            contexts * plain, FLOAT_BYTES * plain, contexts, contexts * FLOAT_BYTES * plain
        )
    # Online EWC keeps the weights, the anchor and the running Fisher: three copies, any T.
    return Footprint(plain, 0, contexts, 3 * FLOAT_BYTES * plain)
