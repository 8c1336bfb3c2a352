"""What each method costs in parameters and memory, computed from its configuration.

Weights count as float32 (4 bytes per real; a complex weight is two reals). Optimiser state
(SGD momentum) is the same multiple of the weights for every method and is left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from psp_bench.methods import LEARNED_CONTEXTS, Method
from psp_bench.tenant_models import TENANT_MODELS, GrowingTable
from psp_core import ContextSpec, ModelConfig, build_model, parameter_count

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
    if method.family in LEARNED_CONTEXTS:
        return _learned_contexts(method, config, contexts)
    if method.family == "river":
        return _river(config, contexts)
    plain = parameter_count(build_model(replace(config, kind="none", local_mix=False)))
    if method.family == "separate":
        return Footprint(
            contexts * plain, FLOAT_BYTES * plain, contexts, contexts * FLOAT_BYTES * plain
        )
    # Online EWC keeps the weights, the anchor and the running Fisher: three copies, any T.
    return Footprint(plain, 0, contexts, 3 * FLOAT_BYTES * plain)


def _learned_contexts(method: Method, config: ModelConfig, contexts: int) -> Footprint:
    """A shared plain network plus one learned row of numbers per context (`tenant_models`)."""
    model = TENANT_MODELS[method.family](replace(config, kind="none", local_mix=False))
    shared = parameter_count(model)  # no context registered yet: the shared weights only
    model.add_context(ContextSpec(seed=0))  # type: ignore[operator]
    per_context = sum(table.width for table in model.modules() if isinstance(table, GrowingTable))
    params = shared + contexts * per_context
    return Footprint(params, FLOAT_BYTES * per_context, contexts, FLOAT_BYTES * params)


def _river(config: ModelConfig, contexts: int) -> Footprint:
    """A softmax regression per context, its weights, biases and the scaler's mean and
    variance per input, counted as float32 (river keeps Python floats, several times that).
    An adaptive forest's trees grow with the data and are not counted here."""
    inputs = config.input_size
    per_context = (inputs + 1) * config.num_classes + 2 * inputs
    return Footprint(
        contexts * per_context,
        FLOAT_BYTES * per_context,
        contexts,
        FLOAT_BYTES * per_context * contexts,
    )
