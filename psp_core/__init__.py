"""Parameter Superposition (Cheung et al., 2019) in PyTorch: many models in one set of weights.

Each linear or convolutional layer computes `W (c(k) ⊙ x)`, where the context `c(k)` recalls
model `k` from the shared `W`. A batch may mix contexts freely and is still one GEMM.
"""

from psp_core.bank import ContextBank
from psp_core.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from psp_core.contexts import ContextSpec
from psp_core.kinds import CONTEXT_KINDS, KINDS_WITH_CONTEXTS, LayerContexts, kind_class
from psp_core.layers import SuperposedConv2d, SuperposedLayer, SuperposedLinear, superpose
from psp_core.learner import OnlineLearner, PreparedStep, StepResult, TrainingConfig
from psp_core.models import (
    ModelConfig,
    SuperposedConvNet,
    SuperposedMLP,
    SuperposedModel,
    build_model,
    parameter_count,
)

__all__ = [
    "CONTEXT_KINDS",
    "KINDS_WITH_CONTEXTS",
    "CheckpointError",
    "ContextBank",
    "ContextSpec",
    "LayerContexts",
    "ModelConfig",
    "OnlineLearner",
    "PreparedStep",
    "StepResult",
    "SuperposedConv2d",
    "SuperposedConvNet",
    "SuperposedLayer",
    "SuperposedLinear",
    "SuperposedMLP",
    "SuperposedModel",
    "TrainingConfig",
    "build_model",
    "kind_class",
    "load_checkpoint",
    "parameter_count",
    "restore_checkpoint",
    "save_checkpoint",
    "superpose",
]
