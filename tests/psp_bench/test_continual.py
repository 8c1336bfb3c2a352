"""The continual benchmark end to end: a small run, its results file, plots and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from psp_bench.cli import bench_app
from psp_bench.continual import run_continual
from psp_bench.continual_config import ContinualConfig
from psp_bench.continual_results import ContinualResults
from psp_bench.plots import plot_all
from service.cli.commands import app as psp_app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_run() -> ContinualResults:
    """Three permuted-digits tasks of 100 steps each: a few seconds on two cores."""
    config = ContinualConfig(
        tasks=3, steps_per_task=100, methods=("none", "complex", "onepower", "separate")
    )
    return run_continual(config)


def test_superposition_forgets_less_than_the_plain_network(small_run: ContinualResults) -> None:
    scores = {result.method: result for result in small_run.methods}
    best_psp = max(scores["complex"].average_accuracy, scores["onepower"].average_accuracy)
    assert best_psp > scores["none"].average_accuracy + 0.05
    assert scores["complex"].forgetting < scores["none"].forgetting
    assert scores["separate"].forgetting == 0.0  # no network is ever trained twice


def test_the_matrix_and_curve_cover_the_run(small_run: ContinualResults) -> None:
    result = small_run.methods[0]
    assert len(result.matrix) == 3
    assert math.isnan(result.matrix[0][1]) and math.isnan(result.matrix[1][2])
    assert all(0.0 <= value <= 1.0 for value in result.final_accuracy)
    assert result.curve_steps == list(range(0, 301, 10))
    assert result.curve_accuracy[-1] == result.matrix[-1][0]
    assert 0.3 < result.prequential_accuracy < 1.0
    assert result.last_cycle is None  # only rotating streams summarise angle 0°


def test_footprints_follow_each_method(small_run: ContinualResults) -> None:
    footprints = {result.method: result.footprint for result in small_run.methods}
    plain = 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert footprints["none"].parameters == plain and footprints["none"].bytes_per_context == 0
    # Complex: an imaginary part of every weight; contexts of (cos, -sin) over M = 64, 256, 256.
    assert footprints["complex"].parameters == 2 * plain - 256 - 256 - 10
    assert footprints["complex"].bytes_per_context == 8 * (64 + 256 + 256)
    # One float64 power per layer, and its cached (cos, -sin) vector.
    assert footprints["onepower"].bytes_per_context == 3 * 8 + 8 * (64 + 256 + 256)
    assert footprints["separate"].parameters == 3 * plain
    assert footprints["separate"].bytes_per_context == 4 * plain


def test_the_results_file_holds_every_figure_and_the_configuration(
    small_run: ContinualResults, tmp_path: Path
) -> None:
    data = json.loads(json.dumps(small_run.to_dict()))
    assert data["config"]["tasks"] == 3 and data["config"]["hidden"] == [256, 256]
    assert data["stream"]["total_steps"] == 300 and data["stream"]["test_rows"] == 450
    assert "forgetting" in data["metric_definitions"]
    complex_result = data["methods"][1]
    assert complex_result["method"] == "complex"
    assert complex_result["matrix"][0][1] is None
    assert complex_result["average_accuracy"] == pytest.approx(
        sum(complex_result["final_accuracy"]) / 3
    )
    for path in plot_all(small_run, tmp_path):
        assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_rotating_digits_summarises_angle_zero_over_the_last_cycle() -> None:
    config = ContinualConfig(
        stream="rotating-digits",
        tasks=4,
        steps_per_task=10,
        cycles=2,
        methods=("none", "onepower-continuous", "ewc"),
        eval_every=5,
        ewc_samples=32,
    )
    results = run_continual(config)
    none, continuous, ewc = results.methods
    window = [a for s, a in zip(none.curve_steps, none.curve_accuracy, strict=True) if s >= 40]
    assert none.last_cycle == {"min": min(window), "mean": pytest.approx(sum(window) / 9)}
    # The last cycle's matrix is full: every slice of angles was trained in the first cycle.
    assert all(not math.isnan(value) for row in none.matrix for value in row)
    # A continuous context per step of the 40-step revolution, reused by the second cycle.
    assert continuous.footprint.contexts == 40
    assert ewc.footprint.contexts == 4


def test_psp_bench_continual_writes_results_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    arguments = ["bench", "continual", "--tasks", "2", "--steps-per-task", "20"]
    arguments += ["--kinds", "none,binary", "--hidden", "32", "--out", str(out)]
    result = CliRunner().invoke(psp_app, arguments)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert [m["method"] for m in data["methods"]] == ["none", "binary"]
    assert data["config"]["hidden"] == [32] and data["config"]["cycles"] == 1
    names = ("task0_accuracy.png", "final_accuracy.png", "accuracy_matrix.png")
    assert all((out / name).read_bytes().startswith(PNG_SIGNATURE) for name in names)
    assert "binary" in result.output and "avg acc" in result.output


def test_the_cli_says_when_the_service_cannot_be_reached(tmp_path: Path) -> None:
    arguments = ["continual", "--kinds", "complex", "--via-http", "http://127.0.0.1:9"]
    result = CliRunner().invoke(bench_app, [*arguments, "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "cannot reach the service at http://127.0.0.1:9" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--stream", "permuted-mnist"], "--data-dir"),
        (["--kinds", "complex,dense"], "unknown method"),
        (["--kinds", "complex,ewc", "--via-http", "http://127.0.0.1:9"], "in-process only"),
        (["--hidden", "2x"], "comma-separated integers"),
        (["--optimizer", "lbfgs"], "optimizer must be sgd, adam or rmsprop"),
    ],
)
def test_the_cli_explains_bad_arguments(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(bench_app, ["continual", *arguments, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
