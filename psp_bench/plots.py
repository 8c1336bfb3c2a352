"""PNG figures of a continual-learning run, drawn with matplotlib's object API (no pyplot state).

- `task0_accuracy.png`: accuracy on task 0 over training steps, one line per method (the
  paper's Fig. 6; for a rotating stream, accuracy at angle 0° as in Fig. 9-11);
- `final_accuracy.png`: accuracy on each task at the end of the run;
- `accuracy_matrix.png`: one heatmap of `R[i][j]` per method.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from psp_bench.continual_results import ContinualResults

DPI = 80  # small files: the figures are committed to the docs


def _colour(index: int) -> str:
    return f"C{index % 10}"


def _save(figure: Figure, path: Path) -> Path:
    # A 256-colour palette looks the same for these flat plots and makes files ~2.5x smaller.
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=DPI, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path


def _legend_outside(axes: Axes) -> None:
    # Outside the axes the legend never hides the lines it names.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def plot_task0_curve(results: ContinualResults, path: Path) -> Path:
    """Accuracy on task 0 against the training step, with the task boundaries marked."""
    stream = results.stream
    figure = Figure(figsize=(9, 4), layout="constrained")
    axes = figure.subplots()
    for index, result in enumerate(results.methods):
        axes.plot(
            result.curve_steps,
            result.curve_accuracy,
            label=result.method,
            color=_colour(index),
            linewidth=1.2,
        )
    steps_per_task = int(stream["steps_per_task"])
    total = int(stream["total_steps"])
    rotating = stream["family"] == "rotating"
    if total // steps_per_task <= 60:  # more boundaries than this would only grey the plot
        for boundary in range(steps_per_task, total, steps_per_task):
            axes.axvline(boundary, color="0.85", linewidth=0.6, zorder=0)
    what = "accuracy at angle 0°" if rotating else "accuracy on task 0"
    axes.set_title(f"{stream['name']}: test {what}")
    axes.set_xlabel("training step")
    axes.set_ylabel(what)
    axes.set_ylim(0, 1.02)
    _legend_outside(axes)
    return _save(figure, path)


def plot_final_accuracy(results: ContinualResults, path: Path) -> Path:
    """Accuracy on each task at the end of the run, one line per method."""
    figure = Figure(figsize=(9, 4), layout="constrained")
    axes = figure.subplots()
    for index, result in enumerate(results.methods):
        final = result.final_accuracy
        axes.plot(
            range(len(final)),
            final,
            marker="o",
            markersize=3,
            label=f"{result.method} (mean {result.average_accuracy:.3f})",
            color=_colour(index),
            linewidth=1.0,
        )
    axes.set_title(f"{results.stream['name']}: accuracy on each task at the end")
    axes.set_xlabel("task")
    axes.set_ylabel("final test accuracy")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(0, 1.02)
    _legend_outside(axes)
    return _save(figure, path)


def plot_accuracy_matrices(results: ContinualResults, path: Path) -> Path:
    """One heatmap of `R[i][j]` per method; blank cells were not measured."""
    count = len(results.methods)
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(2.6 * columns + 0.8, 2.6 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    image = None
    for index, result in enumerate(results.methods):
        axes = grid[index // columns][index % columns]
        matrix = np.ma.masked_invalid(np.asarray(result.matrix, dtype=np.float64))
        image = axes.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        axes.set_title(f"{result.method}: {result.average_accuracy:.3f}", fontsize="medium")
        axes.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        axes.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        if index // columns == rows - 1 or index + columns >= count:
            axes.set_xlabel("task j")
        if index % columns == 0:
            axes.set_ylabel("after training task i")
    for index in range(count, rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=grid, shrink=0.8, label="accuracy R[i][j]")
    return _save(figure, path)


def plot_all(results: ContinualResults, out_dir: Path) -> list[Path]:
    """Writes the three figures into `out_dir` and returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_task0_curve(results, out_dir / "task0_accuracy.png"),
        plot_final_accuracy(results, out_dir / "final_accuracy.png"),
        plot_accuracy_matrices(results, out_dir / "accuracy_matrix.png"),
    ]
