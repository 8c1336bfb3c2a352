"""The settings of a continual-learning run, saved beside its results."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from psp_bench.baselines import EWCConfig
from psp_bench.datasets import Dataset
from psp_bench.methods import DEFAULT_METHODS
from psp_core import ModelConfig, TrainingConfig
from psp_core.replay import DEFAULT_REPLAY_ROWS


@dataclass(frozen=True)
class ContinualConfig:
    """Everything that defines a run; saved beside its results."""

    stream: str = "permuted-digits"  # one of streams.STREAMS, or "tenants"
    tasks: int = 10  # tasks per cycle (permutations, or slices of a revolution)
    steps_per_task: int = 500  # steps before the next task (or context) begins
    cycles: int = 1  # passes over all tasks; a rotating stream turns once per cycle
    methods: tuple[str, ...] = DEFAULT_METHODS  # names parsed by methods.Method.parse
    hidden: tuple[int, ...] = (256, 256)  # hidden widths of the MLP
    batch_size: int = 32  # rows per training step
    # The learning settings default to the service's (psp_core's TrainingConfig).
    optimizer: str = TrainingConfig.optimizer  # sgd, adam or rmsprop
    lr: float = TrainingConfig.lr  # step size
    momentum: float = TrainingConfig.momentum  # sgd and rmsprop momentum
    clip_norm: float | None = TrainingConfig.clip_norm  # global gradient norm; None: off
    replay_rows: int = DEFAULT_REPLAY_ROWS  # buffer of the -replay methods
    replay_per_step: int = TrainingConfig.replay_per_step  # rows a -replay method rehearses
    ewc_lambda: float = 10.0  # online EWC strength λ (stable over 50 tasks at lr 0.05)
    ewc_gamma: float = 1.0  # decay of the running Fisher at each consolidation
    ewc_samples: int = 256  # recent inputs of a finished task used for its Fisher
    eval_every: int = 0  # steps between task-0 evaluations; 0 gives steps_per_task // 10
    seed: int = 0  # weights, test split, permutations and minibatch order
    data_dir: str | None = None  # folder of the MNIST / Fashion-MNIST IDX files
    test_limit: int | None = 1000  # at most this many test rows per task
    via_http: str | None = None  # drive this service URL instead of in-process models
    threads: int = 1  # torch CPU threads
    tenants: int = 256  # tenants stream: how many tenants
    rows_per_tenant: int = 1000  # tenants stream: training rows each tenant sends
    block_rows: int = 50  # tenants stream: rows per request
    tenant_skew: float = 0.0  # tenants stream: tenant t sends in proportion to (t+1)^-skew
    input_scale: float = 1.0  # multiplies every input; 255 gives raw pixel values

    @property
    def resolved_eval_every(self) -> int:
        return self.eval_every if self.eval_every > 0 else max(1, self.steps_per_task // 10)

    def model_config(self, dataset: Dataset) -> ModelConfig:
        """The shared architecture for `dataset`; each method sets its kind."""
        return ModelConfig(
            kind="none",
            input_shape=(dataset.input_size,),
            hidden=self.hidden,
            num_classes=dataset.num_classes,
            seed=self.seed,
        )

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            clip_norm=self.clip_norm,
            replay_per_step=self.replay_per_step,
        )

    def ewc_config(self) -> EWCConfig:
        return EWCConfig(lam=self.ewc_lambda, gamma=self.ewc_gamma, samples=self.ewc_samples)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["methods"], data["hidden"] = list(self.methods), list(self.hidden)
        return data


DEFAULTS = ContinualConfig()
