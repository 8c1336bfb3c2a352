"""Data streams of the continual-learning benchmark; none of them downloads anything.

A stream is a sequence of training steps. Step `s` belongs to segment `s // steps_per_task`,
which trains task `segment % num_tasks`; a run is `cycles` passes over the tasks. Two families:

- permuted: task `t` applies a fixed pixel permutation to every input (task 0 is unpermuted);
  Goodfellow et al. (2013), as used in the paper's §7.1.
- rotating: the input turns a little at every step and completes one revolution per cycle of
  `num_tasks * steps_per_task` steps; task `t` is the `t`-th slice of angles (paper §7.3). The
  test set of task `t` is rotated to the angle where its slice starts, so task 0 is angle 0°.

Every stream draws its minibatch indices up front from `seed`, so each method sees exactly the
same batches in the same order, whether it runs in-process or over HTTP.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from psp_bench.datasets import (
    Dataset,
    StreamError,
    load_digits_dataset,
    load_idx_dataset,
    load_mnist1d_dataset,
)

PERMUTED_STREAMS = ("permuted-digits", "mnist1d", "permuted-mnist", "permuted-fashion-mnist")
ROTATING_STREAMS = ("rotating-digits", "rotating-mnist", "rotating-fashion-mnist")
STREAMS = PERMUTED_STREAMS + ROTATING_STREAMS


def rotate_images(x: torch.Tensor, image_shape: tuple[int, int], degrees: float) -> torch.Tensor:
    """Rotates flattened images counter-clockwise about their centre (bilinear, zero fill).

    Args:
        x: `(B, H * W)` float32 images.
        image_shape: `(H, W)`.
        degrees: The angle.

    Returns:
        `(B, H * W)` float32 rotated images.
    """
    if degrees % 360 == 0:
        return x
    radians = math.radians(degrees)
    cos, sin = math.cos(radians), math.sin(radians)
    # affine_grid maps output coordinates to input coordinates, so the inverse rotation is given.
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype)
    images = x.reshape(-1, 1, *image_shape)  # (B, H*W) -> (B, 1, H, W)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(images.shape), align_corners=False)
    rotated = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
    return rotated.reshape(len(x), -1)


class Stream(ABC):
    """A schedule of training steps over tasks, with a test set per task.

    Attributes:
        name: The stream's name.
        dataset: The underlying data.
        num_tasks: `T`, tasks per cycle.
        steps_per_task: `S`, steps of each segment.
        cycles: Passes over the `T` tasks.
        batch_size: Rows per training step.
    """

    rotating = False

    def __init__(
        self,
        name: str,
        dataset: Dataset,
        *,
        num_tasks: int,
        steps_per_task: int,
        cycles: int,
        batch_size: int,
        seed: int,
    ) -> None:
        if min(num_tasks, steps_per_task, cycles, batch_size) < 1:
            raise ValueError("tasks, steps per task, cycles and batch size must all be >= 1")
        self.name = name
        self.dataset = dataset
        self.num_tasks = num_tasks
        self.steps_per_task = steps_per_task
        self.cycles = cycles
        self.batch_size = batch_size
        generator = torch.Generator().manual_seed(seed)
        self._batches = torch.randint(
            0, len(dataset.y_train), (self.total_steps, batch_size), generator=generator
        )
        self._test_inputs: dict[int, torch.Tensor] = {}

    @property
    def period(self) -> int:
        """Steps of one cycle over all tasks."""
        return self.num_tasks * self.steps_per_task

    @property
    def total_steps(self) -> int:
        return self.cycles * self.period

    def task_at(self, step: int) -> int:
        """The task trained at `step`."""
        return (step // self.steps_per_task) % self.num_tasks

    def position_at(self, step: int) -> float:
        """The context coordinate at `step`: the task index, or a fraction of it where the data
        drifts continuously (one-power contexts can follow it, paper §7.3)."""
        return float(self.task_at(step))

    def rows_at(self, step: int) -> torch.Tensor:
        """`(B,)` indices into the training set drawn for `step`."""
        return self._batches[step]

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The minibatch of `step`: `(B, D)` float32 inputs and `(B,)` int64 labels."""
        rows = self.rows_at(step)
        return self._train_transform(step, self.dataset.x_train[rows]), self.dataset.y_train[rows]

    def test_set(self, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Task `task`'s test inputs `(N_test, D)` and labels `(N_test,)`."""
        if task not in self._test_inputs:
            self._test_inputs[task] = self._test_transform(task, self.dataset.x_test)
        return self._test_inputs[task], self.dataset.y_test

    def _train_transform(self, step: int, x: torch.Tensor) -> torch.Tensor:
        return self._test_transform(self.task_at(step), x)

    @abstractmethod
    def _test_transform(self, task: int, x: torch.Tensor) -> torch.Tensor:
        """Task `task`'s view of inputs `x` of shape `(N, D)`."""

    def describe(self) -> dict[str, Any]:
        """The stream's configuration, for the results file."""
        return {
            "name": self.name,
            "data": self.dataset.name,
            "family": "rotating" if self.rotating else "permuted",
            "tasks": self.num_tasks,
            "steps_per_task": self.steps_per_task,
            "cycles": self.cycles,
            "total_steps": self.total_steps,
            "batch_size": self.batch_size,
            "train_rows": len(self.dataset.y_train),
            "test_rows": len(self.dataset.y_test),
            "input_size": self.dataset.input_size,
        }


class PermutedStream(Stream):
    """Task `t` permutes the input features by a fixed permutation; task 0 is the identity."""

    def __init__(self, name: str, dataset: Dataset, *, seed: int, **schedule: int) -> None:
        super().__init__(name, dataset, seed=seed, **schedule)
        # A generator apart from the batch order's, so the permutations do not depend on the
        # number of steps.
        generator = torch.Generator().manual_seed(seed + 1)
        size = dataset.input_size
        self.permutations = [torch.arange(size)] + [
            torch.randperm(size, generator=generator) for _ in range(self.num_tasks - 1)
        ]

    def _test_transform(self, task: int, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.permutations[task]]


class RotatingStream(Stream):
    """The input turns by `360 / period` degrees per step; task `t` covers the `t`-th slice."""

    rotating = True

    def __init__(self, name: str, dataset: Dataset, *, seed: int, **schedule: int) -> None:
        if dataset.image_shape is None:
            raise StreamError(f"{name} needs image data, and {dataset.name} is not images")
        self.image_shape = dataset.image_shape
        super().__init__(name, dataset, seed=seed, **schedule)

    def angle_at(self, step: int) -> float:
        """Degrees the training input is turned at `step`."""
        return 360.0 * (step % self.period) / self.period

    def task_angle(self, task: int) -> float:
        """Degrees where task `task`'s slice of angles starts; its test set is turned by this."""
        return 360.0 * task / self.num_tasks

    def position_at(self, step: int) -> float:
        return self.num_tasks * (step % self.period) / self.period

    def _train_transform(self, step: int, x: torch.Tensor) -> torch.Tensor:
        return rotate_images(x, self.image_shape, self.angle_at(step))

    def _test_transform(self, task: int, x: torch.Tensor) -> torch.Tensor:
        return rotate_images(x, self.image_shape, self.task_angle(task))


def _dataset_for(name: str, *, seed: int, data_dir: Path | None) -> Dataset:
    loaders: dict[str, Callable[[], Dataset]] = {
        "digits": lambda: load_digits_dataset(seed),
        "mnist1d": load_mnist1d_dataset,
        "mnist": lambda: load_idx_dataset("mnist", data_dir),
        "fashion-mnist": lambda: load_idx_dataset("fashion-mnist", data_dir),
    }
    source = name.removeprefix("permuted-").removeprefix("rotating-")
    return loaders[source]()


def make_stream(
    name: str,
    *,
    tasks: int,
    steps_per_task: int,
    cycles: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    data_dir: Path | None = None,
    test_limit: int | None = None,
    input_scale: float = 1.0,
) -> Stream:
    """Builds a stream by name; see `STREAMS`.

    Args:
        name: One of `STREAMS`.
        tasks: Tasks per cycle (permutations, or slices of the revolution).
        steps_per_task: Steps before the next task (or context) begins.
        cycles: Passes over all tasks; a rotating stream turns once per cycle.
        batch_size: Rows per step.
        seed: Fixes the test split of digits, the permutations and the minibatch order.
        data_dir: Folder of the MNIST or Fashion-MNIST IDX files.
        test_limit: At most this many test rows per task (evaluation time grows with it).
        input_scale: Multiplies every input, e.g. 255 for raw pixel values.

    Raises:
        StreamError: The data is missing or the stream does not fit it.
    """
    if name not in STREAMS:
        raise StreamError(f"unknown stream {name!r}; choose one of {', '.join(STREAMS)}")
    dataset = _dataset_for(name, seed=seed, data_dir=data_dir).limit_test(test_limit, seed)
    dataset = dataset.scaled(input_scale)
    stream_class = RotatingStream if name in ROTATING_STREAMS else PermutedStream
    return stream_class(
        name,
        dataset,
        seed=seed,
        num_tasks=tasks,
        steps_per_task=steps_per_task,
        cycles=cycles,
        batch_size=batch_size,
    )
